"""Pinned edge cases of the pyspf adapter: what reaches pyspf, what comes
back, and how long an outcome is kept."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from collections.abc import Iterator, Sequence
from typing import cast

import pytest
import spf

from spfmilter.core.metrics import Metrics
from spfmilter.core.model import Identity, SpfOutcome, SpfResult
from spfmilter.evaluation.prefetch import Prefetcher
from spfmilter.evaluation.pyspf import MAX_LABEL_LENGTH, MAX_TERM_LENGTH, Checker, spf_text
from spfmilter.evaluation.resolver import Record
from tests.support.fakes import Clock
from tests.support.pyspfstate import pyspf_restored
from tests.unit.evaluation.test_pyspf import ZONE, CpuClock, answers, fake_lookup, query, txt


@pytest.fixture(autouse=True)
def _pyspf_globals() -> Iterator[None]:
    with pyspf_restored():
        yield


def test_a_helo_that_is_no_domain_is_none_for_that_helo() -> None:
    checker = Checker(answers(fake_lookup))
    helo = query(Identity.HELO, helo="[198.51.100.7]")
    assert checker.check(helo, 5) == SpfOutcome(
        Identity.HELO, SpfResult.NONE, "[198.51.100.7]", "postmaster@[198.51.100.7]"
    )


def test_the_helo_identity_checks_the_helo_whatever_the_mail_from() -> None:
    # RFC 7208 section 2.3: the HELO identity is checked with
    # postmaster@<helo>, never with the transaction's sender.
    checker = Checker(answers(fake_lookup))
    checker.install(2)
    out = checker.check(query(Identity.HELO, "a@example.org", ip="203.0.113.5"), 5)
    assert (out.identity, out.result, out.domain, out.sender) == (
        Identity.HELO,
        SpfResult.FAIL,
        "mail.example.org",
        "postmaster@mail.example.org",
    )
    out = checker.check(query(Identity.MAIL_FROM, "a@example.org", ip="203.0.113.5"), 5)
    assert (out.identity, out.domain) == (Identity.MAIL_FROM, "example.org")


def test_the_receiver_is_the_querys() -> None:
    # %{r} (RFC 7208 section 7.3) expands to the receiving MTA's name.
    txt("receiver.example.org", b"v=spf1 -all exp=why.receiver.example.org")
    txt("why.receiver.example.org", b"refused by %{r}")
    checker = Checker(answers(fake_lookup))
    checker.install(2)
    out = checker.check(query(Identity.MAIL_FROM, "a@receiver.example.org"), 5)
    assert out.explanation == "refused by mx.test.example"


def test_each_lookup_gets_what_is_left_of_the_lookup_time() -> None:
    budgets: list[float | None] = []

    def timed(name: str, qtype: str, budget: float | None) -> list[Record]:
        budgets.append(budget)
        return fake_lookup(name, qtype, budget)

    checker = Checker(answers(timed))
    checker.install(2)
    checker.check(query(Identity.MAIL_FROM, "a@example.org"), 3)
    assert budgets and all(b is not None and 0 < b <= 3 for b in budgets)


def test_the_evaluations_time_is_reported_and_not_kept() -> None:
    clock = CpuClock(0.25)
    checker = Checker(answers(fake_lookup), results_bytes=1 << 20, clock=clock)
    checker.install(2)
    first = checker.check(query(Identity.MAIL_FROM, "a@example.org"), 5)
    # check() reads the clock when it starts, the evaluation when pyspf is done.
    assert first.lookup_seconds == 0.25
    again = checker.check(query(Identity.MAIL_FROM, "a@example.org"), 5)
    assert again == dataclasses.replace(first, lookup_seconds=0.0)


def test_a_checker_without_result_room_counts_no_result_cache_use() -> None:
    metrics = Metrics()
    checker = Checker(answers(fake_lookup), metrics=metrics)
    checker.install(2)
    checker.check(query(Identity.MAIL_FROM, "a@example.org"), 5)
    assert metrics.value("spfmilter_result_cache_misses_total") == 0
    assert metrics.value("spfmilter_result_cache_hits_total") == 0


def test_known_answers_only_what_check_can_answer_without_dns() -> None:
    clock = Clock()
    checker = Checker(answers(fake_lookup), results_bytes=1 << 20, clock=clock)
    checker.install(2)
    assert checker.known(query(Identity.HELO, helo="[198.51.100.7]"))
    assert not checker.known(query(Identity.HELO))
    # A HELO that is no domain says nothing about the MAIL FROM identity.
    assert not checker.known(query(Identity.MAIL_FROM, "a@example.org", helo="[198.51.100.7]"))
    kept = query(Identity.MAIL_FROM, "a@example.org")
    assert not checker.known(kept)
    checker.check(kept, 5)
    assert checker.known(kept)
    assert not checker.known(query(Identity.MAIL_FROM, "b@example.org"))
    without_room = Checker(answers(fake_lookup))
    without_room.install(2)
    without_room.check(kept, 5)
    assert not without_room.known(kept)


def test_an_outcome_is_kept_until_the_first_of_its_records_expires() -> None:
    clock = Clock()
    expiries = {"chain.example.org": clock.now + 600, "example.org": clock.now + 60}
    calls: list[str] = []

    def expiring(name: str, qtype: str, budget: float | None) -> tuple[list[Record], float]:
        calls.append(name)
        return fake_lookup(name, qtype, budget), expiries.get(name, clock.now + 900)

    txt("chain.example.org", b"v=spf1 include:example.org include:mail.example.org -all")
    checker = Checker(expiring, results_bytes=1 << 20, clock=clock)
    checker.install(2)
    chain = query(Identity.MAIL_FROM, "a@chain.example.org", ip="203.0.113.5")
    checker.check(chain, 5)
    assert calls[0] == "chain.example.org" and "example.org" in calls
    clock.now += 59
    assert checker.known(chain)
    clock.now += 2
    assert not checker.known(chain)


def test_lookups_outside_an_evaluation_are_answered() -> None:
    # pyspf_lookup in a thread that never ran check(): no per-thread state yet.
    checker = Checker(answers(fake_lookup))
    got: list[object] = []
    thread = threading.Thread(
        target=lambda: got.append(checker.pyspf_lookup("example.org", "TXT", 0, 5))
    )
    thread.start()
    thread.join(5)
    assert got == [ZONE["example.org", "TXT"]]


def test_records_of_the_spf_type_get_the_same_limits_and_spelling() -> None:
    # pyspf asks for type SPF (RFC 4408's type 99) in its strict mode.
    spf_type: dict[tuple[str, str], list[Record]] = {
        ("case.example.org", "SPF"): [(("case.example.org", "SPF"), [b"v=spf1 REDIRECT=x.org"])],
        ("long.example.org", "SPF"): [
            (("long.example.org", "SPF"), [b"v=spf1 a:" + b"a" * MAX_TERM_LENGTH])
        ],
    }
    checker = Checker(answers(lambda name, qtype, budget: spf_type.get((name, qtype), [])))
    assert checker.pyspf_lookup("case.example.org", "SPF", 0, 5) == [
        (("case.example.org", "SPF"), (b"v=spf1 redirect=x.org",))
    ]
    with pytest.raises(spf.PermError, match=r"long\.example\.org has a term longer"):
        checker.pyspf_lookup("long.example.org", "SPF", 0, 5)


def test_records_of_other_types_in_a_text_answer_are_passed_on() -> None:
    # An answer may hold the CNAME it followed besides the TXT records.
    answer: list[Record] = [
        (("alias.example.org", "CNAME"), "example.org"),
        (("example.org", "TXT"), [b"v=spf1 REDIRECT=x.org"]),
    ]
    checker = Checker(answers(lambda name, qtype, budget: answer))
    assert checker.pyspf_lookup("alias.example.org", "TXT", 0, 5) == [
        answer[0],
        (("example.org", "TXT"), (b"v=spf1 redirect=x.org",)),
    ]


@pytest.mark.parametrize(
    ("term", "message"),
    [
        (
            "a:" + "é" * MAX_TERM_LENGTH,
            f"has a term longer than {MAX_TERM_LENGTH} characters: ",
        ),
        ("a:" + "é" * (MAX_LABEL_LENGTH + 1), f"has a label longer than {MAX_LABEL_LENGTH} "),
    ],
)
def test_a_refused_term_is_quoted_in_ascii_at_most_60_bytes(term: str, message: str) -> None:
    raw = term.encode()
    checker = Checker(
        answers(lambda name, qtype, budget: [((name, "TXT"), [b"v=spf1 " + raw + b" -all"])])
    )
    with pytest.raises(spf.PermError) as info:
        checker.pyspf_lookup("utf8.example.org", "TXT", 0, 5)
    quoted = repr(raw[:60].decode("ascii", "replace"))
    assert f"SPF record of utf8.example.org {message}" in str(info.value)
    assert quoted in str(info.value)
    assert repr(raw[:61].decode("ascii", "replace")) not in str(info.value)


def test_the_spf_text_read_past_a_cname_joins_its_strings_as_they_are() -> None:
    # RFC 7208 section 3.3: the strings of one TXT record are joined with
    # nothing between them; the answer may start with the CNAME chain.
    records: list[Record] = [
        (("alias.example", "CNAME"), "spf.example"),
        (("spf.example", "TXT"), (b"v=spf1 ip4:192.0.2.0/24", b" -all")),
    ]
    assert spf_text("alias.example", records) == b"v=spf1 ip4:192.0.2.0/24 -all"


class RecordingPrefetch:
    """A prefetch that notes what the evaluation tells it."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, bool]] = []
        self.exchanges_read: list[str] = []
        self.cpu_seconds = 0.0
        self.closed = False

    def read(self, name: str, records: Sequence[Record], *, evaluating: bool = False) -> None:
        self.reads.append((name, evaluating))

    def exchanges(self, name: str, records: Sequence[Record]) -> None:
        self.exchanges_read.append(name)

    def close(self) -> None:
        self.closed = True


class RecordingPrefetcher:
    def __init__(self) -> None:
        self.started: list[tuple[object, float]] = []
        self.prefetch = RecordingPrefetch()

    def start(self, client_ip: object, deadline: float) -> RecordingPrefetch:
        self.started.append((client_ip, deadline))
        return self.prefetch


MX_ZONE: dict[tuple[str, str], list[Record]] = {
    ("mx.example", "TXT"): [(("mx.example", "TXT"), (b"v=spf1 mx -all",))],
    ("mx.example", "MX"): [(("mx.example", "MX"), (10, "mail.mx.example"))],
    ("mail.mx.example", "A"): [(("mail.mx.example", "A"), "198.51.100.7")],
}


def test_the_evaluation_tells_its_prefetch_what_it_reads_and_when_it_ends() -> None:
    prefetcher = RecordingPrefetcher()
    checker = Checker(
        answers(lambda name, qtype, budget: MX_ZONE.get((name, qtype), [])),
        prefetcher=cast(Prefetcher, prefetcher),
        clock=lambda: 100.0,
    )
    checker.install(2)  # pyspf's globals are restored by the fixture above
    outcome = checker.check(query(Identity.MAIL_FROM, "a@mx.example"), 7)
    assert outcome.result is SpfResult.PASS
    # Started for this client, ending with the evaluation's lookup time.
    assert prefetcher.started == [(ipaddress.ip_address("198.51.100.7"), 107.0)]
    # The record read by the evaluation, which asks its first lookup itself.
    assert prefetcher.prefetch.reads == [("mx.example", True)]
    assert prefetcher.prefetch.exchanges_read == ["mx.example"]
    assert prefetcher.prefetch.closed
