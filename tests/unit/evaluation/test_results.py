"""The cache of SPF outcomes: what is kept, for how long, in what room."""

from __future__ import annotations

import dataclasses
import ipaddress

from spfmilter.core.metrics import Metrics
from spfmilter.core.model import Identity, SpfOutcome, SpfQuery, SpfResult
from spfmilter.evaluation.results import Results
from tests.support.fakes import Clock

QUERY = SpfQuery(
    Identity.MAIL_FROM, ipaddress.ip_address("192.0.2.1"), "mx.example", "a@example", "mx"
)
OUTCOME = SpfOutcome(
    Identity.MAIL_FROM,
    SpfResult.FAIL,
    "example",
    "a@example",
    mechanism="-all",
    explanation="not here",
    problem=None,
    lookup_seconds=0.5,
)


def test_known_neither_counts_nor_differs_from_get() -> None:
    metrics = Metrics()
    results = Results(1 << 20, Clock(), metrics)
    assert not results.known(QUERY)
    results.keep(QUERY, OUTCOME, 60)
    assert results.known(QUERY)
    assert metrics.value("spfmilter_result_cache_hits_total") == 0
    assert metrics.value("spfmilter_result_cache_misses_total") == 0


def test_hits_and_misses_are_counted_apart() -> None:
    metrics = Metrics()
    results = Results(1 << 20, Clock(), metrics)
    assert results.get(QUERY) is None
    assert results.get(QUERY) is None
    results.keep(QUERY, OUTCOME, 60)
    assert results.get(QUERY) is not None
    assert metrics.value("spfmilter_result_cache_misses_total") == 2
    assert metrics.value("spfmilter_result_cache_hits_total") == 1


def test_a_kept_outcome_took_no_time() -> None:
    results = Results(1 << 20, Clock(), None)
    results.keep(QUERY, OUTCOME, 60)
    kept = results.get(QUERY)
    assert kept is not None
    assert kept.lookup_seconds == 0.0
    assert kept.explanation == "not here" and kept.result is SpfResult.FAIL


def test_the_texts_of_an_outcome_count_against_its_room() -> None:
    # The cache keeps nothing larger than an eighth of its room
    # (spfmilter.evaluation.ttlcache): find the smallest room that keeps
    # OUTCOME, then see that longer texts of any kind need more of it.
    def keeps(limit: int, query: SpfQuery, outcome: SpfOutcome) -> bool:
        results = Results(limit, Clock(), None)
        results.keep(query, outcome, 60)
        return results.known(query)

    limit = next(n for n in range(8, 1 << 16, 8) if keeps(n, QUERY, OUTCOME))
    assert not keeps(limit - 8, QUERY, OUTCOME)
    longer_query = SpfQuery(
        QUERY.identity, QUERY.client_ip, QUERY.helo, "a" * 10 + QUERY.mail_from, QUERY.receiver
    )
    assert not keeps(limit, longer_query, OUTCOME)
    assert keeps(limit + 80, longer_query, OUTCOME)
    longer_outcome = dataclasses.replace(OUTCOME, explanation="not here" + "x" * 10)
    assert not keeps(limit, QUERY, longer_outcome)
    assert keeps(limit + 80, QUERY, longer_outcome)
