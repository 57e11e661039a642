"""The collaborators every session shares, made once per process.

This module owns what a session is given: the checker's evaluate function,
the resolver's lookup, the metrics, the clock, the host's name (the receiver
when neither [headers] authserv_id nor the MTA names one) and the
connection numbers; and :func:`build`, the one place that wires them for the
daemon and for the check command alike.  The daemon builds them once, before
it drops root (the resolver reads /etc/resolv.conf, the host's name comes
from the system), and each worker numbers its connections its own way.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from spfmilter.config.schema import Config
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import SpfOutcome, SpfQuery
from spfmilter.evaluation.checker import Checker
from spfmilter.evaluation.resolver import Lookup, Resolver

# Evaluates one identity (spfmilter.evaluation.checker.Checker.check): the query and
# the seconds of DNS time it may take.
Check = Callable[[SpfQuery, float], SpfOutcome]


@dataclass(frozen=True)
class Services:
    """The shared collaborators of the sessions of one process."""

    check: Check
    lookup: Lookup
    metrics: Metrics
    clock: Callable[[], float] = time.monotonic
    host_name: str = "localhost"
    # Numbers connections in log lines (next() on a count is atomic).
    connection_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # Runs a MAIL FROM evaluation while the HELO one runs in the callback's
    # thread (None: one after the other) when neither is known at once.
    background: Executor | None = None
    known: Callable[[SpfQuery], bool] = lambda query: False

    def for_worker(self, worker: int, workers: int) -> Services:
        """These services in worker `worker` of `workers`, which numbers its
        connections worker+1, worker+1+workers, ...: no two workers log the
        same number."""
        return dataclasses.replace(self, connection_ids=itertools.count(worker + 1, workers))


# Threads per process evaluating MAIL FROM beside HELO: one per transaction
# in its first evaluation, at most this many; beyond, transactions evaluate
# one identity after the other.  A thread idle this long ends.
BACKGROUND_THREADS = 32
BACKGROUND_IDLE = 2.0

T = TypeVar("T")


class IdlingPool(Executor):
    """At most `limit` threads, started as work comes and ended after `idle`
    seconds without any: a daemon after a burst holds no more threads than
    before it (concurrent.futures' pool keeps every thread it started)."""

    def __init__(self, limit: int, idle: float, name: str) -> None:
        self._limit = limit
        self._idle = idle
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._waiting = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run fn(*args, **kwargs) in a pool thread."""
        future: Future[T] = Future()
        self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
        with self._lock:
            start = self._waiting == 0 and self._threads < self._limit
            if start:
                self._threads += 1
        if start:
            threading.Thread(target=self._work, name=self._name, daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
            try:
                future, job = self._jobs.get(timeout=self._idle)
            except queue.Empty:
                with self._lock:
                    self._waiting -= 1
                    # A job queued while this thread gave up is still taken.
                    if self._jobs.empty():
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._waiting -= 1
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                result = job()
            except BaseException as error:  # handed to whoever waits on it
                future.set_exception(error)
            else:
                future.set_result(result)


RESULT_SHARE = 4


def build(config: Config, metrics: Metrics) -> Services:
    """The resolver of [dns] and a checker installed into pyspf on it.

    pyspf's globals are set here: call once, before any thread starts.
    """
    # [dns] cache_size holds both caches: a quarter for SPF results, the
    # rest for DNS answers.
    results = config.dns.cache_size // RESULT_SHARE
    resolver = Resolver(config.dns, metrics, cache_bytes=config.dns.cache_size - results)
    checker = Checker(resolver.answer, metrics=metrics, results_bytes=results)
    checker.install(config.dns.void_lookup_limit)
    # Looked up once per process, not per connection.
    return Services(
        checker.check,
        resolver.lookup,
        metrics,
        host_name=socket.getfqdn(),
        background=IdlingPool(BACKGROUND_THREADS, BACKGROUND_IDLE, "mailfrom"),
        known=checker.known,
    )
