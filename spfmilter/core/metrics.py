"""Prometheus metrics: their names, labels and buckets, their storage and text.

This module owns every metric spfmilter exports, how it is kept and how it is
written out.  Each series has a fixed place in one block of doubles (every
label value is known in advance), so that the block can be a shared memory
mapping in which each worker process counts in a slot of its own while the
process serving /metrics reads every slot and adds them up.  Writers and that
reader never wait for each other: each slot starts with a sequence number
that its one writing process makes odd while it changes the slot and even
again after, and a reader copies a slot until it finds the same even number
before and after the copy, so that a scrape never sees half an observation.
The exposition is the text format 0.0.4 as Prometheus parses it, or
OpenMetrics 1.0.0 for scrapers that ask for it.
"""

from __future__ import annotations

import bisect
import itertools
import mmap
import threading
import time
from collections.abc import Iterator, Sequence

from spfmilter import __version__
from spfmilter.core.model import Action, Identity, RescueKind, SkipReason, SpfResult

# DNS answers on a LAN resolver take about a millisecond, a cold recursive
# lookup tens to hundreds, and a timeout seconds.
DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)
# Every type spfmilter.evaluation.dnswire can ask for.
QTYPES = ("A", "AAAA", "CNAME", "MX", "PTR", "SOA", "SPF", "TXT")
DNS_OUTCOMES = ("answer", "empty", "refused", "timeout", "failure", "error")
# How long a reader waits for a slot that is being changed before it uses
# the slot's last consistent copy instead: a change takes microseconds, so
# only a writer that stopped halfway (killed, or SIGSTOPped) makes it wait
# this long.
SLOT_PATIENCE = 0.1

# Media types of the two expositions.
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Change = tuple[tuple[int, float], ...]  # (place in the slot, amount to add)


class _Store:
    """Doubles in slots: one slot per process that counts, each led by its
    sequence number.  Reads and writes of the mapping are plain loads and
    stores of aligned doubles, which x86-64 (Debian's amd64) keeps in
    program order, as the sequence number needs."""

    def __init__(self, size: int, slots: int) -> None:
        self.size = size
        self.slots = slots
        self._stride = size + 1
        # An anonymous shared mapping: a forked worker writes into the very
        # memory its parent reads.
        self._memory = mmap.mmap(-1, slots * self._stride * 8)
        self._values = memoryview(self._memory).cast("d")
        self._start = 0
        self._lock = threading.Lock()
        # The last consistent copy of each slot, read by this process.
        self._copies: list[Sequence[float]] = [[0.0] * size for _ in range(slots)]

    def use_slot(self, slot: int) -> None:
        """Count in `slot` from now on (a worker after the fork)."""
        self._start = slot * self._stride
        self._lock = threading.Lock()  # one the fork may have copied locked is dropped

    def add(self, change: Change) -> None:
        """Add to this process's slot, as one change that readers see whole
        or not at all.  The lock keeps this process's threads to one writer
        at a time (`+=` on shared memory is a read, then a write)."""
        values, start = self._values, self._start
        with self._lock:
            values[start] += 1.0
            for index, amount in change:
                values[start + 1 + index] += amount
            values[start] += 1.0

    def reset(self, slot: int, indexes: Sequence[int]) -> None:
        """Zero places of the slot of a process that is gone, and end the
        change it may have been making when it ended (its sequence number
        odd), so that the slot's next process writes from an even one."""
        start = slot * self._stride
        values = self._values
        sequence = values[start]
        values[start] = sequence + 1.0 + sequence % 2.0
        for index in indexes:
            values[start + 1 + index] = 0.0
        values[start] += 1.0

    def totals(self) -> list[float]:
        """Every place, added up over the slots, each slot read consistently."""
        totals = [0.0] * self.size
        for slot in range(self.slots):
            for index, value in enumerate(self._read(slot)):
                totals[index] += value
        return totals

    def _read(self, slot: int) -> Sequence[float]:
        start = slot * self._stride
        values = self._values
        deadline = 0.0
        while True:
            sequence = values[start]
            # Bytes first, floats after: the copy takes a moment, not the
            # time to make a float of each place, for a writer to meet.
            raw = bytes(values[start + 1 : start + self._stride])
            if sequence % 2.0 == 0.0 and values[start] == sequence:
                copy = memoryview(raw).cast("d").tolist()
                self._copies[slot] = copy
                return copy
            now = time.monotonic()
            if not deadline:
                deadline = now + SLOT_PATIENCE
            elif now > deadline:
                return self._copies[slot]
            time.sleep(0)  # let a writer in this process finish


class _Series:
    """One labelled series: a place in the store."""

    def __init__(self, store: _Store, index: int) -> None:
        self._store = store
        self._index = index

    def inc(self, amount: float = 1.0) -> None:
        self._store.add(((self._index, amount),))

    def dec(self, amount: float = 1.0) -> None:
        self._store.add(((self._index, -amount),))

    def observe(self, value: float) -> None:
        raise TypeError("only histograms observe")


class _Histogram(_Series):
    """The count of each bucket alone (the last one for values above every
    bound), then the sum, in consecutive places.  The total count is the
    buckets' added up, so that it and the +Inf bucket are one number."""

    def __init__(self, store: _Store, index: int, buckets: Sequence[float]) -> None:
        super().__init__(store, index)
        self._buckets = buckets
        self._sum = index + len(buckets) + 1

    def observe(self, value: float) -> None:
        bucket = self._index + bisect.bisect_left(self._buckets, value)
        self._store.add(((bucket, 1.0), (self._sum, value)))


class Metric:
    """A metric with fixed label names and the values each label takes."""

    def __init__(
        self,
        name: str,
        kind: str,
        documentation: str,
        labels: Sequence[tuple[str, Sequence[str]]] = (),
        buckets: Sequence[float] = (),
    ) -> None:
        self.name = name
        self.kind = kind
        self.documentation = documentation
        self.label_names = tuple(label for label, _ in labels)
        self.combinations = list(itertools.product(*(values for _, values in labels)))
        self.buckets = tuple(buckets)
        self.width = len(self.buckets) + 2 if kind == "histogram" else 1
        self.index = 0
        self._series: dict[tuple[str, ...], _Series] = {}

    def bind(self, store: _Store, index: int) -> int:
        """Take places from `index` on; returns the next free place."""
        self.index = index
        for number, combination in enumerate(self.combinations):
            at = index + number * self.width
            self._series[combination] = (
                _Histogram(store, at, self.buckets)
                if self.kind == "histogram"
                else _Series(store, at)
            )
        return index + len(self.combinations) * self.width

    def labels(self, *values: str) -> _Series:
        """The series for these label values (in label-name order)."""
        return self._series[tuple(str(v) for v in values)]

    def inc(self, amount: float = 1.0) -> None:
        self._series[()].inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._series[()].dec(amount)

    def samples(self, totals: Sequence[float]) -> Iterator[tuple[str, dict[str, str], float]]:
        """(sample name, labels, value) of every series, from the store's totals."""
        suffix = "_total" if self.kind == "counter" else ""
        for number, combination in enumerate(self.combinations):
            labels = dict(zip(self.label_names, combination, strict=True))
            at = self.index + number * self.width
            if self.kind != "histogram":
                yield self.name + suffix, labels, totals[at]
                continue
            running = 0.0
            for offset, bound in enumerate((*self.buckets, float("inf"))):
                running += totals[at + offset]
                le = "+Inf" if offset == len(self.buckets) else repr(float(bound))
                yield f"{self.name}_bucket", {**labels, "le": le}, running
            yield f"{self.name}_sum", labels, totals[at + len(self.buckets) + 1]
            yield f"{self.name}_count", labels, running


class Metrics:
    """The process's metrics.  `slots` is the number of processes counting."""

    def __init__(self, slots: int = 1) -> None:
        results = [r.value for r in SpfResult]
        actions = [a.value for a in Action if a is not Action.SKIP]
        self.verdicts = Metric(
            "spfmilter_verdicts",
            "counter",
            "Verdicts, by the identity that decided, its SPF result and the action",
            [("identity", [i.value for i in Identity]), ("result", results), ("action", actions)],
        )
        self.skips = Metric(
            "spfmilter_skips",
            "counter",
            "Transactions SPF was not applied to, by reason",
            [("reason", [r.value for r in SkipReason])],
        )
        self.rescues = Metric(
            "spfmilter_rescues",
            "counter",
            "MAIL FROM fails decided at end of message, by how their rescue ended",
            [("kind", [k.value for k in RescueKind])],
        )
        self.dns_queries = Metric(
            "spfmilter_dns_queries",
            "counter",
            "DNS queries sent (cache misses), by type and outcome",
            [("qtype", QTYPES), ("outcome", DNS_OUTCOMES)],
        )
        self.dns_seconds = Metric(
            "spfmilter_dns_query_seconds",
            "histogram",
            "Time of DNS queries sent",
            [("qtype", QTYPES)],
            DNS_BUCKETS,
        )
        self.cache_hits = Metric(
            "spfmilter_dns_cache_hits", "counter", "Lookups answered by the shared cache"
        )
        self.cache_misses = Metric(
            "spfmilter_dns_cache_misses", "counter", "Lookups the shared cache could not answer"
        )
        self.result_cache_hits = Metric(
            "spfmilter_result_cache_hits",
            "counter",
            "SPF evaluations answered by a kept result of the same query",
        )
        self.result_cache_misses = Metric(
            "spfmilter_result_cache_misses", "counter", "SPF evaluations that had to be made"
        )
        self.connections = Metric(
            "spfmilter_connections_in_flight", "gauge", "SMTP connections being served"
        )
        self.errors = Metric(
            "spfmilter_internal_errors",
            "counter",
            "Callbacks that failed unexpectedly and were tempfailed",
        )
        self.reloads = Metric(
            "spfmilter_config_reloads",
            "counter",
            "Configuration reloads, by outcome",
            [("outcome", ("ok", "failed"))],
        )
        self.all = [
            self.verdicts,
            self.skips,
            self.rescues,
            self.dns_queries,
            self.dns_seconds,
            self.cache_hits,
            self.cache_misses,
            self.result_cache_hits,
            self.result_cache_misses,
            self.connections,
            self.errors,
            self.reloads,
        ]
        size = sum(len(m.combinations) * m.width for m in self.all)
        self._store = _Store(size, slots)
        index = 0
        for metric in self.all:
            index = metric.bind(self._store, index)

    def use_slot(self, slot: int) -> None:
        """Count in `slot` (a worker process after the fork)."""
        self._store.use_slot(slot)

    def retire_slot(self, slot: int) -> None:
        """Tidy the slot of a worker that is gone, for its replacement: its
        gauges are zeroed (its connections went with it), its counts stay."""
        gauges = [m.index for m in self.all if m.kind == "gauge"]
        self._store.reset(slot, gauges)

    def value(self, name: str, **labels: str) -> float:
        """One sample by its exposition name (tests, and a look from outside)."""
        totals = self._store.totals()
        for metric in self.all:
            for sample, sample_labels, amount in metric.samples(totals):
                if sample == name and sample_labels == labels:
                    return amount
        raise KeyError(f"no sample {name}{labels}")

    def exposition(self, openmetrics: bool = False) -> str:
        """Every metric, slots added up: the text format 0.0.4 (TEXT_TYPE),
        or OpenMetrics (OPENMETRICS_TYPE)."""
        totals = self._store.totals()
        out = []
        for metric in self.all:
            # Prometheus's 0.0.4 parser takes a counter's HELP and TYPE from
            # the lines that name its samples (name_total); OpenMetrics names
            # the family, without the suffix.
            family = metric.name
            if metric.kind == "counter" and not openmetrics:
                family += "_total"
            out.append(f"# HELP {family} {metric.documentation}")
            out.append(f"# TYPE {family} {metric.kind}")
            for sample, labels, amount in metric.samples(totals):
                out.append(f"{sample}{_labels(labels)} {amount!r}")
        # OpenMetrics has a type for a build's facts; in 0.0.4 they are a
        # gauge of value 1 named *_info, as client libraries write them.
        build = "spfmilter_build" if openmetrics else "spfmilter_build_info"
        out.append(f"# HELP {build} Version of spfmilter")
        out.append(f"# TYPE {build} {'info' if openmetrics else 'gauge'}")
        out.append(f'spfmilter_build_info{{version="{__version__}"}} 1.0')
        if openmetrics:
            out.append("# EOF")
        return "\n".join(out) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    pairs = (f'{name}="{labels[name]}"' for name in sorted(labels))
    return "{" + ",".join(pairs) + "}"
