"""Resolver behaviour that mutation testing found unpinned: TTLs and the
cache bound at their exact boundaries, two lookups of one name racing (one
query, its answer or failure shared), what
is logged and counted for a query, how the time budget is shared among the
servers, the wording of a server failure, names whose text form differs from
the name asked, CNAME loops, and the memory accounted per entry.

A fake exchange and clock stand in for the network (as in
tests/unit/test_dns.py, which holds the resolver's main paths).
"""

from __future__ import annotations

import logging
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from spfmilter.config.schema import DnsConfig
from spfmilter.config.values import Nameserver
from spfmilter.core.metrics import Metrics
from spfmilter.evaluation import dnswire
from spfmilter.evaluation.dnswire import RR, Reply
from spfmilter.evaluation.resolver import (
    DnsLimitError,
    DnsTempError,
    DnsTimeout,
    Record,
    Resolver,
)
from spfmilter.evaluation.resolver import footprint as dns_footprint
from tests.support.fakedns import FakeDns, make, reply
from tests.support.fakes import Clock

SOA = RR("example", 6, 3600, 300)


def a_record(name: str, ttl: int = 60, address: str = "192.0.2.9") -> Reply:
    return reply(RR(name, 1, ttl, address))


# --- the cache ------------------------------------------------------------------


def test_a_record_is_kept_for_its_ttl_and_not_a_moment_longer() -> None:
    resolver, fake, clock, _ = make()
    fake.table["192.0.2.1", "x.example", 1] = a_record("x.example", ttl=60)
    resolver.lookup("x.example", "A")
    clock.now += 59.5
    resolver.lookup("x.example", "A")
    assert len(fake.asked) == 1
    clock.now += 0.5  # exactly the TTL
    resolver.lookup("x.example", "A")
    assert len(fake.asked) == 2


def test_a_one_second_ttl_is_cached_and_a_zero_ttl_holds_no_memory() -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "one.example", 1] = a_record("one.example", ttl=1)
    fake.table["192.0.2.1", "zero.example", 1] = a_record("zero.example", ttl=0)
    resolver.lookup("one.example", "A")
    resolver.lookup("one.example", "A")
    assert len(fake.asked) == 1
    held = resolver.cached_bytes
    resolver.lookup("zero.example", "A")
    assert resolver.cached_bytes == held


def test_an_entry_of_exactly_an_eighth_of_the_cache_is_kept() -> None:
    records: list[Record] = [(("x.example", "A"), "192.0.2.9")]
    size = dns_footprint("x.example", records)
    resolver, fake, _, _ = make(cache_size=8 * size)
    fake.table["192.0.2.1", "x.example", 1] = a_record("x.example")
    resolver.lookup("x.example", "A")
    resolver.lookup("x.example", "A")
    assert len(fake.asked) == 1 and resolver.cached_bytes == size


def test_the_cache_holds_entries_up_to_exactly_its_size() -> None:
    size = dns_footprint("n0.example", [(("n0.example", "A"), "192.0.2.9")])
    resolver, fake, _, _ = make(cache_size=8 * size)
    names = [f"n{i}.example" for i in range(8)]
    for name in names:
        fake.table["192.0.2.1", name, 1] = a_record(name)
        resolver.lookup(name, "A")
    assert resolver.cached_bytes == 8 * size
    for name in names:
        resolver.lookup(name, "A")
    assert len(fake.asked) == 8


def test_answers_say_until_when_their_records_hold() -> None:
    resolver, fake, clock, _ = make()
    fake.table["192.0.2.1", "x.example", 1] = a_record("x.example", ttl=60)
    records, expiry = resolver.answer("x.example", "A")
    assert (list(records), expiry) == ([(("x.example", "A"), "192.0.2.9")], 1060.0)
    clock.now += 10
    assert resolver.answer("x.example", "A")[1] == 1060.0  # from the cache: the same time
    assert len(fake.asked) == 1


def test_the_cache_bound_given_to_the_resolver_overrides_the_configured_size() -> None:
    clock = Clock()
    fake = FakeDns(clock)
    config = DnsConfig(nameservers=(Nameserver("192.0.2.1"),), cache_size=1 << 20)
    resolver = Resolver(config, Metrics(), clock=clock, exchange=fake, cache_bytes=0)
    fake.table["192.0.2.1", "x.example", 1] = a_record("x.example")
    resolver.lookup("x.example", "A")
    resolver.lookup("x.example", "A")
    assert len(fake.asked) == 2 and resolver.cached_bytes == 0


def while_in_flight(
    resolver: Resolver, fake: FakeDns, other: threading.Thread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start `other` while the next question is on its way, and go on only
    once `other` waits for that flight instead of asking again."""
    waiting = threading.Event()
    wait = resolver._wait

    def waits(*args: Any) -> Any:
        waiting.set()
        return wait(*args)

    def race() -> None:
        fake.during = lambda: None
        other.start()
        assert waiting.wait(10)

    monkeypatch.setattr(resolver, "_wait", waits)
    fake.during = race


def test_two_lookups_of_one_name_racing_ask_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A lookup of a question in flight waits for its answer (the prefetch
    # and the evaluation ask for the same names): one query, one entry.
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "x.example", 1] = a_record("x.example")
    inner: list[object] = []
    other = threading.Thread(target=lambda: inner.append(resolver.lookup("x.example", "A")))
    while_in_flight(resolver, fake, other, monkeypatch)
    records = resolver.lookup("x.example", "A")
    other.join(10)
    assert inner == [records] and len(fake.asked) == 1
    assert resolver.cached_bytes == dns_footprint("x.example", list(records))


def test_a_failure_in_flight_is_the_waiters_too(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver, fake, _, _ = make()
    errors: list[BaseException] = []

    def other_lookup() -> None:
        try:
            resolver.lookup("gone.example", "A")
        except DnsTempError as error:
            errors.append(error)

    other = threading.Thread(target=other_lookup)
    while_in_flight(resolver, fake, other, monkeypatch)
    with pytest.raises(DnsTempError):
        resolver.lookup("gone.example", "A")
    other.join(10)
    assert [str(e) for e in errors] == ["DNS timeout looking up gone.example A"]
    assert len(fake.asked) == 1


def test_a_waiter_gives_up_at_its_own_budget_while_the_question_is_in_flight() -> None:
    # The first asker may have a larger budget than the second: the second
    # must not wait past its own (its callback's time is what it bounds).
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "slow.example", 1] = a_record("slow.example")
    release = threading.Event()
    waiter: list[BaseException] = []

    def second() -> None:
        try:
            resolver.lookup("slow.example", "A", 0.05)
        except DnsTimeout as error:
            waiter.append(error)
        release.set()

    def in_flight() -> None:
        fake.during = lambda: None
        other = threading.Thread(target=second)
        other.start()
        assert release.wait(10), "the waiter did not give up at its budget"
        other.join(10)

    fake.during = in_flight
    assert resolver.lookup("slow.example", "A", 30)  # the first asker's answer
    assert [str(error) for error in waiter] == ["DNS timeout looking up slow.example A"]
    assert len(fake.asked) == 1


def test_names_that_cannot_be_on_the_wire_are_not_cached() -> None:
    resolver, fake, _, metrics = make()
    for _ in range(2):
        assert list(resolver.lookup("a..b.example", "A")) == []
    assert fake.asked == [] and resolver.cached_bytes == 0
    assert metrics.value("spfmilter_dns_cache_misses_total") == 2
    assert metrics.value("spfmilter_dns_cache_hits_total") == 0


def test_a_refusal_is_accounted_as_an_empty_entry_and_its_message() -> None:
    resolver, fake, _, _ = make()
    many = tuple(RR("many.example", 1, 300, f"10.0.{i // 250}.{i % 250}") for i in range(257))
    fake.table["192.0.2.1", "many.example", 1] = Reply(0, many, (), 4000, oversized=True)
    with pytest.raises(DnsLimitError) as info:
        resolver.lookup("many.example", "A")
    message = str(info.value)
    assert message == (
        "DNS answer for many.example A has too many records: at most 256 of its type and "
        "1024 in all are accepted"
    )
    assert resolver.cached_bytes == dns_footprint("many.example", ()) + 49 + len(message)


# --- what one query costs and says ------------------------------------------------


def test_a_failure_is_logged_once_as_a_warning_with_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "x.example", 16] = reply(rcode=2)
    with pytest.raises(DnsTempError):
        resolver.lookup("x.example", "TXT")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "DNS server failure looking up x.example TXT: 192.0.2.1: SERVFAIL")
    ]


def test_an_unexpected_exchange_error_is_counted_as_error_and_raised() -> None:
    resolver, fake, _, metrics = make()
    fake.table["192.0.2.1", "x.example", 1] = RuntimeError("bug")
    with pytest.raises(RuntimeError):
        resolver.lookup("x.example", "A")
    assert metrics.value("spfmilter_dns_queries_total", qtype="A", outcome="error") == 1


def test_query_time_is_measured_on_the_clock() -> None:
    resolver, fake, _, metrics = make()
    fake.cost = 0.25
    fake.table["192.0.2.1", "x.example", 1] = a_record("x.example")
    resolver.lookup("x.example", "A")
    assert metrics.value("spfmilter_dns_query_seconds_sum", qtype="A") == 0.25
    assert metrics.value("spfmilter_dns_query_seconds_count", qtype="A") == 1


# --- servers, budget, failure wording --------------------------------------------


def test_without_a_budget_every_server_gets_its_timeout() -> None:
    resolver, fake, _, _ = make(servers=("192.0.2.1", "192.0.2.2"), timeout=2.0)
    fake.cost = 3.0  # slower than the timeout: each server times out
    with pytest.raises(DnsTempError, match="timeout"):
        resolver.lookup("slow.example", "A")
    assert [server for server, _, _ in fake.asked] == ["192.0.2.1", "192.0.2.2"]


def test_no_server_is_asked_once_the_budget_is_spent() -> None:
    resolver, fake, _, _ = make(servers=("192.0.2.1", "192.0.2.2"), timeout=2.0)
    fake.cost = 2.0  # the first server uses the whole budget
    with pytest.raises(DnsTempError):
        resolver.lookup("slow.example", "A", 2.0)
    assert [server for server, _, _ in fake.asked] == ["192.0.2.1"]


def test_a_failure_names_each_server_and_what_it_did() -> None:
    servers = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")
    resolver, fake, _, metrics = make(servers=servers)
    fake.table["192.0.2.1", "x.example", 1] = reply(rcode=2)
    fake.table["192.0.2.2", "x.example", 1] = dnswire.WireError("message ends early")
    fake.table["192.0.2.3", "x.example", 1] = reply(rcode=9)  # no name for it
    fake.table["192.0.2.4", "x.example", 1] = dnswire.Unreachable("Connection refused")
    with pytest.raises(DnsTempError) as info:
        resolver.lookup("x.example", "A")
    assert str(info.value) == (
        "DNS server failure looking up x.example A: 192.0.2.1: SERVFAIL; "
        "192.0.2.2: malformed reply: message ends early; 192.0.2.3: 9; "
        "192.0.2.4: Connection refused"
    )
    assert metrics.value("spfmilter_dns_queries_total", qtype="A", outcome="failure") == 1


def test_only_malformed_replies_are_a_server_failure_not_a_timeout() -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "x.example", 1] = dnswire.WireError("unknown label type")
    with pytest.raises(DnsTempError) as info:
        resolver.lookup("x.example", "A")
    assert str(info.value) == (
        "DNS server failure looking up x.example A: 192.0.2.1: malformed reply: unknown label type"
    )


# --- what a reply is believed to say -----------------------------------------------


def test_an_internationalized_name_is_answered_under_the_name_asked() -> None:
    # The query carries the A-label; the evaluator looks the answer up by
    # the name it asked for (the U-label, lower-cased).
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "xn--bcher-kva.example", 16] = reply(
        RR("xn--bcher-kva.example", 16, 60, (b"v=spf1 -all",))
    )
    assert list(resolver.lookup("Bücher.example", "TXT")) == [
        (("bücher.example", "TXT"), (b"v=spf1 -all",))
    ]


def test_a_cname_loop_stops_at_the_first_repeated_name() -> None:
    resolver, fake, _, _ = make()
    fake.table["192.0.2.1", "a.example", 1] = reply(
        RR("a.example", 5, 60, "b.example"),
        RR("b.example", 5, 60, "c.example"),
        RR("c.example", 5, 60, "b.example"),
    )
    assert list(resolver.lookup("a.example", "A")) == [
        (("a.example", "CNAME"), "b.example"),
        (("b.example", "CNAME"), "c.example"),
        (("c.example", "CNAME"), "b.example"),
    ]


# --- the memory an entry is accounted for -----------------------------------------


def test_footprint_adds_the_measured_cost_of_each_object() -> None:
    # The costs spfmilter.evaluation.resolver documents (CPython 64-bit, tracemalloc), on top
    # of an entry's own: its name's string (a str: 49 + length); per record
    # 120, plus its owner's string unless the owner is the name; a str value
    # 49 + length; a tuple 40 + 8 per item; each bytes 33 + length.
    name = "example.org"
    entry = dns_footprint(name, ())
    assert entry - dns_footprint("", ()) == len(name)
    assert dns_footprint(name, [((name, "A"), "192.0.2.1")]) == entry + 120 + 49 + 9
    other = "mx.example.org"
    assert dns_footprint(name, [((other, "A"), "192.0.2.1")]) == (
        entry + 120 + (49 + len(other)) + 49 + 9
    )
    txt = (b"v=spf1", b" -all")
    assert dns_footprint(name, [((name, "TXT"), txt)]) == entry + 120 + 40 + 16 + 33 * 2 + 11
    assert dns_footprint(name, [((name, "MX"), (10, other))]) == (
        entry + 120 + 40 + 16 + 49 + len(other)
    )


def held_by_cache(answers: Callable[[int], Reply], qtype: str, count: int) -> float:
    """cached_bytes over the memory tracemalloc sees the cache take for
    `count` answers of one kind."""
    resolver, fake, _, _ = make(cache_size=1 << 30)
    code = dnswire.QTYPES[qtype]
    names = [f"host{i}.cold.example" for i in range(count)]
    for i, name in enumerate(names):
        fake.table["192.0.2.1", name, code] = answers(i)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name in names:
            resolver.lookup(name, qtype)
        fake.asked.clear()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return resolver.cached_bytes / held


def test_negative_answers_are_accounted_as_the_memory_they_hold() -> None:
    # A flood of NXDOMAIN answers (random names from macros) must not take
    # more memory than cache_size says.
    ratio = held_by_cache(lambda i: reply(authority=(SOA,), rcode=3), "AAAA", 4000)
    assert 0.75 < ratio < 1.25, ratio
