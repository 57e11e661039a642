"""A stand-in for spfmilter.evaluation.dnswire.exchange, for unit tests of the resolver.

This module owns the fake: a clock the tests move by hand, and an exchange
that answers (server, name, type code) from a table, costs `cost` seconds of
that clock per call and runs `during` inside it; `make` builds a Resolver on
both.  No sockets: the resolver's cache, budget and server order are tested
without timing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from spfmilter.config.schema import DnsConfig
from spfmilter.config.values import Nameserver
from spfmilter.core.metrics import Metrics
from spfmilter.evaluation import dnswire
from spfmilter.evaluation.dnswire import RR, Reply
from spfmilter.evaluation.resolver import Resolver
from tests.support.fakes import Clock

T = TypeVar("T")


class FakeDns:
    """Answers (server, name text, type code) from a table: a Reply or an
    exception to raise; a name not in it times out."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.table: dict[tuple[str, str, int], Reply | Exception] = {}
        self.asked: list[tuple[str, str, int]] = []
        self.cost = 0.0  # seconds each exchange takes
        self.during: Callable[[], None] = lambda: None

    def __call__(
        self,
        server: tuple[str, int],
        qname: bytes,
        qtype: int,
        deadline: float,
        clock: Callable[[], float],
    ) -> Reply:
        name = dnswire.name_text(qname)
        self.asked.append((server[0], name, qtype))
        self.clock.now += self.cost
        self.during()
        if clock() > deadline:  # the exchange measures time on the clock it is given
            raise dnswire.Unreachable("timeout")
        found = self.table.get((server[0], name, qtype), dnswire.Unreachable("timeout"))
        if isinstance(found, Exception):
            raise found
        return found


def make(
    servers: tuple[str, ...] = ("192.0.2.1",), timeout: float = 2.0, cache_size: int = 1 << 20
) -> tuple[Resolver, FakeDns, Clock, Metrics]:
    """A Resolver asking `servers` (port 53) through a FakeDns on a Clock."""
    clock = Clock()
    fake = FakeDns(clock)
    metrics = Metrics()
    config = DnsConfig(
        nameservers=tuple(Nameserver(s) for s in servers), timeout=timeout, cache_size=cache_size
    )
    return Resolver(config, metrics, clock=clock, exchange=fake), fake, clock, metrics


def reply(*answer: RR, authority: tuple[RR, ...] = (), rcode: int = 0) -> Reply:
    return Reply(rcode, answer, authority, 100)


class Inline(Executor):
    """Runs each job as it is submitted, in the submitting thread: the
    prefetch's questions answered before the evaluation reads on."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future
