"""SPF results kept and reused, no longer than the DNS data they came from.

This module owns the cache of outcomes: an SPF result depends only on the
query's inputs and on DNS data (RFC 7208 section 4.1), so an outcome is
reused for the same query until the shortest TTL among the records its
evaluation read runs out, and never longer than a day.  Its memory is
counted in bytes, within its share of [dns] cache_size.  Which outcomes
may be kept at all is the evaluator's call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from spfmilter.core.metrics import Metrics
from spfmilter.core.model import SpfOutcome, SpfQuery
from spfmilter.evaluation.ttlcache import TtlCache

# An outcome is kept at most this long, however long its records live (the
# resolver caps record TTLs the same way).
MAX_RESULT_SECONDS = 86400

# A kept outcome with its query, as CPython holds them (measured like the
# DNS cache's entries, spfmilter.evaluation.resolver.footprint), plus their
# strings.
_RESULT_BYTES = 700


class Results:
    """Outcomes by query within `limit` bytes; hits and misses counted in
    `metrics` when given."""

    def __init__(self, limit: int, clock: Callable[[], float], metrics: Metrics | None) -> None:
        self._cache: TtlCache[SpfOutcome] = TtlCache(limit, clock)
        self._metrics = metrics

    def known(self, query: SpfQuery) -> bool:
        """Whether an outcome is kept for `query` (not counted)."""
        return self._cache.get(query) is not None

    def get(self, query: SpfQuery) -> SpfOutcome | None:
        """The outcome kept for `query`, if any."""
        kept = self._cache.get(query)
        if self._metrics is not None:
            hits = self._metrics.result_cache_hits
            (hits if kept is not None else self._metrics.result_cache_misses).inc()
        return kept

    def keep(self, query: SpfQuery, outcome: SpfOutcome, seconds: float) -> None:
        """Keep `outcome` for `seconds` (its evaluation's time is not part
        of the kept result)."""
        kept = dataclasses.replace(outcome, lookup_seconds=0.0)
        self._cache.put(query, kept, seconds, _size(query, kept))


def _size(query: SpfQuery, outcome: SpfOutcome) -> int:
    texts = (query.helo, query.mail_from, query.receiver, outcome.domain, outcome.sender)
    extra = (outcome.mechanism, outcome.explanation, outcome.problem)
    return _RESULT_BYTES + sum(len(t) for t in texts) + sum(len(t) for t in extra if t)
