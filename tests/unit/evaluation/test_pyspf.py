"""The checker against an injected lookup (no network): pyspf wired right."""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import time
from collections.abc import Callable, Iterator

import pytest

from spfmilter.core.metrics import Metrics
from spfmilter.core.model import Identity, SpfOutcome, SpfQuery, SpfResult
from spfmilter.evaluation.pyspf import (
    MAX_EXPLANATION_LENGTH,
    MAX_RECORD_LENGTH,
    MAX_TERM_LENGTH,
    Checker,
)
from spfmilter.evaluation.resolver import DnsLimitError, DnsTempError, Record
from tests.support.fakes import Clock
from tests.support.pyspfstate import pyspf_restored

ZONE: dict[tuple[str, str], list[Record]] = {
    ("example.org", "TXT"): [(("example.org", "TXT"), [b"v=spf1 ip4:198.51.100.0/24 -all"])],
    ("exp.example.org", "TXT"): [
        (("exp.example.org", "TXT"), [b"v=spf1 -all exp=why.example.org"])
    ],
    ("why.example.org", "TXT"): [(("why.example.org", "TXT"), [b"%{i} may not send"])],
    ("mail.example.org", "TXT"): [(("mail.example.org", "TXT"), [b"v=spf1 a -all"])],
    ("mail.example.org", "A"): [(("mail.example.org", "A"), "198.51.100.7")],
    ("broken.example.org", "TXT"): [(("broken.example.org", "TXT"), [b"v=spf1 moo -all"])],
}
asked: list[tuple[str, str]] = []


def fake_lookup(name: str, qtype: str, budget: float | None) -> list[Record]:
    asked.append((name, qtype))
    if name.startswith("slow."):
        raise DnsTempError(f"DNS timeout looking up {name} {qtype}")
    if name.startswith("huge."):
        raise DnsLimitError(f"DNS answer for {name} {qtype} has 4000 records")
    return ZONE.get((name, qtype), [])


class CpuClock:
    """A thread CPU clock that advances by `step` at every reading."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def answers(
    lookup: Callable[[str, str, float | None], list[Record]], ttl: float = float("inf")
) -> Callable[[str, str, float | None], tuple[list[Record], float]]:
    """A lookup that also says until when its records hold."""
    return lambda name, qtype, budget: (lookup(name, qtype, budget), ttl)


CHECKER = Checker(answers(fake_lookup))


@pytest.fixture(autouse=True)
def _installed() -> Iterator[None]:
    with pyspf_restored():
        CHECKER.install(2)
        asked.clear()
        yield


def query(
    identity: Identity,
    mail_from: str = "",
    helo: str = "mail.example.org",
    ip: str = "198.51.100.7",
) -> SpfQuery:
    return SpfQuery(identity, ipaddress.ip_address(ip), helo, mail_from, "mx.test.example")


def run(
    identity: Identity,
    mail_from: str = "",
    helo: str = "mail.example.org",
    ip: str = "198.51.100.7",
) -> SpfOutcome:
    return CHECKER.check(query(identity, mail_from, helo, ip), 5)


def test_pass_with_mechanism_and_domain() -> None:
    out = run(Identity.MAIL_FROM, "a@example.org")
    assert (out.result, out.domain, out.mechanism, out.sender) == (
        SpfResult.PASS,
        "example.org",
        "ip4:198.51.100.0/24",
        "a@example.org",
    )
    assert out.explanation is None and out.problem is None


def test_fail_keeps_only_the_domains_own_explanation() -> None:
    assert run(Identity.MAIL_FROM, "a@example.org", ip="203.0.113.5").explanation is None
    out = run(Identity.MAIL_FROM, "a@exp.example.org", ip="203.0.113.5")
    assert (out.result, out.explanation) == (SpfResult.FAIL, "203.0.113.5 may not send")


def test_helo_identity_uses_postmaster_at_helo() -> None:
    out = run(Identity.HELO)
    assert (out.result, out.sender, out.domain) == (
        SpfResult.PASS,
        "postmaster@mail.example.org",
        "mail.example.org",
    )


@pytest.mark.parametrize(
    "helo", ["[198.51.100.7]", "", "localhost", "bad..name", "x" * 70 + ".org"]
)
def test_helo_that_is_not_a_domain_is_none_without_dns(helo: str) -> None:
    out = run(Identity.HELO, helo=helo)
    assert out.result is SpfResult.NONE
    assert asked == []


def test_dns_trouble_is_temperror_and_syntax_is_permerror() -> None:
    out = run(Identity.MAIL_FROM, "a@slow.example.org")
    assert out.result is SpfResult.TEMPERROR
    assert "DNS timeout" in (out.problem or "")
    out = run(Identity.MAIL_FROM, "a@broken.example.org")
    assert out.result is SpfResult.PERMERROR
    assert "moo" in (out.problem or "")


def test_no_record_is_none() -> None:
    assert run(Identity.MAIL_FROM, "a@nothing.example").result is SpfResult.NONE


def test_answers_refused_by_the_resolver_are_permerror() -> None:
    out = run(Identity.MAIL_FROM, "a@huge.example.org")
    assert out.result is SpfResult.PERMERROR
    assert "4000 records" in (out.problem or "")


def txt(name: str, *strings: bytes) -> None:
    ZONE[name, "TXT"] = [((name, "TXT"), list(strings))]


def test_record_length_limit() -> None:
    # RFC 7208 section 6: unknown modifiers are ignored; they pad the record.
    longest = b"v=spf1 ip4:198.51.100.0/24 -all"
    number = 0
    while len(longest) < MAX_RECORD_LENGTH:
        pad = b" p%d=" % number
        longest += pad + b"x" * min(200, MAX_RECORD_LENGTH - len(longest) - len(pad))
        number += 1
    assert len(longest) == MAX_RECORD_LENGTH
    txt("long.example.org", longest[:255], longest[255:])
    assert run(Identity.MAIL_FROM, "a@long.example.org").result is SpfResult.PASS
    txt("toolong.example.org", longest + b"x")
    out = run(Identity.MAIL_FROM, "a@toolong.example.org")
    assert out.result is SpfResult.PERMERROR
    assert f"{MAX_RECORD_LENGTH + 1} characters" in (out.problem or "")


@pytest.mark.parametrize(
    "term",
    [b"a:x.", b"mx:", b"?include:", b"-exists:%{i}.", b"redirect=", b"exp=", b"ptr:"],
)
def test_labels_longer_than_63_are_refused_before_pyspf_parses_them(term: bytes) -> None:
    label = b"a" * 64
    txt("label.example.org", b"v=spf1 " + term + label + b".example -all")
    out = run(Identity.MAIL_FROM, "a@label.example.org", ip="203.0.113.5")
    assert out.result is SpfResult.PERMERROR
    assert "label longer than 63" in (out.problem or "")
    txt("label.example.org", b"v=spf1 " + term + label[1:] + b".example -all")
    out = run(Identity.MAIL_FROM, "a@label.example.org", ip="203.0.113.5")
    assert "label longer than 63" not in (out.problem or "")


def test_term_length_limit() -> None:
    longest = b"a:%{l}" + b".a" * ((MAX_TERM_LENGTH - 6) // 2)
    assert len(longest) == MAX_TERM_LENGTH
    txt("term.example.org", b"v=spf1 " + longest + b" -all")
    out = run(Identity.MAIL_FROM, "a@term.example.org", ip="203.0.113.5")
    assert out.result is SpfResult.FAIL
    txt("term.example.org", b"v=spf1 " + longest + b".a -all")
    out = run(Identity.MAIL_FROM, "a@term.example.org", ip="203.0.113.5")
    assert out.result is SpfResult.PERMERROR
    assert f"term longer than {MAX_TERM_LENGTH}" in (out.problem or "")


def test_a_62_kb_label_is_refused_at_once() -> None:
    # The record that froze the daemon for 55 s (pyspf's quadratic check).
    record = b"v=spf1 a:x." + b"a" * 62000 + b"_ -all"
    txt("freeze.example.org", *(record[i : i + 255] for i in range(0, len(record), 255)))
    started = time.process_time()
    out = run(Identity.MAIL_FROM, "a@freeze.example.org")
    assert out.result is SpfResult.PERMERROR
    assert time.process_time() - started < 1


def test_long_explanations_are_dropped() -> None:
    txt("fails.example.org", b"v=spf1 -all exp=why.fails.example.org")
    txt("why.fails.example.org", b"x" * MAX_EXPLANATION_LENGTH)
    out = run(Identity.MAIL_FROM, "a@fails.example.org", ip="203.0.113.5")
    assert (out.result, out.explanation) == (SpfResult.FAIL, "x" * MAX_EXPLANATION_LENGTH)
    txt("why.fails.example.org", b"x." * (MAX_EXPLANATION_LENGTH // 2 + 1))
    out = run(Identity.MAIL_FROM, "a@fails.example.org", ip="203.0.113.5")
    assert (out.result, out.explanation) == (SpfResult.FAIL, None)


def test_non_spf_text_at_the_domain_does_not_matter() -> None:
    ZONE["mixed.example.org", "TXT"] = [
        (("mixed.example.org", "TXT"), [b"verification=" + b"z" * 5000]),
        (("mixed.example.org", "TXT"), [b"v=spf1 ip4:198.51.100.0/24 -all"]),
    ]
    assert run(Identity.MAIL_FROM, "a@mixed.example.org").result is SpfResult.PASS


def test_cpu_budget_stops_an_evaluation_at_its_next_lookup() -> None:
    txt("chain.example.org", b"v=spf1 include:example.org include:mail.example.org -all")
    # Each reading of the CPU clock advances 40 ms: the budget of 100 ms is
    # gone by the third lookup.
    slow = Checker(answers(fake_lookup), cpu_clock=CpuClock(0.04))
    slow.install(2)
    query = SpfQuery(
        Identity.MAIL_FROM,
        ipaddress.ip_address("203.0.113.5"),
        "mail.example.org",
        "a@chain.example.org",
        "mx",
    )
    out = slow.check(query, 5)
    assert out.result is SpfResult.PERMERROR
    assert "more than 0.1 s of CPU" in (out.problem or "")
    # The same evaluation within its budget passes the deadline check.
    assert run(Identity.MAIL_FROM, "a@chain.example.org", ip="203.0.113.5").result is (
        SpfResult.FAIL
    )


def test_garbage_collection_does_not_count_against_the_budget() -> None:
    # A collection runs in whichever thread triggers it; here one that takes
    # 0.3 s of CPU happens during an evaluation, which must not fail for it.
    clock = CpuClock(0.0)
    checker = Checker(answers(fake_lookup), cpu_clock=clock)
    checker.install(2)

    def slow_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            clock.now += 0.3

    gc.callbacks.append(slow_collection)
    try:

        def collecting_lookup(name: str, qtype: str, budget: float | None) -> list[Record]:
            gc.collect()
            return fake_lookup(name, qtype, budget)

        checker._answers = answers(collecting_lookup)
        txt("gc.example.org", b"v=spf1 include:example.org include:mail.example.org -all")
        query = SpfQuery(
            Identity.MAIL_FROM,
            ipaddress.ip_address("203.0.113.5"),
            "mail.example.org",
            "a@gc.example.org",
            "mx",
        )
        assert checker.check(query, 5).result is SpfResult.FAIL
    finally:
        gc.callbacks.remove(slow_collection)


def kept_checker(clock: Clock, expiry: float) -> tuple[Checker, list[tuple[str, str]], Metrics]:
    """A checker keeping results, over answers that hold until `expiry`."""
    calls: list[tuple[str, str]] = []

    def counted(name: str, qtype: str, budget: float | None) -> tuple[list[Record], float]:
        calls.append((name, qtype))
        if name.startswith("slow."):
            raise DnsTempError(f"DNS timeout looking up {name} {qtype}")
        return ZONE.get((name, qtype), []), expiry

    metrics = Metrics()
    checker = Checker(counted, metrics=metrics, results_bytes=1 << 20, clock=clock)
    checker.install(2)
    return checker, calls, metrics


def mail_from(sender: str, ip: str = "198.51.100.7") -> SpfQuery:
    return SpfQuery(Identity.MAIL_FROM, ipaddress.ip_address(ip), "mail.example.org", sender, "mx")


def test_results_are_reused_until_the_shortest_ttl_runs_out() -> None:
    clock = Clock()
    checker, calls, metrics = kept_checker(clock, expiry=clock.now + 300)
    first = checker.check(mail_from("a@example.org"), 5)
    assert first.result is SpfResult.PASS and calls == [("example.org", "TXT")]
    again = checker.check(mail_from("a@example.org"), 5)
    assert again == dataclasses.replace(first, lookup_seconds=0.0)
    assert len(calls) == 1
    assert metrics.value("spfmilter_result_cache_hits_total") == 1
    assert metrics.value("spfmilter_result_cache_misses_total") == 1
    # Another client, another sender: other queries, evaluated afresh.
    checker.check(mail_from("a@example.org", ip="203.0.113.5"), 5)
    checker.check(mail_from("b@example.org"), 5)
    assert len(calls) == 3
    clock.now += 299
    checker.check(mail_from("a@example.org"), 5)
    assert len(calls) == 3
    clock.now += 2  # the record it came from has expired
    checker.check(mail_from("a@example.org"), 5)
    assert len(calls) == 4


def test_temperrors_and_stopped_evaluations_are_not_kept() -> None:
    clock = Clock()
    checker, calls, _ = kept_checker(clock, expiry=clock.now + 300)
    for _ in range(2):
        assert checker.check(mail_from("a@slow.example.org"), 5).result is SpfResult.TEMPERROR
    assert len(calls) == 2
    stopped = Checker(answers(fake_lookup), results_bytes=1 << 20, cpu_clock=CpuClock(0.04))
    stopped.install(2)
    txt("chain.example.org", b"v=spf1 include:example.org include:mail.example.org -all")
    query = mail_from("a@chain.example.org", ip="203.0.113.5")
    assert stopped.check(query, 5).result is SpfResult.PERMERROR
    asked.clear()
    stopped.check(query, 5)
    assert asked  # evaluated again: the stop said something about the load, not DNS


def test_results_without_cache_room_are_not_kept() -> None:
    checker = Checker(answers(fake_lookup))
    checker.install(2)
    checker.check(mail_from("a@example.org"), 5)
    asked.clear()
    checker.check(mail_from("a@example.org"), 5)
    assert asked == [("example.org", "TXT")]


def test_a_lookup_that_uses_up_the_budget_stops_the_evaluation() -> None:
    # The lookup parses its answer in the evaluating thread: its CPU counts
    # even when no lookup follows it.
    clock = CpuClock(0.0)

    def costly(name: str, qtype: str, budget: float | None) -> list[Record]:
        clock.now += 0.5
        return fake_lookup(name, qtype, budget)

    checker = Checker(answers(costly), results_bytes=1 << 20, cpu_clock=clock)
    checker.install(2)
    query = mail_from("a@example.org")
    out = checker.check(query, 5)
    assert out.result is SpfResult.PERMERROR
    assert "more than 0.1 s of CPU" in (out.problem or "")
    assert not checker.known(query)  # a verdict of the load: not kept


def test_a_refusal_is_kept_no_longer_than_the_answer_refused() -> None:
    # A refused answer of TTL 0: the permerror is not kept, the next
    # evaluation asks again (and may see mended data).
    clock = Clock()
    calls: list[str] = []

    def refusing(name: str, qtype: str, budget: float | None) -> tuple[list[Record], float]:
        calls.append(name)
        raise DnsLimitError(f"DNS answer for {name} {qtype} has more than 256 records", clock.now)

    checker = Checker(refusing, results_bytes=1 << 20, clock=clock)
    checker.install(2)
    for _ in range(2):
        assert checker.check(mail_from("a@many.example"), 5).result is SpfResult.PERMERROR
    assert calls == ["many.example", "many.example"]


@pytest.mark.parametrize(
    ("record", "result", "explanation"),
    [
        (b"v=spf1 REDIRECT=example.org", SpfResult.FAIL, None),
        (b"v=spf1 Redirect=exp.example.org", SpfResult.FAIL, "203.0.113.5 may not send"),
        (b"v=spf1 -all EXP=why.example.org", SpfResult.FAIL, "203.0.113.5 may not send"),
    ],
)
def test_modifier_names_are_case_insensitive(
    record: bytes, result: SpfResult, explanation: str | None
) -> None:
    # RFC 7208 section 4.6.1.  pyspf alone gives neutral for the first two
    # (an unknown modifier, ignored) and no explanation for the third.
    txt("case.example.org", record)
    out = run(Identity.MAIL_FROM, "a@case.example.org", ip="203.0.113.5")
    assert (out.result, out.explanation) == (result, explanation)


def test_only_modifier_names_change_in_what_pyspf_reads() -> None:
    record = b"v=spf1 a:%{L}.Example.ORG foo=REDIRECT=x EXP=%{D}.Why.example REDIRECT=A.example"
    txt("kept.example.org", record[:20], record[20:])
    (value,) = [value for _, value in CHECKER.pyspf_lookup("kept.example.org", "TXT", 0, 5)]
    assert value == (
        b"v=spf1 a:%{L}.Example.ORG foo=REDIRECT=x exp=%{D}.Why.example redirect=A.example",
    )
    # Records already in lower case, other texts and other types are passed as they are.
    for name, qtype in (
        ("example.org", "TXT"),
        ("why.example.org", "TXT"),
        ("mail.example.org", "A"),
    ):
        assert CHECKER.pyspf_lookup(name, qtype, 0, 5) == ZONE[name, qtype]
