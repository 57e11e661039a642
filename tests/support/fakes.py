"""Stand-ins for spfmilter's collaborators in the unit tests.

This module owns the fakes the unit tests share, so that each test module
says only what it checks: a clock the tests move by hand, a checker that
answers from a table (and keeps what it was asked, with the DNS time it was
given), a DNS lookup from a table, executors whose jobs run when the test
says, a Session wired to them through the real Evaluator, and metrics with
a few counts in them.  No network, no pyspf, no libmilter.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from spfmilter.config.schema import Config
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import Identity, SpfOutcome, SpfQuery, SpfResult
from spfmilter.core.session import Services, Session
from spfmilter.evaluation.evaluator import Evaluator
from spfmilter.evaluation.resolver import DnsTempError, Record

T = TypeVar("T")

# What a FakeChecker answers, by identity and subject (the HELO name or the
# MAIL FROM): a result, or an exception to raise.
Results = Mapping[tuple[Identity, str], SpfResult | Exception]

CLIENT = "198.51.100.7"
HOST_NAME = "host.example"


class Clock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeChecker:
    """Evaluates a query from `results` (none when not listed), with
    `mechanism` as the mechanism that matched and the domain's explanation
    from `explanations` by subject.  It keeps every query with the DNS time
    it was given; each call takes `cost` seconds of `clock` and `sleep`
    seconds of real time, and `most` is the largest number of calls that
    ran at the same time."""

    def __init__(
        self,
        results: Results,
        *,
        mechanism: str | None = None,
        explanations: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        sleep: float = 0.0,
    ) -> None:
        self.results = results
        self.mechanism = mechanism
        self.explanations = explanations or {}
        self.clock = clock
        self.cost = 0.0
        self.sleep = sleep
        self.queries: list[tuple[SpfQuery, float]] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, query: SpfQuery, lookup_time: float) -> SpfOutcome:
        with self._lock:
            self.queries.append((query, lookup_time))
            self.running += 1
            self.most = max(self.most, self.running)
        if self.clock is not None:
            self.clock.now += self.cost
        time.sleep(self.sleep)
        with self._lock:
            self.running -= 1
        helo = query.identity is Identity.HELO
        subject = query.helo if helo else query.mail_from
        result = self.results.get((query.identity, subject), SpfResult.NONE)
        if isinstance(result, Exception):
            raise result
        sender = f"postmaster@{query.helo}" if helo else query.mail_from
        explanation = self.explanations.get(subject)
        domain = sender.rpartition("@")[2]
        return SpfOutcome(query.identity, result, domain, sender, self.mechanism, explanation)

    def identities(self) -> list[Identity]:
        return [query.identity for query, _ in self.queries]


class FakeLookup:
    """DNS from a table; keeps each question with its budget.  Any question
    about broken.example is DNS trouble."""

    def __init__(self, table: Mapping[tuple[str, str], list[Record]] | None = None) -> None:
        self.table = table or {}
        self.asked: list[tuple[str, str, float | None]] = []

    def __call__(self, name: str, qtype: str, budget: float | None) -> list[Record]:
        self.asked.append((name, qtype, budget))
        if name == "broken.example":
            raise DnsTempError("DNS timeout looking up broken.example A")
        return self.table.get((name, qtype), [])


def no_dns(name: str, qtype: str, budget: float | None) -> list[Record]:
    raise AssertionError(f"unexpected DNS lookup {name} {qtype}")


class Held(Executor):
    """An executor whose jobs wait for the test: each future stays queued
    (or running, with `started`) until finish() runs the job."""

    def __init__(self, started: bool = False) -> None:
        self.started = started
        self.jobs: list[tuple[Future[Any], Callable[[], Any]]] = []

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        if self.started:
            future.set_running_or_notify_cancel()
        self.jobs.append((future, functools.partial(fn, *args, **kwargs)))
        return future

    def finish(self) -> None:
        for future, job in self.jobs:
            if future.done():  # cancelled, or run by an earlier finish()
                continue
            if not self.started:
                future.set_running_or_notify_cancel()
            try:
                future.set_result(job())
            except Exception as error:
                future.set_exception(error)


class Immediate(Held):
    """Runs each job as it is submitted."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future = super().submit(fn, *args, **kwargs)
        self.finish()
        return future


def make_session(
    config: Config | None = None,
    checker: Callable[[SpfQuery, float], SpfOutcome] | None = None,
    lookup: Callable[[str, str, float | None], list[Record]] = no_dns,
    *,
    clock: Callable[[], float] = time.monotonic,
    first_id: int = 1,
    background: Executor | None = None,
    known: Callable[[SpfQuery], bool] = lambda query: False,
) -> tuple[Session, Metrics]:
    """A Session whose evaluator asks `checker` and `lookup`, with the
    [dns] lookup_time of `config`, the receiver host.example when nothing
    else names it, and its connections numbered from `first_id`."""
    config = config or Config()
    metrics = Metrics()
    evaluator = Evaluator(
        checker or FakeChecker({}),
        lookup,
        metrics,
        lookup_time=config.dns.lookup_time,
        known=known,
        background=background,
        clock=clock,
    )
    ids = itertools.count(first_id)
    services = Services(evaluator, metrics, host_name=HOST_NAME, connection_ids=ids)
    return Session(config, services), metrics


def start(
    session: Session, ip: str = CLIENT, helo: str = "mail.example.org", j: str = "mx"
) -> None:
    """The client connects from `ip` to the MTA called `j`, and says HELO."""
    session.connect(ipaddress.ip_address(ip), "ptr.example.net", j)
    session.hello(helo)


def counted() -> Metrics:
    """Metrics with a few counts: two verdicts, a rescue, one connection
    in flight."""
    metrics = Metrics()
    metrics.verdicts.labels("mailfrom", "pass", "accept").inc()
    metrics.verdicts.labels("mailfrom", "pass", "accept").inc()
    metrics.rescues.labels("dkim").inc()
    metrics.connections.inc()
    metrics.connections.inc()
    metrics.connections.dec()
    return metrics
