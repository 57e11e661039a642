"""Prometheus metrics: their names, labels and buckets, and their storage.

This module owns every metric spfmilter exports and how it is kept: each
series has a fixed place in one block of doubles (every label value is known
in advance), so that the block can be a shared memory mapping in which each
worker process counts in a slot of its own and a scrape adds the slots up
(Metrics.exposition; spfmilter.scrape serves it).  The Metrics object is made
once in daemon.py and passed to its users through their constructors.  It
imports the package version and the value enums of model.
"""

from __future__ import annotations

import itertools
import mmap
import threading
from collections.abc import Iterable, Sequence

from spfmilter import __version__
from spfmilter.model import Action, Identity, SkipReason, SpfResult

# DNS answers on a LAN resolver take about a millisecond, a cold recursive
# lookup tens to hundreds, and a timeout seconds.
DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)
# Every type spfmilter.dnswire can ask for.
QTYPES = ("A", "AAAA", "CNAME", "MX", "PTR", "SOA", "SPF", "TXT")
DNS_OUTCOMES = ("answer", "empty", "refused", "timeout", "failure", "error")


class _Store:
    """Doubles in slots: one slot per process that counts."""

    def __init__(self, size: int, slots: int) -> None:
        self.size = size
        self.slots = slots
        # An anonymous shared mapping: a forked worker writes into the very
        # memory its parent reads.
        self._memory = mmap.mmap(-1, max(8, size * slots * 8))
        self.values = memoryview(self._memory).cast("d")
        self.base = 0
        self.lock = threading.Lock()

    def use_slot(self, slot: int) -> None:
        """Count in `slot` from now on (a worker after the fork)."""
        self.base = slot * self.size
        self.lock = threading.Lock()  # one the fork may have copied locked is dropped

    def add(self, index: int, amount: float) -> None:
        with self.lock:
            self.values[self.base + index] += amount

    def total(self, index: int) -> float:
        return sum(self.values[slot * self.size + index] for slot in range(self.slots))

    def reset_slot(self, slot: int, indexes: Iterable[int]) -> None:
        for index in indexes:
            self.values[slot * self.size + index] = 0.0


class _Series:
    """One labelled series: a place in the store."""

    def __init__(self, store: _Store, index: int) -> None:
        self._store = store
        self._index = index

    def inc(self, amount: float = 1.0) -> None:
        self._store.add(self._index, amount)

    def dec(self, amount: float = 1.0) -> None:
        self._store.add(self._index, -amount)

    def observe(self, value: float) -> None:
        raise TypeError("only histograms observe")


class _Histogram(_Series):
    """Buckets, then sum, then count, in consecutive places."""

    def __init__(self, store: _Store, index: int, buckets: Sequence[float]) -> None:
        super().__init__(store, index)
        self._buckets = buckets

    def observe(self, value: float) -> None:
        for offset, bound in enumerate(self._buckets):
            if value <= bound:
                self._store.add(self._index + offset, 1.0)
                break
        self._store.add(self._index + len(self._buckets), value)
        self._store.add(self._index + len(self._buckets) + 1, 1.0)


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

    def clear_gauges(self, slot: int) -> None:
        """Zero the gauges of a slot whose process is gone."""
        for metric in self.all:
            if metric.kind == "gauge":
                self._store.reset_slot(slot, [metric.index])

    def value(self, name: str, **labels: str) -> float:
        """One sample by its exposition name (tests, and a look from outside)."""
        for metric in self.all:
            for sample, sample_labels, amount in self._samples(metric):
                if sample == name and sample_labels == labels:
                    return amount
        raise KeyError(f"no sample {name}{labels}")

    def exposition(self) -> str:
        """The text format (version 0.0.4) of every metric, slots added up."""
        out = []
        for metric in self.all:
            out.append(f"# HELP {metric.name} {metric.documentation}")
            out.append(f"# TYPE {metric.name} {metric.kind}")
            for sample, labels, amount in self._samples(metric):
                out.append(f"{sample}{_labels(labels)} {amount!r}")
        out.append("# HELP spfmilter_build Version of spfmilter")
        out.append("# TYPE spfmilter_build gauge")
        out.append(f'spfmilter_build_info{{version="{__version__}"}} 1.0')
        return "\n".join(out) + "\n"

    def _samples(self, metric: Metric) -> Iterable[tuple[str, dict[str, str], float]]:
        suffix = "_total" if metric.kind == "counter" else ""
        for number, combination in enumerate(metric.combinations):
            labels = dict(zip(metric.label_names, combination, strict=True))
            at = metric.index + number * metric.width
            if metric.kind != "histogram":
                yield metric.name + suffix, labels, self._store.total(at)
                continue
            running = 0.0
            for offset, bound in enumerate((*metric.buckets, float("inf"))):
                if offset < len(metric.buckets):
                    running += self._store.total(at + offset)
                else:
                    running = self._store.total(at + len(metric.buckets) + 1)
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                yield f"{metric.name}_bucket", {**labels, "le": le}, running
            yield f"{metric.name}_sum", labels, self._store.total(at + len(metric.buckets))
            yield f"{metric.name}_count", labels, self._store.total(at + len(metric.buckets) + 1)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    pairs = (f'{name}="{labels[name]}"' for name in sorted(labels))
    return "{" + ",".join(pairs) + "}"
