"""Metrics: the exposition as Prometheus's parsers read it, and slots added
up and read whole while workers write."""

from __future__ import annotations

import os
import time

import pytest
from prometheus_client.metrics_core import Metric

from spfmilter import __version__
from spfmilter.core.metrics import Metrics
from tests.support.fakes import counted
from tests.support.prometheus import (
    family_types,
    histogram_problems,
    openmetrics_families,
    sample,
    text_families,
)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text-0.0.4", "openmetrics"])
def test_every_family_keeps_its_type_and_help(openmetrics: bool) -> None:
    metrics = counted()
    if openmetrics:
        families = openmetrics_families(metrics.exposition(openmetrics=True))
    else:
        families = text_families(metrics.exposition())
    kinds = {family.name: family.type for family in families}
    assert kinds == family_types(openmetrics=openmetrics)
    assert all(family.documentation and family.samples for family in families)
    passes = {"action": "accept", "identity": "mailfrom", "result": "pass"}
    assert sample(families, "spfmilter_verdicts_total", **passes) == 2
    defers = {"action": "defer", "identity": "helo", "result": "fail"}
    assert sample(families, "spfmilter_verdicts_total", **defers) == 0
    assert sample(families, "spfmilter_connections_in_flight") == 1
    assert sample(families, "spfmilter_skips_total", reason="localhost") == 0
    assert sample(families, "spfmilter_build_info", version=__version__) == 1
    assert metrics.value("spfmilter_connections_in_flight") == 1.0
    with pytest.raises(KeyError):
        metrics.verdicts.labels("mailfrom", "pass", "skip")


def test_histogram_buckets_are_cumulative() -> None:
    metrics = Metrics()
    for seconds in (0.0005, 0.003, 0.003, 30.0):
        metrics.dns_seconds.labels("TXT").observe(seconds)
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="0.001") == 1
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="0.0025") == 1
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="0.005") == 3
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="20.0") == 3
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="+Inf") == 4
    assert metrics.value("spfmilter_dns_query_seconds_count", qtype="TXT") == 4
    assert metrics.value("spfmilter_dns_query_seconds_sum", qtype="TXT") == pytest.approx(30.0065)
    assert metrics.value("spfmilter_dns_query_seconds_count", qtype="A") == 0
    families = openmetrics_families(metrics.exposition(openmetrics=True))
    assert histogram_problems(families) == []


def test_slots_of_forked_workers_add_up() -> None:
    metrics = Metrics(slots=3)
    metrics.use_slot(1)
    metrics.errors.inc()
    metrics.connections.inc()
    pid = os.fork()
    if pid == 0:  # a worker counting in its own slot of the shared memory
        try:
            metrics.use_slot(2)
            metrics.errors.inc(5)
            metrics.connections.inc()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert metrics.value("spfmilter_internal_errors_total") == 6
    assert metrics.value("spfmilter_connections_in_flight") == 2
    metrics.retire_slot(2)  # that worker is gone: its connections too
    assert metrics.value("spfmilter_connections_in_flight") == 1
    assert metrics.value("spfmilter_internal_errors_total") == 6


# Exactly representable in binary, in three buckets (le=0.5, le=5.0, +Inf
# alone): a consistent read has _sum = 0.5 a + 4 b + 32 c to the last bit.
OBSERVED = (0.5, 4.0, 32.0)
OBSERVATIONS = 300_000


def test_a_scrape_sees_each_histogram_whole_while_a_worker_observes() -> None:
    metrics = Metrics(slots=2)
    series = metrics.dns_seconds.labels("TXT")
    pid = os.fork()
    if pid == 0:  # a worker observing as fast as it can
        try:
            metrics.use_slot(1)
            for n in range(OBSERVATIONS):
                series.observe(OBSERVED[n % 3])
        finally:
            os._exit(0)
    torn, reads, partial = [], 0, 0
    while True:
        finished = os.waitpid(pid, os.WNOHANG)[0] != 0
        families = text_families(metrics.exposition())
        problems = histogram_problems(families) + sum_problems(families)
        torn += problems[:1]
        reads += 1
        partial += sample(families, "spfmilter_dns_query_seconds_count", qtype="TXT") > 0
        if finished:
            break
    assert torn == [], f"{len(torn)} of {reads} scrapes torn, first: {torn[0]}"
    assert sample(families, "spfmilter_dns_query_seconds_count", qtype="TXT") == OBSERVATIONS
    assert partial > 0  # some reads met the worker at work


def sum_problems(families: list[Metric]) -> list[str]:
    """_sum against the TXT buckets, with the values of OBSERVED only."""
    name = "spfmilter_dns_query_seconds"
    below_half = sample(families, f"{name}_bucket", qtype="TXT", le="0.5")
    below_five = sample(families, f"{name}_bucket", qtype="TXT", le="5.0")
    count = sample(families, f"{name}_count", qtype="TXT")
    total = sample(families, f"{name}_sum", qtype="TXT")
    expected = 0.5 * below_half + 4.0 * (below_five - below_half) + 32.0 * (count - below_five)
    return [] if total == expected else [f"_sum {total} != {expected} from the buckets"]


class Dies(float):
    """A value whose addition ends the process: a worker killed halfway
    through recording an observation."""

    def __radd__(self, other: float) -> float:
        os._exit(0)


def test_a_worker_killed_halfway_neither_hangs_nor_tears_the_scrape() -> None:
    metrics = Metrics(slots=2)
    series = metrics.dns_seconds.labels("TXT")
    observed, read = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            metrics.use_slot(1)
            series.observe(4.0)
            os.write(observed[1], b".")
            os.read(read[0], 1)  # once the scrape below has seen it
            series.observe(Dies(0.5))  # its sequence number stays odd
        finally:
            os._exit(1)
    try:
        os.read(observed[0], 1)
        assert metrics.value("spfmilter_dns_query_seconds_count", qtype="TXT") == 1
        os.write(read[1], b".")
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        for end in (*observed, *read):
            os.close(end)
    started = time.monotonic()
    # The slot's last whole state: the first observation only.
    assert metrics.value("spfmilter_dns_query_seconds_count", qtype="TXT") == 1
    assert metrics.value("spfmilter_dns_query_seconds_sum", qtype="TXT") == 4.0
    assert time.monotonic() - started < 5
    metrics.retire_slot(1)  # the supervisor reaped it: the replacement counts on
    pid = os.fork()
    if pid == 0:
        try:
            metrics.use_slot(1)
            series.observe(32.0)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    families = openmetrics_families(metrics.exposition(openmetrics=True))
    assert histogram_problems(families) == []
    # The killed worker's half observation: its bucket, not its value.
    assert sample(families, "spfmilter_dns_query_seconds_count", qtype="TXT") == 3
    assert sample(families, "spfmilter_dns_query_seconds_sum", qtype="TXT") == 36.0
