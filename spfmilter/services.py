"""The collaborators every session shares, made once per process.

This module owns what a session is given: the checker's evaluate function,
the resolver's lookup, the metrics, the clock, the host's name (the receiver
when neither [headers] authserv_id nor the MTA names one) and the
connection numbers; and :func:`build`, the one place that wires them for the
daemon and for the check command alike.  It imports model, config, dns,
checker and metrics.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from spfmilter.checker import Checker
from spfmilter.config import Config
from spfmilter.dns import Lookup, Resolver
from spfmilter.metrics import Metrics
from spfmilter.model import SpfOutcome, SpfQuery

# Evaluates one identity (spfmilter.checker.Checker.check): the query and
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


RESULT_SHARE = 4


def build(config: Config, metrics: Metrics, worker: int = 0, workers: int = 1) -> Services:
    """The resolver of [dns] and a checker installed into pyspf on it.

    pyspf's globals are set here: call once, before any thread starts.
    Worker `worker` of `workers` numbers its connections worker+1,
    worker+1+workers, ...: no two workers log the same number.
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
        connection_ids=itertools.count(worker + 1, workers),
    )
