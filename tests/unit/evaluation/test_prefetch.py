"""The prefetch: what a record's terms ask for ahead, and the bound on it."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

import pytest

from spfmilter.core.model import Identity, SpfQuery, SpfResult
from spfmilter.evaluation.prefetch import (
    MX_LIMIT,
    NOTHING,
    TERM_LIMIT,
    Prefetcher,
    Want,
    address_type,
    read_record,
)
from spfmilter.evaluation.pyspf import Checker, spf_text
from spfmilter.evaluation.resolver import Record
from tests.support.fakedns import Inline
from tests.support.pyspfstate import pyspf_restored

V4 = ipaddress.ip_address("192.0.2.1")
V6 = ipaddress.ip_address("2001:db8::1")


@pytest.mark.parametrize(
    ("record", "wants"),
    [
        (
            "v=spf1 include:a.example redirect=r.example",
            [("a.example", "TXT"), ("r.example", "TXT")],
        ),
        ("v=spf1 a mx -all", [("d.example", "A"), ("d.example", "MX")]),
        ("v=spf1 a:H.Example./24//64 mx:m.example/24", [("h.example", "A"), ("m.example", "MX")]),
        ("v=spf1 exists:e.example ptr ip4:192.0.2.0/24 ~all", [("e.example", "A")]),
        # redirect= is unused when the record has `all` (RFC 7208 section 6.1).
        ("v=spf1 include:a.example -all redirect=r.example", [("a.example", "TXT")]),
        # Macros are not expanded ahead; a name that is no FQDN is not asked.
        ("v=spf1 exists:%{i}.x.example include:x.123 a:nodot ?all", []),
        # A term not understood: pyspf refuses the record before any lookup.
        ("v=spf1 include:a.example moo -all", []),
        ("v=spf1 include:a.example redirect=r.example redirect=s.example", []),
        ("v=spf2 include:a.example", []),
        # Terms after an ip4 are still read.
        ("v=spf1 ip4:192.0.2.0/24 a:h.example -all", [("h.example", "A")]),
        # include and exists need a domain-spec: without, a syntax error.
        ("v=spf1 a:h.example include -all", []),
        ("v=spf1 a:h.example exists -all", []),
        # An empty domain-spec names nothing (it is not the current domain).
        ("v=spf1 a: redirect=", []),
        # Names of three labels, and a top label ending in x.
        (
            "v=spf1 a:h.sub.example mx:Mail.Example.BOX",
            [("h.sub.example", "A"), ("mail.example.box", "MX")],
        ),
    ],
)
def test_what_a_record_asks_for(record: str, wants: list[tuple[str, str]]) -> None:
    assert list(read_record(record.encode(), "d.example", "A", TERM_LIMIT).wants) == wants


def test_a_record_without_lookups_reads_as_nothing() -> None:
    assert read_record(b"v=spf1 ip4:192.0.2.0/24 -all", "d.example", "A", TERM_LIMIT) == NOTHING


def test_the_address_type_follows_the_clients_family() -> None:
    assert address_type(V4) == "A"
    assert address_type(V6) == "AAAA"
    assert address_type(ipaddress.ip_address("::ffff:192.0.2.1")) == "A"
    wants = read_record(b"v=spf1 a exists:e.example", "d.example", "AAAA", TERM_LIMIT).wants
    assert list(wants) == [("d.example", "AAAA"), ("e.example", "A")]


def test_terms_past_the_budget_ask_nothing_and_macros_count() -> None:
    record = b"v=spf1 ptr exists:%{i}.x.example " + b" ".join(
        f"include:i{n}.example".encode() for n in range(12)
    )
    reading = read_record(record, "d.example", "A", TERM_LIMIT)
    assert reading.terms == TERM_LIMIT
    assert [w.name for w in reading.wants] == [f"i{n}.example" for n in range(8)]
    assert read_record(record, "d.example", "A", 3).terms == 3


class Zone:
    """DNS from a table; counts what it is asked."""

    def __init__(self, table: dict[tuple[str, str], list[Record]]) -> None:
        self.table = table
        self.asked: list[tuple[str, str]] = []
        self.cache: set[tuple[str, str]] = set()

    def fetch(self, name: str, qtype: str, budget: float) -> Sequence[Record]:
        self.asked.append((name, qtype))
        return self.table.get((name, qtype), [])

    def cached(self, name: str, qtype: str) -> bool:
        return (name, qtype) in self.cache


def txt(name: str, text: str) -> list[Record]:
    return [((name, "TXT"), (text.encode(),))]


def prefetcher(zone: Zone, void_limit: int = 2, now: float = 0.0, in_flight: int = 8) -> Prefetcher:
    return Prefetcher(
        zone.fetch,
        zone.cached,
        spf_text,
        Inline(),
        void_lookup_limit=void_limit,
        in_flight=in_flight,
        clock=lambda: now,
    )


def test_a_tree_is_walked_as_answers_come() -> None:
    zone = Zone(
        {
            ("a.example", "TXT"): txt("a.example", "v=spf1 include:b.example -all"),
            ("b.example", "TXT"): txt("b.example", "v=spf1 mx:m.example -all"),
            ("m.example", "MX"): [
                (("m.example", "MX"), (20, "MX2.m.example.")),
                (("m.example", "MX"), (10, "mx1.m.example")),
            ],
            ("mx1.m.example", "A"): [(("mx1.m.example", "A"), "192.0.2.9")],
            ("mx2.m.example", "A"): [(("mx2.m.example", "A"), "192.0.2.8")],
        }
    )
    prefetch = prefetcher(zone).start(V4, 10.0)
    prefetch.read("top.example", txt("top.example", "v=spf1 include:a.example -all"))
    assert zone.asked == [
        ("a.example", "TXT"),
        ("b.example", "TXT"),
        ("m.example", "MX"),
        ("mx1.m.example", "A"),
        ("mx2.m.example", "A"),
    ]
    # The evaluation reading the same records asks nothing again.
    prefetch.read("a.example", zone.table["a.example", "TXT"])
    assert len(zone.asked) == 5 and prefetch.asked == 6


def test_at_most_ten_terms_across_the_records_of_an_evaluation() -> None:
    table = {
        (f"i{n}.example", "TXT"): txt(
            f"i{n}.example", " ".join(["v=spf1"] + [f"a:h{n}-{k}.example" for k in range(12)])
        )
        for n in range(12)
    }
    for n in range(12):
        for k in range(12):
            table[f"h{n}-{k}.example", "A"] = [((f"h{n}-{k}.example", "A"), "192.0.2.9")]
    zone = Zone(table)
    prefetch = prefetcher(zone).start(V4, 10.0)
    top = " ".join(["v=spf1"] + [f"include:i{n}.example" for n in range(3)])
    prefetch.read("top.example", txt("top.example", top))
    assert len([q for q in zone.asked if q[1] == "A"]) + 3 == TERM_LIMIT
    assert len(zone.asked) == TERM_LIMIT
    assert len(set(zone.asked)) == len(zone.asked)  # each name once


@pytest.mark.parametrize(("exchanges", "looked_up"), [(MX_LIMIT, MX_LIMIT), (MX_LIMIT + 1, 0)])
def test_mx_exchanges_at_most_ten_none_beyond(exchanges: int, looked_up: int) -> None:
    mx: list[Record] = [(("m.example", "MX"), (n, f"x{n}.m.example")) for n in range(exchanges)]
    table: dict[tuple[str, str], list[Record]] = {("m.example", "MX"): mx}
    for n in range(exchanges):
        table[f"x{n}.m.example", "AAAA"] = [((f"x{n}.m.example", "AAAA"), "2001:db8::9")]
    zone = Zone(table)
    prefetcher(zone).start(V6, 10.0).read("top.example", txt("top.example", "v=spf1 mx:m.example"))
    assert len([q for q in zone.asked if q[1] == "AAAA"]) == looked_up


@pytest.mark.parametrize("in_flight", [1, 2, 8])
def test_void_answers_stop_it_as_they_stop_an_evaluation(in_flight: int) -> None:
    # Questions already on their way when the third void answer comes are
    # not called back; none is sent after it.
    zone = Zone({})
    top = " ".join(["v=spf1"] + [f"a:h{k}.example" for k in range(8)])
    prefetch = prefetcher(zone, void_limit=2, in_flight=in_flight).start(V4, 10.0)
    prefetch.read("top.example", txt("top.example", top))
    assert len(zone.asked) == 3


def test_nothing_after_the_deadline_or_the_end_and_nothing_cached() -> None:
    zone = Zone({})
    record = txt("top.example", "v=spf1 a:h.example include:c.example")
    prefetcher(zone, now=5.0).start(V4, 5.0).read("top.example", record)
    closed = prefetcher(zone).start(V4, 10.0)
    closed.close()
    closed.read("top.example", record)
    zone.cache = {("h.example", "A"), ("c.example", "TXT")}
    prefetcher(zone).start(V4, 10.0).read("top.example", record)
    assert zone.asked == []


def test_records_the_evaluation_refuses_ask_nothing() -> None:
    zone = Zone({})
    two = txt("d.example", "v=spf1 a:x.example") + txt("d.example", "v=spf1 a:y.example")
    long = txt("d.example", "v=spf1 a:x.example " + "ip4:192.0.2.1 " * 400)
    for records in (two, long, txt("d.example", "not spf a:x.example")):
        prefetcher(zone).start(V4, 10.0).read("d.example", records)
    assert zone.asked == []


def test_a_broken_lookup_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str, qtype: str, budget: float) -> Sequence[Record]:
        raise RuntimeError("bug")

    prefetch = Prefetcher(
        broken, lambda name, qtype: False, spf_text, Inline(), void_lookup_limit=2
    ).start(V4, float("inf"))
    with caplog.at_level(logging.ERROR, logger="spfmilter.dns"):
        prefetch.read("d.example", txt("d.example", "v=spf1 a:x.example"))
    # One line, naming the question (its traceback attached).
    assert [r.getMessage() for r in caplog.records] == [
        "internal error in the DNS prefetch of x.example A"
    ]
    assert Want("x.example", "A") in prefetch._asked


def test_its_cpu_is_charged_to_the_evaluations_budget() -> None:
    # Each question costs 0.05 s of its thread's CPU: three of them leave
    # the evaluation, which spent nothing itself, over its 0.1 s.
    table = {
        ("d.example", "TXT"): txt("d.example", "v=spf1 a:x.example a:y.example a:z.example -all")
    }
    for host in "xyz":
        table[f"{host}.example", "A"] = [((f"{host}.example", "A"), "192.0.2.9")]
    zone = Zone(table)
    cpu = iter(range(100))
    prefetch = Prefetcher(
        zone.fetch,
        zone.cached,
        spf_text,
        Inline(),
        void_lookup_limit=2,
        cpu_clock=lambda: next(cpu) * 0.05,
    )

    def answers(name: str, qtype: str, budget: float | None) -> tuple[list[Record], float]:
        return table.get((name, qtype), []), float("inf")

    checker = Checker(answers, prefetcher=prefetch, cpu_clock=lambda: 0.0)
    with pyspf_restored():
        checker.install(2)
        query = SpfQuery(Identity.MAIL_FROM, V4, "helo.example", "a@d.example", "mx.test")
        outcome = checker.check(query, 20)
    assert outcome.result is SpfResult.PERMERROR
    assert "needed more than 0.1 s of CPU" in (outcome.problem or "")


def test_the_evaluations_own_first_lookup_is_left_to_it() -> None:
    zone = Zone({})
    prefetch = prefetcher(zone).start(V4, 10.0)
    prefetch.read("d.example", txt("d.example", "v=spf1 a -all"), evaluating=True)
    assert zone.asked == []  # `v=spf1 a -all`: nothing to gain, no thread
    prefetch = prefetcher(zone).start(V4, 10.0)
    record = txt("e.example", "v=spf1 exists:%{i}.e.example mx a:h.example")
    prefetch.read("e.example", record, evaluating=True)
    # A macro comes first: the evaluation waits for it before the others.
    assert zone.asked == [("e.example", "MX"), ("h.example", "A")]


def test_an_mx_answer_the_evaluation_read_brings_its_exchanges_side_by_side() -> None:
    mx: list[Record] = [(("d.example", "MX"), (n, f"x{n}.d.example")) for n in range(3)]
    zone = Zone({})
    prefetch = prefetcher(zone, void_limit=5).start(V4, 10.0)
    prefetch.exchanges("d.example", mx)
    assert zone.asked == []  # an mx term the prefetch did not count
    prefetch.read("d.example", txt("d.example", "v=spf1 mx -all"), evaluating=True)
    prefetch.exchanges("d.example", mx)
    assert zone.asked == [(f"x{n}.d.example", "A") for n in range(3)]


def test_a_redirect_that_is_the_records_first_lookup_is_left_to_the_evaluation() -> None:
    zone = Zone({})
    prefetch = prefetcher(zone).start(V4, 10.0)
    prefetch.read("d.example", txt("d.example", "v=spf1 redirect=r.example"), evaluating=True)
    assert zone.asked == [] and prefetch.asked == 2
    # After a ptr (asked by the evaluation first) the redirect is asked ahead.
    prefetch = prefetcher(zone).start(V4, 10.0)
    prefetch.read("d.example", txt("d.example", "v=spf1 ptr redirect=r.example"), evaluating=True)
    assert zone.asked == [("r.example", "TXT")]


def test_a_name_with_a_trailing_dot_is_the_same_domain() -> None:
    zone = Zone({})
    prefetch = prefetcher(zone).start(V4, 10.0)
    prefetch.read("Top.Example.", txt("top.example", "v=spf1 a mx"))
    assert zone.asked == [("top.example", "A"), ("top.example", "MX")]
    mx: list[Record] = [(("top.example", "MX"), (10, "x.top.example"))]
    prefetch.exchanges("top.example.", mx)
    assert zone.asked[2:] == [("x.top.example", "A")]


def test_the_record_is_judged_as_the_record_of_its_own_domain() -> None:
    zone = Zone({})
    judged: list[str] = []

    def own_record(name: str, records: Sequence[Record]) -> bytes | None:
        judged.append(name)
        return spf_text(name, records)

    prefetch = Prefetcher(
        zone.fetch, zone.cached, own_record, Inline(), void_lookup_limit=2, clock=lambda: 0.0
    ).start(V4, 10.0)
    prefetch.read("d.example", txt("d.example", "v=spf1 a -all"))
    assert judged == ["d.example"] and zone.asked == [("d.example", "A")]


def test_a_record_read_twice_counts_its_terms_once() -> None:
    # The prefetch and then the evaluation read d.example: its five terms
    # leave five for e.example.
    zone = Zone({})
    d = txt("d.example", " ".join(["v=spf1"] + [f"a:h{k}.example" for k in range(5)]))
    prefetch = prefetcher(zone, void_limit=20).start(V4, 10.0)
    prefetch.read("d.example", d)
    prefetch.read("d.example", d, evaluating=True)
    prefetch.read("e.example", txt("e.example", "v=spf1 a:x.example a:y.example"))
    assert zone.asked[-2:] == [("x.example", "A"), ("y.example", "A")]
    assert len(zone.asked) == 7


def test_a_record_already_read_is_not_asked_for_again() -> None:
    zone = Zone({})
    prefetch = prefetcher(zone).start(V4, 10.0)
    prefetch.read("e.example", txt("e.example", "v=spf1 -all"), evaluating=True)
    prefetch.read("d.example", txt("d.example", "v=spf1 include:e.example a:h.example"))
    assert zone.asked == [("h.example", "A")]


def test_exchanges_are_asked_by_preference_then_name() -> None:
    zone = Zone({})
    prefetch = prefetcher(zone, void_limit=5).start(V4, 10.0)
    prefetch.read("d.example", txt("d.example", "v=spf1 mx -all"), evaluating=True)
    mx: list[Record] = [
        (("d.example", "MX"), (20, "a.d.example")),
        (("d.example", "MX"), (10, "c.d.example")),
        (("d.example", "MX"), (10, "b.d.example")),
    ]
    prefetch.exchanges("d.example", mx)
    assert [name for name, _ in zone.asked] == ["b.d.example", "c.d.example", "a.d.example"]


def test_only_mx_records_of_an_answer_are_exchanges() -> None:
    zone = Zone({})
    prefetch = prefetcher(zone, void_limit=5).start(V4, 10.0)
    prefetch.read("d.example", txt("d.example", "v=spf1 mx -all"), evaluating=True)
    answer: list[Record] = [
        (("d.example", "TXT"), (b"v=spf1 -all",)),
        (("d.example", "TXT"), (b"part", b"other.d.example")),
        (("d.example", "MX"), (10, "x.d.example")),
    ]
    prefetch.exchanges("d.example", answer)
    assert zone.asked == [("x.d.example", "A")]
