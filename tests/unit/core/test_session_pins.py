"""Session behaviour that mutation testing found unpinned: the facts kept
about the connection, what each check is asked (RFC 7208 section 4.1
arguments, the shared DNS budget), the DNS-based skips end to end, the
identities evaluated under helo_check = no and helo_reject_null_sender_only,
where the verdict line gets its queue id and connection number, the header
fields' contents, and MAIL FROM evaluated beside HELO when a background
executor is given (not started yet, dropped when HELO refuses, failing
unused).

A table-driven checker and lookup stand in for pyspf and DNS, executors that
run jobs when the test says for the background threads; no libmilter.
test_session.py holds the session's main paths and
tests/unit/evaluation/test_pool.py the background pool itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import pytest

from spfmilter.config.schema import Config, HeadersConfig, HeaderType, PolicyConfig, SkipConfig
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import (
    Action,
    Connection,
    Identity,
    Macro,
    Skip,
    SkipReason,
    SpfOutcome,
    SpfQuery,
    SpfResult,
    Stage,
)
from spfmilter.core.session import GO_ON, Services, Session
from spfmilter.evaluation.evaluator import Evaluator
from tests.support.fakes import FakeLookup as Lookup
from tests.support.fakes import Held, Immediate

CLIENT = "198.51.100.7"
Results = dict[tuple[Identity, str], SpfResult]


class Checker:
    """Answers from a table (by HELO name or MAIL FROM) and keeps every query
    with the DNS budget it was given; `cost` seconds pass on `clock` per call."""

    def __init__(self, results: Results, clock: list[float]) -> None:
        self.results = results
        self.clock = clock
        self.cost = 0.0
        self.queries: list[tuple[SpfQuery, float]] = []

    def __call__(self, query: SpfQuery, lookup_time: float) -> SpfOutcome:
        self.queries.append((query, lookup_time))
        self.clock[0] += self.cost
        helo = query.identity is Identity.HELO
        subject = query.helo if helo else query.mail_from
        result = self.results.get((query.identity, subject), SpfResult.NONE)
        sender = f"postmaster@{query.helo}" if helo else query.mail_from
        return SpfOutcome(query.identity, result, sender.rpartition("@")[2], sender)

    def identities(self) -> list[Identity]:
        return [query.identity for query, _ in self.queries]


def make(
    config: Config | None = None,
    results: Results | None = None,
    lookup: Lookup | None = None,
    first_id: int = 1,
    background: Executor | None = None,
    known: Callable[[SpfQuery], bool] = lambda query: False,
) -> tuple[Session, Checker, Metrics, list[float]]:
    clock = [1000.0]
    checker = Checker(results or {}, clock)
    metrics = Metrics()
    config = config or Config()
    evaluator = Evaluator(
        checker,
        lookup or Lookup(),
        metrics,
        lookup_time=config.dns.lookup_time,
        known=known,
        background=background,
        clock=lambda: clock[0],
    )
    services = Services(
        evaluator, metrics, host_name="host.example", connection_ids=itertools.count(first_id)
    )
    return Session(config, services), checker, metrics, clock


def start(session: Session, helo: str = "mail.example.org", j: str = "mx") -> None:
    session.connect(ipaddress.ip_address(CLIENT), "ptr.example.net", j)
    session.hello(helo)


def configured(**sections: Any) -> Config:
    return dataclasses.replace(Config(), **sections)


def verdicts(caplog: pytest.LogCaptureFixture) -> list[tuple[object, object]]:
    """(queue id, connection number) of each verdict line, from the fields
    the line carries (the JSON log format writes the same)."""
    found = []
    for record in caplog.records:
        fields = getattr(record, "fields", None)
        if record.levelno == logging.INFO and isinstance(fields, dict):
            found.append((fields["queue_id"], fields["conn"]))
    return found


FAIL = {(Identity.MAIL_FROM, "bad@example.org"): SpfResult.FAIL}


def test_the_connection_keeps_the_client_its_name_and_the_receiver() -> None:
    session, _, _, _ = make()
    start(session)
    assert session.conn == Connection(
        ipaddress.ip_address(CLIENT), "ptr.example.net", "mx", "mail.example.org"
    )


def test_the_receiver_from_the_mta_is_cut_to_a_dns_name_length() -> None:
    session, _, _, _ = make()
    start(session, j="m" * 300)
    assert session.conn is not None and session.conn.receiver == "m" * 250 + "..."


def test_each_check_gets_the_client_helo_sender_and_receiver() -> None:
    # RFC 7208 section 4.1: <ip>, <domain>, <sender>; the receiver fills %{r}.
    # The HELO identity has no MAIL FROM: its query carries "" (SpfQuery).
    session, checker, _, _ = make()
    start(session)
    session.mail("good@example.org", "")
    ip = ipaddress.ip_address(CLIENT)
    assert [query for query, _ in checker.queries] == [
        SpfQuery(Identity.HELO, ip, "mail.example.org", "", "mx"),
        SpfQuery(Identity.MAIL_FROM, ip, "mail.example.org", "good@example.org", "mx"),
    ]


def test_a_spent_budget_still_hands_the_checker_a_positive_time() -> None:
    # pyspf reads a budget of 0 as "no limit": the next check gets a sliver.
    session, checker, _, _ = make()
    checker.cost = 25.0  # more than [dns] lookup_time
    start(session)
    session.mail("good@example.org", "")
    assert [budget for _, budget in checker.queries] == [20.0, 0.001]


def test_helo_check_no_evaluates_only_mail_from() -> None:
    config = configured(policy=PolicyConfig(helo_check=False))
    session, checker, _, _ = make(config, {(Identity.HELO, "mail.example.org"): SpfResult.FAIL})
    start(session)
    assert session.mail("good@example.org", "") == GO_ON
    assert session.rcpt("<a@example.net>") == GO_ON
    assert checker.identities() == [Identity.MAIL_FROM]


def test_helo_results_reject_only_bounces_when_so_configured() -> None:
    config = configured(policy=PolicyConfig(helo_reject_null_sender_only=True))
    results = {(Identity.HELO, "evil.example"): SpfResult.FAIL}
    session, _, _, _ = make(config, results)
    start(session, helo="evil.example")
    session.mail("someone@example.org", "")
    assert session.rcpt("<a@example.net>") == GO_ON
    session.abort("")
    session.mail("", "")
    assert session.rcpt("<a@example.net>").action is Action.REJECT


def test_a_listed_helo_with_a_trailing_dot_that_resolves_to_the_client_is_skipped() -> None:
    lookup = Lookup({("backup.example.net", "A"): [(("backup.example.net", "A"), CLIENT)]})
    config = configured(skip=SkipConfig(helo_names=("backup.example.net",)))
    session, checker, metrics, _ = make(config, FAIL, lookup)
    start(session, helo="Backup.Example.NET.")
    session.mail("bad@example.org", "")
    assert session.rcpt("<a@example.net>") == GO_ON
    session.end_of_message("")
    assert checker.queries == []
    assert metrics.value("spfmilter_skips_total", reason="helo_name") == 1
    # Only what the configured skips need is asked, with the session's budget.
    assert lookup.asked == [("backup.example.net", "A", 20.0)]


def test_a_forwarder_skip_is_a_skip_not_an_accept() -> None:
    config = configured(skip=SkipConfig(forwarder_domains=("fwd.example", "other.example")))
    results = {**FAIL, (Identity.MAIL_FROM, "postmaster@fwd.example"): SpfResult.PASS}
    session, checker, metrics, _ = make(config, results)
    start(session)
    session.mail("bad@example.org", "")
    assert session.end_of_message("").insert == ()
    assert metrics.value("spfmilter_skips_total", reason="forwarder") == 1
    assert [query.mail_from for query, _ in checker.queries] == ["postmaster@fwd.example"]


def test_dns_trouble_while_checking_skips_names_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = configured(skip=SkipConfig(helo_names=("broken.example",)))
    session, _, _, _ = make(config, FAIL, Lookup(), first_id=7)
    start(session, helo="broken.example")
    session.mail("bad@example.org", "")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "conn=7: DNS trouble while checking skips: DNS timeout looking up broken.example A"
    ]


def test_the_verdict_line_names_the_connection_number(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    session, _, _, _ = make(first_id=41)
    start(session)
    session.mail("good@example.org", "")
    session.end_of_message("Q1")
    assert verdicts(caplog) == [("Q1", 41)]


def test_a_refusal_at_mail_is_logged_without_a_queue_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    session, _, _, _ = make(configured(policy=PolicyConfig(reject_stage=Stage.MAIL)), FAIL)
    start(session)
    assert session.mail("bad@example.org", "").action is Action.REJECT
    assert verdicts(caplog) == [("NOQUEUE", 1)]  # as Postfix says before a queue id


@pytest.mark.parametrize("end", ["abort", "close"])
def test_a_transaction_ended_early_is_logged_with_the_queue_id_given(
    end: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    session, _, _, _ = make()
    start(session)
    session.mail("good@example.org", "")
    ending: Callable[[str], None] = getattr(session, end)
    ending("4XyZ9")
    assert verdicts(caplog) == [("4XyZ9", 1)]


def test_the_headers_carry_helo_and_client_and_hide_the_receiver_when_asked() -> None:
    both = HeadersConfig(type=HeaderType.BOTH, hide_receiver=True, authserv_id="mx.example.net")
    passing = {(Identity.MAIL_FROM, "good@example.org"): SpfResult.PASS}
    session, _, _, _ = make(configured(headers=both), passing)
    start(session)
    session.mail("good@example.org", "")
    (_, received), (_, results) = session.end_of_message("").insert
    comment = (
        "(example.org: 198.51.100.7 is authorized to use 'good@example.org' in 'mfrom' identity)"
    )
    assert " ".join(received.split()) == (
        f"pass {comment} identity=mailfrom; "
        'envelope-from="good@example.org"; helo=mail.example.org; client-ip=198.51.100.7'
    )
    assert " ".join(results.split()) == (
        f"mx.example.net; spf=pass {comment} smtp.mailfrom=example.org"
    )


# --- MAIL FROM evaluated beside HELO (Services.background) ------------------------


def test_mail_from_runs_in_the_background_once_and_decides() -> None:
    background = Immediate()
    session, checker, _, _ = make(results=FAIL, background=background)
    start(session)
    session.mail("bad@example.org", "")
    assert len(background.jobs) == 1
    assert sorted(checker.identities()) == [Identity.HELO, Identity.MAIL_FROM]
    assert session.rcpt("<a@example.net>").action is Action.REJECT
    # HELO is known for the next transaction: nothing runs beside it.
    session.abort("")
    session.mail("good@example.org", "")
    assert len(background.jobs) == 1 and len(checker.queries) == 3


@pytest.mark.parametrize(
    ("config", "mail_from"),
    [
        (configured(policy=PolicyConfig(helo_check=False)), "good@example.org"),
        (Config(), ""),  # the null sender: HELO is its only identity
    ],
)
def test_nothing_runs_in_the_background_when_one_identity_is_evaluated(
    config: Config, mail_from: str
) -> None:
    background = Immediate()
    session, checker, _, _ = make(config, background=background)
    start(session)
    session.mail(mail_from, "")
    assert background.jobs == [] and len(checker.queries) == 1


@pytest.mark.parametrize("cached", [Identity.HELO, Identity.MAIL_FROM])
def test_nothing_runs_in_the_background_when_a_result_is_known_already(
    cached: Identity,
) -> None:
    # A kept result answers at once: there is nothing to overlap.
    asked: list[SpfQuery] = []

    def known(query: SpfQuery) -> bool:
        asked.append(query)
        return query.identity is cached

    background = Immediate()
    session, _, _, _ = make(background=background, known=known)
    start(session)
    session.mail("good@example.org", "")
    assert background.jobs == []
    ip = ipaddress.ip_address(CLIENT)
    helo = SpfQuery(Identity.HELO, ip, "mail.example.org", "", "mx")
    mail_from = SpfQuery(Identity.MAIL_FROM, ip, "mail.example.org", "good@example.org", "mx")
    assert asked == ([helo] if cached is Identity.HELO else [helo, mail_from])


def test_a_background_evaluation_not_started_yet_is_done_in_the_callback() -> None:
    # Every background thread busy: MAIL FROM is evaluated here, once.
    background = Held()
    session, checker, _, _ = make(results=FAIL, background=background)
    start(session)
    session.mail("bad@example.org", "")
    ((future, _),) = background.jobs
    assert future.cancelled()
    assert checker.identities() == [Identity.HELO, Identity.MAIL_FROM]
    assert session.rcpt("<a@example.net>").action is Action.REJECT


def test_when_helo_refuses_a_queued_mail_from_evaluation_is_dropped() -> None:
    background = Held()
    results = {(Identity.HELO, "evil.example"): SpfResult.FAIL}
    session, checker, _, _ = make(results=results, background=background)
    start(session, helo="evil.example")
    session.mail("good@example.org", "")
    ((future, _),) = background.jobs
    assert future.cancelled() and checker.identities() == [Identity.HELO]
    assert session.rcpt("<a@example.net>").action is Action.REJECT


def helo_refusing_with_mail_from_running() -> tuple[Session, Held, Metrics]:
    background = Held(started=True)
    results = {(Identity.HELO, "evil.example"): SpfResult.FAIL}
    session, _, metrics, _ = make(results=results, background=background)
    start(session, helo="evil.example")
    session.mail("good@example.org", "")
    assert session.rcpt("<a@example.net>").action is Action.REJECT
    return session, background, metrics


def test_an_unused_mail_from_evaluation_that_fails_is_still_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, background, metrics = helo_refusing_with_mail_from_running()
    ((future, _),) = background.jobs
    error = RuntimeError("bug in an evaluation")
    future.set_exception(error)
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "internal error in a MAIL FROM evaluation: conn=1"
    assert record.exc_info is not None and record.exc_info[:2] == (RuntimeError, error)
    assert metrics.value("spfmilter_internal_errors_total") == 1


def test_an_unused_mail_from_evaluation_that_succeeds_is_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, background, metrics = helo_refusing_with_mail_from_running()
    background.finish()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert metrics.value("spfmilter_internal_errors_total") == 0


def test_the_macros_the_mta_sent_reach_the_skip() -> None:
    config = configured(skip=SkipConfig(macros=(Macro("{daemon_name}", "ORIGINATING"),)))
    session, checker, _, _ = make(config, FAIL)
    start(session)
    sent = (Macro("{daemon_name}", "ORIGINATING"),)
    assert session.mail("bad@example.org", "", sent) == GO_ON
    assert session.transaction is not None
    assert session.transaction.decision.skip == Skip(SkipReason.MACRO, "{daemon_name}=ORIGINATING")
    assert checker.queries == []


def test_mail_without_helo_checks_what_there_is() -> None:
    # Postfix accepts MAIL without HELO unless smtpd_helo_required is set.
    session, checker, _, _ = make(results=FAIL)
    session.connect(ipaddress.ip_address(CLIENT), "ptr.example.net", "mx")
    assert session.mail("good@example.org", "") == GO_ON
    assert session.rcpt("<a@example.net>") == GO_ON
    assert [(query.identity, query.helo) for query, _ in checker.queries] == [
        (Identity.HELO, ""),
        (Identity.MAIL_FROM, ""),
    ]
