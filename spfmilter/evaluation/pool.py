"""A pool of threads that come with work and go when idle.

This module owns the threads that run work beside a milter callback's own
thread: at most a fixed number, started as work comes and ended after some
seconds without any, so that a daemon after a burst holds no more threads
than before it (concurrent.futures' pool keeps every thread it started).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

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
        self._queued = 0  # jobs submitted and not yet taken by a thread

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run fn(*args, **kwargs) in a pool thread."""
        future: Future[T] = Future()
        # Queued first: a thread giving up for idleness sees it and stays.
        self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
        with self._lock:
            # A thread for every job no idle thread is there to take: a
            # waiting thread takes one job, however many arrive meanwhile.
            # (A thread may take the job before it is counted here: the
            # count is then briefly -1, and no thread is started for it.)
            self._queued += 1
            start = self._queued > self._waiting and self._threads < self._limit
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
                self._queued -= 1
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                result = job()
            except BaseException as error:  # handed to whoever waits on it
                future.set_exception(error)
            else:
                future.set_result(result)
