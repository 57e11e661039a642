"""The resolver: servers in turn, outcomes, the chain, limits, the byte-bounded TTL cache."""

from __future__ import annotations

import logging
import tracemalloc

import pytest

from spfmilter.core.metrics import Metrics
from spfmilter.evaluation import dnswire
from spfmilter.evaluation.dnswire import RR, Reply
from spfmilter.evaluation.resolver import (
    MAX_ANSWER_RECORDS,
    NEGATIVE_TTL_CAP,
    DnsLimitError,
    DnsTempError,
    DnsTimeout,
)
from tests.support.fakedns import make, reply

SOA_300 = RR("example.org", 6, 600, 300)


def value(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.value(name, **(labels or {}))


def test_answer_is_keyed_by_the_name_as_asked() -> None:
    resolver, fake, _, metrics = make()
    fake.table["192.0.2.1", "a b.example.org", 16] = reply(RR("a b.example.org", 16, 60, (b"x",)))
    assert list(resolver.lookup("A B.example.org.", "TXT")) == [
        (("a b.example.org", "TXT"), (b"x",))
    ]
    assert value(metrics, "spfmilter_dns_queries_total", {"qtype": "TXT", "outcome": "answer"})


def test_only_the_cname_chain_is_believed() -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "example.org", 12] = reply(
        RR("example.org", 5, 60, "alias.example.net"),
        RR("alias.example.net", 12, 60, "mail.example.net"),
        # Foreign records: another name's PTR and a CNAME nobody asked for.
        RR("victim.example", 12, 60, "evil.example"),
        RR("other.example", 5, 60, "evil.example"),
    )
    assert list(resolver.lookup("example.org", "PTR")) == [
        (("example.org", "CNAME"), "alias.example.net"),
        (("alias.example.net", "PTR"), "mail.example.net"),
    ]


def test_cname_loop_yields_the_chain_without_data() -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "a.example", 1] = reply(
        RR("a.example", 5, 60, "b.example"), RR("b.example", 5, 60, "a.example")
    )
    assert list(resolver.lookup("a.example", "A")) == [
        (("a.example", "CNAME"), "b.example"),
        (("b.example", "CNAME"), "a.example"),
    ]


def test_long_chain_stops() -> None:
    resolver, fake, _, _ = make()
    chain = [RR(f"c{i}.example", 5, 60, f"c{i + 1}.example") for i in range(20)]
    fake.table["192.0.2.1", "c0.example", 1] = reply(*chain, RR("c20.example", 1, 60, "192.0.2.9"))
    records = resolver.lookup("c0.example", "A")
    assert len(records) == 8 and all(key[1] == "CNAME" for key, _ in records)


def test_nxdomain_and_nodata_are_empty_and_cached_for_the_soa_minimum() -> None:
    resolver, fake, clock, metrics = make()
    fake.table["192.0.2.1", "none.example", 16] = reply(authority=(SOA_300,), rcode=3)
    assert list(resolver.lookup("none.example", "TXT")) == []
    assert list(resolver.lookup("none.example", "TXT")) == []
    assert len(fake.asked) == 1
    clock.now += 299
    resolver.lookup("none.example", "TXT")
    assert len(fake.asked) == 1
    clock.now += 2
    resolver.lookup("none.example", "TXT")
    assert len(fake.asked) == 2
    assert value(metrics, "spfmilter_dns_queries_total", {"qtype": "TXT", "outcome": "empty"}) == 2


def test_negative_ttl_is_capped_and_needs_a_soa() -> None:
    resolver, fake, clock, _ = make()
    big = RR("example.org", 6, 86400, 86400)
    fake.table["192.0.2.1", "capped.example", 1] = reply(authority=(big,))
    fake.table["192.0.2.1", "nosoa.example", 1] = reply()
    resolver.lookup("capped.example", "A")
    resolver.lookup("nosoa.example", "A")
    resolver.lookup("nosoa.example", "A")  # no SOA: not cached
    assert len(fake.asked) == 3
    clock.now += NEGATIVE_TTL_CAP - 1
    resolver.lookup("capped.example", "A")
    assert len(fake.asked) == 3
    clock.now += 2
    resolver.lookup("capped.example", "A")
    assert len(fake.asked) == 4
    # The SOA record's own TTL caps it too (RFC 2308 section 5).
    fake.table["192.0.2.1", "short.example", 1] = reply(authority=(RR("x", 6, 10, 300),))
    resolver.lookup("short.example", "A")
    clock.now += 11
    resolver.lookup("short.example", "A")
    assert len(fake.asked) == 6


def test_positive_ttl_is_the_smallest_and_capped() -> None:
    resolver, fake, clock, _ = make()
    fake.table["192.0.2.1", "example.org", 1] = reply(
        RR("example.org", 5, 30, "x.example"), RR("x.example", 1, 90, "192.0.2.1")
    )
    resolver.lookup("example.org", "A")
    clock.now += 29
    resolver.lookup("example.org", "A")
    assert len(fake.asked) == 1
    clock.now += 2
    resolver.lookup("example.org", "A")
    assert len(fake.asked) == 2
    fake.table["192.0.2.1", "long.example", 1] = reply(RR("long.example", 1, 10**6, "192.0.2.1"))
    resolver.lookup("long.example", "A")
    clock.now += 86401
    resolver.lookup("long.example", "A")
    assert [a[1] for a in fake.asked].count("long.example") == 2


def test_zero_ttl_is_not_cached() -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "zero.example", 1] = reply(RR("zero.example", 1, 0, "192.0.2.1"))
    resolver.lookup("zero.example", "A")
    resolver.lookup("zero.example", "A")
    assert len(fake.asked) == 2


def test_cache_is_bounded_in_bytes_and_evicts_least_recently_used() -> None:
    resolver, fake, _, metrics = make(cache_size=16000)
    for i in range(12):  # about 1.6 KB each: together more than the cache
        fake.table["192.0.2.1", f"n{i}.example", 16] = reply(
            RR(f"n{i}.example", 16, 600, (b"v" * 1200,))
        )
    for i in range(12):
        resolver.lookup(f"n{i}.example", "TXT")
        resolver.lookup("n0.example", "TXT")  # keeps n0 recently used
        assert resolver.cached_bytes <= 16000
    assert resolver.cached_bytes > 12000
    asked = len(fake.asked)
    resolver.lookup("n0.example", "TXT")
    resolver.lookup("n11.example", "TXT")
    assert len(fake.asked) == asked
    resolver.lookup("n1.example", "TXT")  # the least recently used went first
    assert len(fake.asked) == asked + 1
    assert value(metrics, "spfmilter_dns_cache_hits_total") >= 12


def test_an_entry_larger_than_an_eighth_of_the_cache_is_not_kept() -> None:
    resolver, fake, _, _ = make(cache_size=4000)
    fake.table["192.0.2.1", "big.example", 16] = reply(RR("big.example", 16, 600, (b"v" * 600,)))
    resolver.lookup("big.example", "TXT")
    resolver.lookup("big.example", "TXT")
    assert len(fake.asked) == 2 and resolver.cached_bytes == 0


def test_cache_size_zero_disables_the_cache() -> None:
    resolver, fake, _, _ = make(cache_size=0)
    fake.table["192.0.2.1", "x.example", 1] = reply(RR("x.example", 1, 600, "192.0.2.1"))
    resolver.lookup("x.example", "A")
    resolver.lookup("x.example", "A")
    assert len(fake.asked) == 2


def oversized(name: str, ttl: int, count: int = MAX_ANSWER_RECORDS + 1) -> Reply:
    """What the codec makes of an answer with more than MAX_ANSWER_RECORDS
    addresses: the first ones, flagged."""
    rrs = tuple(RR(name, 1, ttl, f"10.0.{i // 250}.{i % 250}") for i in range(count))
    return Reply(0, rrs, (), 65000, oversized=True)


def test_too_many_records_are_refused_and_the_refusal_is_cached() -> None:
    resolver, fake, _, metrics = make()
    fake.table["192.0.2.1", "many.example", 1] = oversized("many.example", 300)
    for _ in range(2):
        with pytest.raises(DnsLimitError, match="too many records: at most 256 of its type"):
            resolver.lookup("many.example", "A")
    assert len(fake.asked) == 1 and resolver.cached_bytes < 1000
    assert value(metrics, "spfmilter_dns_queries_total", {"qtype": "A", "outcome": "refused"}) == 1
    enough = [RR("ok.example", 1, 300, f"10.0.0.{i}") for i in range(MAX_ANSWER_RECORDS)]
    fake.table["192.0.2.1", "ok.example", 1] = reply(*enough)
    assert len(resolver.lookup("ok.example", "A")) == MAX_ANSWER_RECORDS


def test_a_refusal_is_kept_no_longer_than_its_ttl_and_at_most_a_negative_answer() -> None:
    resolver, fake, clock, _ = make()
    fake.table["192.0.2.1", "zero.example", 1] = oversized("zero.example", 0)
    fake.table["192.0.2.1", "long.example", 1] = oversized("long.example", 2**31 - 1)
    for _ in range(2):
        with pytest.raises(DnsLimitError) as zero:
            resolver.lookup("zero.example", "A")
    assert zero.value.expiry == clock.now  # holds no time: asked afresh each time
    assert [a[1] for a in fake.asked] == ["zero.example", "zero.example"]
    with pytest.raises(DnsLimitError) as long:
        resolver.lookup("long.example", "A")
    assert long.value.expiry == clock.now + NEGATIVE_TTL_CAP
    clock.now += NEGATIVE_TTL_CAP
    with pytest.raises(DnsLimitError):
        resolver.lookup("long.example", "A")
    assert [a[1] for a in fake.asked].count("long.example") == 2


def test_servers_are_tried_in_order() -> None:
    resolver, fake, _, _ = make(servers=("192.0.2.1", "192.0.2.2", "192.0.2.3"))
    fake.table["192.0.2.1", "x.example", 1] = reply(rcode=2)  # SERVFAIL
    fake.table["192.0.2.2", "x.example", 1] = dnswire.WireError("bad")
    fake.table["192.0.2.3", "x.example", 1] = reply(RR("x.example", 1, 60, "192.0.2.7"))
    assert list(resolver.lookup("x.example", "A")) == [(("x.example", "A"), "192.0.2.7")]
    assert [a[0] for a in fake.asked] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_all_servers_failing_is_a_temporary_error() -> None:
    resolver, fake, _, metrics = make(servers=("192.0.2.1", "192.0.2.2"))
    fake.table["192.0.2.1", "x.example", 16] = reply(rcode=2)
    fake.table["192.0.2.2", "x.example", 16] = reply(rcode=5)
    with pytest.raises(DnsTempError, match=r"server failure .*SERVFAIL.*REFUSED") as caught:
        resolver.lookup("x.example", "TXT")
    assert not isinstance(caught.value, DnsTimeout)
    assert value(metrics, "spfmilter_dns_queries_total", {"qtype": "TXT", "outcome": "failure"})


def test_timeouts_respect_the_budget_and_the_per_server_timeout() -> None:
    resolver, fake, clock, metrics = make(servers=("192.0.2.1", "192.0.2.2"), timeout=2.0)
    fake.cost = 3.0  # every server is slower than the timeout
    start = clock.now
    with pytest.raises(DnsTimeout, match=r"DNS timeout looking up slow\.example A"):
        resolver.lookup("slow.example", "A", 10.0)
    assert len(fake.asked) == 2
    fake.asked.clear()
    with pytest.raises(DnsTimeout):
        resolver.lookup("slow.example", "A", 0.5)  # not even time for one
    assert len(fake.asked) == 1 and clock.now - start < 20
    assert value(metrics, "spfmilter_dns_queries_total", {"qtype": "A", "outcome": "timeout"}) == 2


def test_names_that_cannot_be_on_the_wire_have_no_records() -> None:
    resolver, fake, _, _ = make()
    assert list(resolver.lookup("a..b.example", "TXT")) == []
    assert list(resolver.lookup("x" * 64 + ".example", "A")) == []
    assert fake.asked == []


def test_cache_accounting_matches_the_memory_it_holds() -> None:
    # [dns] cache_size bounds memory only if an entry's footprint is what
    # CPython really spends on it: compare with tracemalloc, for a mix of
    # answer kinds, within a quarter.
    resolver, fake, _, _ = make(cache_size=1 << 30)
    for i in range(2000):
        name = f"host{i}.cold.example"
        fake.table["192.0.2.1", name, 16] = reply(RR(name, 16, 600, (b"v=spf1 a mx -all",)))
        fake.table["192.0.2.1", name, 1] = reply(RR(name, 1, 600, f"10.0.{i // 250}.{i % 250}"))
        fake.table["192.0.2.1", name, 15] = reply(
            RR(name, 15, 600, (10, f"mx.{name}")), RR(name, 15, 600, (20, f"mx2.{name}"))
        )
        fake.table["192.0.2.1", name, 28] = reply(authority=(SOA_300,), rcode=3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            for qtype in ("TXT", "A", "MX", "AAAA"):
                resolver.lookup(f"host{i}.cold.example", qtype)
        fake.asked.clear()  # the fake server's log is not the cache's
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.75 < resolver.cached_bytes / held < 1.25, (resolver.cached_bytes, held)


def test_a_prefetch_warms_the_cache_the_evaluation_then_reads() -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "x.example", 1] = reply(RR("x.example", 1, 300, "192.0.2.7"))
    assert not resolver.cached("x.example", "A")
    # Names and types as pyspf and a record write them: any case, a root dot.
    found = resolver.prefetch("X.Example.", "a", 5)
    assert found == ((("x.example", "A"), "192.0.2.7"),)
    assert resolver.cached("x.example", "A") and resolver.cached("X.EXAMPLE.", "a")
    assert not resolver.cached("x.example", "TXT") and not resolver.cached("y.example", "A")
    assert resolver.lookup("x.example", "A") == found and len(fake.asked) == 1


def test_a_prefetch_within_no_time_left_asks_nothing() -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "x.example", 1] = reply(RR("x.example", 1, 300, "192.0.2.7"))
    assert resolver.prefetch("x.example", "A", 0.0) is None and fake.asked == []


def test_a_refused_or_failed_prefetch_is_none_and_logged_at_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "many.example", 1] = oversized("many.example", 300)
    caplog.set_level(logging.DEBUG, logger="spfmilter.dns")
    assert resolver.prefetch("many.example", "A", 5) is None
    # The refusal is kept: the evaluation meets it without asking again.
    with pytest.raises(DnsLimitError):
        resolver.lookup("many.example", "A")
    assert len(fake.asked) == 1
    assert resolver.prefetch("gone.example", "A", 5) is None
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "prefetch: DNS timeout looking up gone.example A")
    ]
