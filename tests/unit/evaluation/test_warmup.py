"""The warm-up before the privilege drop: what it evaluates, and the watch
that reports a module imported after it."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import spf

from spfmilter.core.model import SpfOutcome, SpfQuery, SpfResult
from spfmilter.evaluation import dnswire, warmup
from spfmilter.evaluation.pyspf import Checker
from tests.support.pyspfstate import pyspf_restored


@pytest.fixture
def evaluated(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[SpfQuery, SpfOutcome]]]:
    """The queries exercise() evaluates with their outcomes (pyspf's
    globals and the garbage collection callbacks restored after)."""
    seen: list[tuple[SpfQuery, SpfOutcome]] = []

    class Recording(Checker):
        def check(self, query: SpfQuery, lookup_time: float) -> SpfOutcome:
            outcome = super().check(query, lookup_time)
            seen.append((query, outcome))
            return outcome

    monkeypatch.setattr(warmup, "Checker", Recording)
    with pyspf_restored():
        yield seen


def test_the_warm_up_walks_every_mechanism_modifier_and_macro(
    evaluated: list[tuple[SpfQuery, SpfOutcome]], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str]] = []
    canned = warmup._canned_answers

    def answers(name: str, qtype: str, budget: float | None) -> object:
        asked.append((name, qtype))
        return canned(name, qtype, budget)

    monkeypatch.setattr(warmup, "_canned_answers", answers)
    warmup.exercise(2)
    assert spf.MAX_VOID_LOOKUPS == 2
    outcomes = [
        (q.identity.value, str(q.client_ip), q.mail_from, o.result, o.mechanism)
        for q, o in evaluated
    ]
    assert outcomes == [
        ("helo", "203.0.113.9", "Alice.Smith@warmup.example", SpfResult.NONE, None),
        ("mailfrom", "203.0.113.9", "Alice.Smith@warmup.example", SpfResult.FAIL, "-all"),
        ("helo", "2001:db8:1::9", "bob@warmup.example", SpfResult.NONE, None),
        ("mailfrom", "2001:db8:1::9", "bob@warmup.example", SpfResult.PASS, "ip6:2001:db8::/32"),
        ("helo", "192.0.2.1", "carol@bücher.example", SpfResult.NONE, None),
        ("mailfrom", "192.0.2.1", "carol@bücher.example", SpfResult.SOFTFAIL, "~all"),
    ]
    # The first MAIL FROM went through a, mx, ptr, exists, include and
    # redirect (to an A-label) before -all, then expanded every macro of
    # its exp= text.
    for lookup in [
        ("warmup.example", "A"),
        ("warmup.example", "MX"),
        ("9.113.0.203.in-addr.arpa", "PTR"),
        ("9.113.0.203.alice.smith.warmup.example", "A"),
        ("inc.warmup.example", "TXT"),
        ("xn--bcher-kva.example", "TXT"),
        ("mail.warmup.example", "A"),
        ("bücher.example", "TXT"),
    ]:
        assert lookup in asked
    explanation = evaluated[1][1].explanation or ""
    i, c, r, _, local, sender, domain, v, p = explanation.split()
    assert (i, c, r, local, sender, domain, v, p) == (
        "203.0.113.9",
        "203.0.113.9",
        "mx.warmup.example",
        "Alice.Smith",
        "Alice.Smith@warmup.example",
        "warmup.example",
        "in-addr",
        "relay.example.net",
    )
    # Each HELO is one of the three kinds: a domain, an address literal, a U-label.
    assert [q.helo for q, _ in evaluated[::2]] == [
        "mail.warmup.example",
        "[2001:db8:1::9]",
        "helo.bücher.example",
    ]
    assert all(q.receiver == "mx.warmup.example" for q, _ in evaluated)


def test_canned_answers_are_found_whatever_the_case_and_hold_forever() -> None:
    records, expiry = warmup._canned_answers("WarmUp.Example", "A", None)
    assert records == [(("warmup.example", "A"), "192.0.2.99")]
    assert expiry == float("inf")
    assert warmup._canned_answers("nothing.example", "A", None) == ([], float("inf"))


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> warmup.ImportWatch:
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    return warmup.ImportWatch()


def test_a_module_imported_late_is_reported_once_and_still_imported(
    watch: warmup.ImportWatch, caplog: pytest.LogCaptureFixture
) -> None:
    watch.install()
    assert sys.meta_path[0] is watch
    with caplog.at_level(logging.WARNING, "spfmilter.warmup"):
        assert watch.find_spec("late.module", None) is None
        assert watch.find_spec("late.module", None) is None
        assert watch.find_spec("other.module", None) is None
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "module late.module imported after start-up: where the installation is "
            "unreadable to the unprivileged user this import fails; please report it",
        ),
        (
            logging.WARNING,
            "module other.module imported after start-up: where the installation is "
            "unreadable to the unprivileged user this import fails; please report it",
        ),
    ]


def test_an_import_made_while_reporting_is_not_reported(
    watch: warmup.ImportWatch, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Logging may import a module itself: reporting that would recurse.
    nested: list[object] = []

    def warning(message: str, *args: object) -> None:
        nested.append(watch.find_spec("imported.by.logging", None))

    monkeypatch.setattr(warmup.log, "warning", warning)
    assert watch.find_spec("late.module", None) is None
    assert nested == [None]
    # Once the report is done, imports are reported again, that one too.
    monkeypatch.undo()
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    with caplog.at_level(logging.WARNING, "spfmilter.warmup"):
        watch.find_spec("imported.by.logging", None)
        watch.find_spec("third.module", None)
    assert [r.args for r in caplog.records] == [("imported.by.logging",), ("third.module",)]


def test_the_warm_up_stops_the_start_when_its_dns_reply_does_not_parse_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parse = dnswire.parse_reply
    message = "^warm-up: the canned DNS reply did not parse$"

    monkeypatch.setattr(dnswire, "parse_reply", lambda *args: None)
    with pytest.raises(RuntimeError, match=message):
        warmup._parse_every_type()

    def one_record_short(*args: Any) -> object:
        reply = parse(*args)
        assert reply is not None
        return dataclasses.replace(reply, answer=reply.answer[1:])

    monkeypatch.setattr(dnswire, "parse_reply", one_record_short)
    with pytest.raises(RuntimeError, match=message):
        warmup._parse_every_type()
    monkeypatch.setattr(dnswire, "parse_reply", parse)
    warmup._parse_every_type()
