"""Pinned edge cases of the metrics' store: a copy that a whole change
overlaps, and the small API the counters offer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from spfmilter.core.metrics import Metrics


class OverlappedView:
    """The store's doubles, where the next copy of a slot is overlapped by
    `change`: the places before `split` are read before it, the rest after.
    """

    def __init__(self, values: memoryview[float], split: int, change: Callable[[], None]) -> None:
        self._values = values
        self._split = split
        self._change: Callable[[], None] | None = change

    def __getitem__(self, index: int | slice) -> float | bytes:
        if isinstance(index, int):
            return float(self._values[index])
        before = bytes(self._values[index])
        if self._change is None:
            return before
        change, self._change = self._change, None
        change()
        after = bytes(self._values[index])
        cut = (self._split - (index.start or 0)) * 8
        return before[:cut] + after[cut:]

    def __setitem__(self, index: int, value: float) -> None:
        self._values[index] = value


@pytest.mark.parametrize("changes_before", [0, 1, 2])
def test_a_copy_that_a_whole_observation_overlaps_is_taken_again(changes_before: int) -> None:
    # A sequence number that a change left as it found it would let such a
    # copy through: the bucket counted before the observation, its sum after.
    metrics = Metrics()
    series = metrics.dns_seconds.labels("TXT")
    for _ in range(changes_before):
        series.observe(1.0)
    store = metrics._store
    # The places of the TXT histogram: its buckets, then its sum.
    sum_place = metrics.dns_seconds.index + 7 * metrics.dns_seconds.width + 15
    store._values = OverlappedView(store._values, sum_place + 1, lambda: series.observe(2.0))  # type: ignore[assignment]
    count = metrics.value("spfmilter_dns_query_seconds_count", qtype="TXT")
    total = metrics.value("spfmilter_dns_query_seconds_sum", qtype="TXT")
    assert (count, total) == (changes_before + 1, changes_before * 1.0 + 2.0)


def test_a_copy_that_a_retired_slot_overlaps_is_taken_again() -> None:
    # Retiring a gone worker's slot zeroes its gauges: a reader whose copy
    # spans that must see the sequence number moved, and read again.
    metrics = Metrics()
    metrics.use_slot(0)
    metrics.connections.inc()
    store = metrics._store
    gauge_place = 1 + metrics.connections.index
    store._values = OverlappedView(  # type: ignore[assignment]
        store._values, gauge_place + 1, lambda: metrics.retire_slot(0)
    )
    assert metrics.value("spfmilter_connections_in_flight") == 0


def test_only_histograms_observe() -> None:
    metrics = Metrics()
    with pytest.raises(TypeError, match=r"^only histograms observe$"):
        metrics.cache_hits.labels().observe(1.0)


def test_a_series_counts_down_by_one_unless_told() -> None:
    metrics = Metrics()
    gauge = metrics.connections.labels()
    gauge.inc(3)
    gauge.dec()
    assert metrics.value("spfmilter_connections_in_flight") == 2
    gauge.dec(2)
    assert metrics.value("spfmilter_connections_in_flight") == 0


def test_every_slot_holds_every_place_the_last_one_too() -> None:
    metrics = Metrics(slots=2)
    for slot in (1, 0):
        metrics.use_slot(slot)
        metrics.reloads.labels("failed").inc()
    assert metrics.value("spfmilter_config_reloads_total", outcome="failed") == 2
    assert metrics.value("spfmilter_config_reloads_total", outcome="ok") == 0


def test_an_unknown_sample_is_named_in_the_error() -> None:
    with pytest.raises(KeyError, match=r"no sample spfmilter_skips_total\{'reason': 'nope'\}"):
        Metrics().value("spfmilter_skips_total", reason="nope")


class FinishingView:
    """The store's doubles, where the change a slot's writer is in the
    middle of ends as a reader checks the sequence number a second time."""

    def __init__(self, values: memoryview[float], sequence: int, finish: Callable[[], None]):
        self._values = values
        self._sequence = sequence
        self._finish: Callable[[], None] | None = finish
        self._reads = 0

    def __getitem__(self, index: int | slice) -> float | bytes:
        if isinstance(index, slice):
            return bytes(self._values[index])
        value = float(self._values[index])
        if index == self._sequence:
            self._reads += 1
            if self._reads == 2 and self._finish is not None:
                self._finish()
        return value

    def __setitem__(self, index: int, value: float) -> None:
        self._values[index] = value


def test_a_reader_waits_for_a_change_in_progress() -> None:
    metrics = Metrics()
    store = metrics._store
    values = store._values
    values[0] = 1.0  # a writer is in the middle of a change: the number is odd
    place = metrics.errors.index

    def finish() -> None:
        values[1 + place] = 5.0
        values[0] = 2.0

    store._values = FinishingView(values, 0, finish)  # type: ignore[assignment]
    assert metrics.value("spfmilter_internal_errors_total") == 5


def test_a_slot_stuck_in_a_change_before_any_read_counts_nothing() -> None:
    # A worker killed halfway before the first scrape: after the patience,
    # its slot is read as its last consistent copy, which is empty.
    metrics = Metrics(slots=2)
    metrics.use_slot(0)
    metrics.errors.inc()
    values = metrics._store._values
    values[metrics._store.size + 1] = 1.0  # slot 1's sequence number, odd
    values[metrics._store.size + 2 + metrics.errors.index] = 7.0
    assert metrics.value("spfmilter_internal_errors_total") == 1


# What each family counts, as its HELP line says, and by which labels.
FAMILIES = {
    "spfmilter_verdicts": (
        "counter",
        "Verdicts, by the identity that decided, its SPF result and the action",
        {"identity", "result", "action"},
    ),
    "spfmilter_skips": ("counter", "Transactions SPF was not applied to, by reason", {"reason"}),
    "spfmilter_rescues": (
        "counter",
        "MAIL FROM fails decided at end of message, by how their rescue ended",
        {"kind"},
    ),
    "spfmilter_dns_queries": (
        "counter",
        "DNS queries sent (cache misses), by type and outcome",
        {"qtype", "outcome"},
    ),
    "spfmilter_dns_query_seconds": ("histogram", "Time of DNS queries sent", {"qtype", "le"}),
    "spfmilter_dns_cache_hits": ("counter", "Lookups answered by the shared cache", set()),
    "spfmilter_dns_cache_misses": (
        "counter",
        "Lookups the shared cache could not answer",
        set(),
    ),
    "spfmilter_result_cache_hits": (
        "counter",
        "SPF evaluations answered by a kept result of the same query",
        set(),
    ),
    "spfmilter_result_cache_misses": ("counter", "SPF evaluations that had to be made", set()),
    "spfmilter_connections_in_flight": ("gauge", "SMTP connections being served", set()),
    "spfmilter_internal_errors": (
        "counter",
        "Callbacks that failed unexpectedly and were tempfailed",
        set(),
    ),
    "spfmilter_config_reloads": ("counter", "Configuration reloads, by outcome", {"outcome"}),
}


def test_each_family_says_what_it_counts_and_by_which_labels() -> None:
    helps: dict[str, tuple[str, str, set[str]]] = {}
    lines = Metrics().exposition(openmetrics=True).splitlines()
    for line in lines:
        if line.startswith("# HELP "):
            family, _, text = line.removeprefix("# HELP ").partition(" ")
            helps[family] = ("", text, set())
        elif line.startswith("# TYPE "):
            family, _, kind = line.removeprefix("# TYPE ").partition(" ")
            helps[family] = (kind, helps[family][1], set())
    for line in lines:
        if line.startswith("#") or "{" not in line:
            continue
        name, _, rest = line.partition("{")
        family = next(f for f in helps if name.startswith(f))
        helps[family][2].update(pair.split("=")[0] for pair in rest.split("}")[0].split(","))
    helps.pop("spfmilter_build")
    assert helps == FAMILIES


def test_series_of_one_histogram_keep_apart() -> None:
    metrics = Metrics()
    for qtype, value in zip(("A", "AAAA", "CNAME"), (0.001, 4.0, 30.0), strict=True):
        metrics.dns_seconds.labels(qtype).observe(value)
    name = "spfmilter_dns_query_seconds"
    for qtype, value in zip(("A", "AAAA", "CNAME"), (0.001, 4.0, 30.0), strict=True):
        assert metrics.value(f"{name}_count", qtype=qtype) == 1
        assert metrics.value(f"{name}_sum", qtype=qtype) == value
    assert metrics.value(f"{name}_bucket", qtype="A", le="0.001") == 1
    assert metrics.value(f"{name}_bucket", qtype="AAAA", le="2.5") == 0
    assert metrics.value(f"{name}_bucket", qtype="AAAA", le="5.0") == 1
    assert metrics.value(f"{name}_bucket", qtype="CNAME", le="20.0") == 0
    assert metrics.value(f"{name}_bucket", qtype="CNAME", le="+Inf") == 1
