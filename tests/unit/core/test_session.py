"""The Session driven with plain values: a recording checker, no libmilter, no DNS."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from spfmilter.config.orgdomain import PublicSuffixes
from spfmilter.config.schema import Config, HeadersConfig, HeaderType, PolicyConfig, SkipConfig
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import (
    Action,
    HeaderChanges,
    Identity,
    Reply,
    SpfResult,
    Stage,
    Step,
)
from spfmilter.core.session import GO_ON, HeldMessage, Session
from spfmilter.evaluation.resolver import DnsTempError, Record
from testkit import dkimkit
from tests.support.fakes import Clock, FakeChecker, FakeLookup, Results, make_session, no_dns, start

PASSING: Results = {
    (Identity.HELO, "mail.example.org"): SpfResult.PASS,
    (Identity.MAIL_FROM, "good@example.org"): SpfResult.PASS,
    (Identity.MAIL_FROM, "bad@example.org"): SpfResult.FAIL,
    (Identity.MAIL_FROM, "tmp@example.org"): SpfResult.TEMPERROR,
}


def make(
    config: Config | None = None,
    results: Results | None = None,
    lookup: Callable[[str, str, float | None], list[Record]] = no_dns,
    clock: Clock | None = None,
) -> tuple[Session, FakeChecker, Metrics]:
    checker = FakeChecker(PASSING if results is None else results, mechanism="-all", clock=clock)
    session, metrics = make_session(config, checker, lookup, clock=clock or time.monotonic)
    return session, checker, metrics


def with_policy(**changes: Any) -> Config:
    return dataclasses.replace(Config(), policy=dataclasses.replace(PolicyConfig(), **changes))


def verdict_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


def test_pass_gives_one_received_spf_for_three_recipients() -> None:
    session, rec, metrics = make()
    start(session)
    assert session.mail("good@example.org", "") == GO_ON
    for rcpt in ("<a@example.net>", "<b@example.net>", "<c@example.net>"):
        assert session.rcpt(rcpt) == GO_ON
    changes = session.end_of_message("Q1")
    assert changes.delete == ()
    ((name, value),) = changes.insert
    assert name == "Received-SPF"
    assert " ".join(value.split()).startswith("pass (example.org: 198.51.100.7 is authorized")
    assert "receiver=mx;" in value
    assert rec.identities() == [Identity.HELO, Identity.MAIL_FROM]
    assert session.transaction is None
    labels = {"identity": "mailfrom", "result": "pass", "action": "accept"}
    assert metrics.value("spfmilter_verdicts_total", **labels) == 1


def test_fail_is_refused_at_rcpt_with_rfc7372_code() -> None:
    session, _, _ = make()
    start(session)
    assert session.mail("bad@example.org", "") == GO_ON
    reply = Reply(550, "5.7.23", "SPF MAIL FROM check for bad@example.org: fail")
    assert session.rcpt("<a@example.net>") == Step(Action.REJECT, reply)


def test_temperror_is_deferred() -> None:
    session, _, _ = make()
    start(session)
    session.mail("tmp@example.org", "")
    step = session.rcpt("<a@example.net>")
    assert step.action is Action.DEFER and step.reply is not None
    assert (step.reply.code, step.reply.status) == (451, "4.7.24")


def test_reject_stage_mail() -> None:
    session, _, _ = make(with_policy(reject_stage=Stage.MAIL))
    start(session)
    assert session.mail("bad@example.org", "").action is Action.REJECT
    assert session.mail("good@example.org", "") == GO_ON


def test_helo_fail_refuses_without_checking_mail_from() -> None:
    session, rec, _ = make(results={(Identity.HELO, "evil.example"): SpfResult.FAIL})
    start(session, helo="evil.example")
    session.mail("good@example.org", "")
    step = session.rcpt("<a@example.net>")
    assert step.action is Action.REJECT and step.reply is not None
    assert step.reply.text == "SPF HELO check for postmaster@evil.example: fail"
    assert rec.identities() == [Identity.HELO]


def test_helo_evaluated_once_per_helo_and_again_after_a_new_ehlo() -> None:
    session, rec, _ = make()
    start(session)
    for _ in range(2):
        session.mail("good@example.org", "")
        session.end_of_message("")
    assert rec.identities().count(Identity.HELO) == 1
    session.hello("other.example.org")
    session.mail("good@example.org", "")
    assert [query.helo for query, _ in rec.queries if query.identity is Identity.HELO] == [
        "mail.example.org",
        "other.example.org",
    ]


def test_null_sender_reports_the_helo_identity() -> None:
    session, rec, _ = make()
    start(session)
    session.mail("", "")
    ((_, value),) = session.end_of_message("").insert
    value = " ".join(value.split())
    assert value.startswith("pass (mail.example.org:")
    assert "identity=helo;" in value and "envelope-from" not in value
    assert rec.identities() == [Identity.HELO]


def test_loopback_is_skipped_without_header(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    session, rec, metrics = make()
    start(session, ip="127.0.0.1")
    assert session.mail("bad@example.org", "") == GO_ON
    assert session.rcpt("<a@example.net>") == GO_ON
    assert session.end_of_message("Q2") == HeaderChanges()
    assert rec.queries == []
    (line,) = verdict_lines(caplog)
    assert line.startswith("Q2: SPF skipped - localhost is always allowed conn=")
    assert metrics.value("spfmilter_skips_total", reason="localhost") == 1


def test_skip_gets_an_authentication_results_none_when_asked() -> None:
    config = dataclasses.replace(
        Config(), headers=HeadersConfig(type=HeaderType.AUTHENTICATION_RESULTS)
    )
    session, _, _ = make(config)
    start(session)
    session.mail("a@example.org", "bob")
    ((name, value),) = session.end_of_message("").insert
    assert (name, value) == (
        "Authentication-Results",
        "mx; none (SPF not checked: SASL authenticated as bob)",
    )


def test_exempt_recipient_is_accepted_and_gets_the_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    session, _, _ = make(with_policy(exempt_recipients=("postmaster@",)))
    start(session)
    session.mail("bad@example.org", "")
    assert session.rcpt("<postmaster@example.net>") == GO_ON
    assert session.rcpt("<user@example.net>").action is Action.REJECT
    ((_, value),) = session.end_of_message("Q3").insert
    assert value.startswith("fail ")
    (line,) = verdict_lines(caplog)  # logged at the refusal, not again at the end
    assert line.startswith("NOQUEUE: verdict conn=")
    assert "exempt_recipients=<postmaster@example.net>" in line


def test_dry_run_accepts_and_logs_what_it_would_do(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    results = {**PASSING, (Identity.HELO, "x.example"): SpfResult.FAIL}
    session, rec, _ = make(with_policy(dry_run=True), results)
    start(session, helo="x.example")
    session.mail("bad@example.org", "")
    assert session.rcpt("<a@example.net>") == GO_ON
    ((_, value),) = session.end_of_message("").insert
    assert value.startswith("fail ")  # the MAIL FROM result, evaluated although HELO failed
    assert rec.identities() == [Identity.HELO, Identity.MAIL_FROM]
    (line,) = verdict_lines(caplog)
    assert "identity=helo result=fail" in line
    assert "action=reject" in line and "dry_run=yes" in line


def test_one_verdict_line_per_transaction(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    session, _, _ = make()
    start(session)
    session.mail("good@example.org", "")
    session.rcpt("<a@example.net>")
    session.rcpt("<b@example.net>")
    session.end_of_message("4XyZ1")
    session.abort("4XyZ1")
    session.close("4XyZ1")
    (line,) = verdict_lines(caplog)
    assert line.startswith("4XyZ1: verdict conn=")
    for field in (
        "client_ip=198.51.100.7",
        "helo=mail.example.org",
        "sender=good@example.org",
        "identity=mailfrom",
        "result=pass",
        "mechanism=-all",
        "action=accept",
        "stage=rcpt",
        "lookup_ms=0",
    ):
        assert field in line


def test_abort_and_close_log_a_pending_verdict_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    session, _, metrics = make()
    start(session)
    assert metrics.value("spfmilter_connections_in_flight") == 1
    session.mail("good@example.org", "")
    session.abort("")
    session.mail("bad@example.org", "")
    session.close("")
    session.close("")
    assert len(verdict_lines(caplog)) == 2
    assert metrics.value("spfmilter_connections_in_flight") == 0


def test_forged_authentication_results_are_deleted_highest_first() -> None:
    config = dataclasses.replace(Config(), headers=HeadersConfig(type=HeaderType.BOTH))
    session, _, _ = make(config)
    start(session, j="mx.test.example")
    session.mail("good@example.org", "")
    session.header("Subject", "mx.test.example; spf=pass")
    session.header("Authentication-Results", "other.example; spf=pass")
    session.header("authentication-results", "MX.test.example; spf=pass smtp.mailfrom=x")
    session.header("Authentication-Results", "(c) MX.Test.Example.; spf=pass")
    changes = session.end_of_message("")
    assert changes.delete == (("Authentication-Results", 3), ("Authentication-Results", 2))
    assert [name for name, _ in changes.insert] == ["Received-SPF", "Authentication-Results"]
    ar = " ".join(changes.insert[1][1].split())
    assert ar.startswith("mx.test.example; spf=pass (example.org:")
    assert ar.endswith("smtp.mailfrom=example.org")


def test_forged_authentication_results_kept_when_asked() -> None:
    config = dataclasses.replace(
        Config(),
        headers=HeadersConfig(type=HeaderType.AUTHENTICATION_RESULTS, remove_forged=False),
    )
    session, _, _ = make(config)
    start(session)
    session.mail("good@example.org", "")
    session.header("Authentication-Results", "mx; spf=pass")
    assert session.end_of_message("").delete == ()


def received_spf_deletions(config: Config, ip: str = "198.51.100.7") -> tuple[object, ...]:
    """What end of message deletes of a message carrying two Received-SPF
    fields of the client's own and one forged Authentication-Results."""
    session, _, _ = make(config)
    start(session, ip=ip, j="mx.test.example")
    session.mail("good@example.org", "")
    session.header("Received-SPF", "pass (mx.test.example: forged) receiver=mx.test.example")
    session.header("Authentication-Results", "mx.test.example; spf=pass")
    session.header("received-spf", "pass (relay.example: an earlier hop's)")
    return session.end_of_message("").delete


def test_a_clients_received_spf_is_deleted_when_ours_is_only_in_authentication_results() -> None:
    only_ar = HeadersConfig(type=HeaderType.AUTHENTICATION_RESULTS)
    assert received_spf_deletions(dataclasses.replace(Config(), headers=only_ar)) == (
        ("Authentication-Results", 1),
        ("Received-SPF", 2),
        ("Received-SPF", 1),
    )


def test_a_clients_received_spf_stays_below_ours_skipped_or_when_asked() -> None:
    both = dataclasses.replace(Config(), headers=HeadersConfig(type=HeaderType.BOTH))
    assert received_spf_deletions(both) == (("Authentication-Results", 1),)
    only_ar = dataclasses.replace(
        Config(), headers=HeadersConfig(type=HeaderType.AUTHENTICATION_RESULTS)
    )
    # A skipped transaction: a trusted relay's Received-SPF is the real one.
    assert received_spf_deletions(only_ar, ip="127.0.0.1") == (("Authentication-Results", 1),)
    kept = dataclasses.replace(
        Config(),
        headers=HeadersConfig(type=HeaderType.AUTHENTICATION_RESULTS, remove_forged=False),
    )
    assert received_spf_deletions(kept) == ()


def test_receiver_is_authserv_id_else_mta_name_else_host() -> None:
    named = dataclasses.replace(Config(), headers=HeadersConfig(authserv_id="mx.example.net"))
    for config, j, receiver in (
        (named, "ignored.example", "mx.example.net"),
        (Config(), "mx.mta.example", "mx.mta.example"),
        (Config(), "", "host.example"),
    ):
        session, _, _ = make(config)
        start(session, j=j)
        assert session.conn is not None and session.conn.receiver == receiver


def test_identities_of_one_command_share_the_lookup_budget() -> None:
    # The MTA times out the MAIL FROM command as a whole: what the HELO
    # evaluation spent is not available to MAIL FROM any more.
    session, rec, _ = make(clock=Clock())
    rec.cost = 15.0
    start(session)
    session.mail("good@example.org", "")
    assert [budget for _, budget in rec.queries] == [20.0, 5.0]


def test_dns_based_skip_uses_the_session_budget() -> None:
    table: dict[tuple[str, str], list[Record]] = {
        ("7.100.51.198.in-addr.arpa", "PTR"): [
            (("7.100.51.198.in-addr.arpa", "PTR"), "mx.relay.example")
        ],
        ("mx.relay.example", "A"): [(("mx.relay.example", "A"), "198.51.100.7")],
    }
    config = dataclasses.replace(Config(), skip=SkipConfig(ptr_domains=("relay.example",)))
    session, rec, metrics = make(config, lookup=FakeLookup(table))
    start(session)
    session.mail("bad@example.org", "")
    assert session.rcpt("<a@example.net>") == GO_ON
    session.end_of_message("")
    assert rec.queries == []
    assert metrics.value("spfmilter_skips_total", reason="ptr_domain") == 1


def test_dns_trouble_while_checking_skips_is_no_skip(caplog: pytest.LogCaptureFixture) -> None:
    config = dataclasses.replace(
        Config(), skip=SkipConfig(helo_names=("broken.example",), ptr_domains=("x.example",))
    )
    session, _, _ = make(config, lookup=FakeLookup())
    start(session, helo="broken.example")
    session.mail("bad@example.org", "")
    assert session.rcpt("<a@example.net>").action is Action.REJECT
    assert "DNS trouble while checking skips: DNS timeout looking up broken.example" in caplog.text


def test_forwarder_domains_pass_as_postmaster() -> None:
    config = dataclasses.replace(Config(), skip=SkipConfig(forwarder_domains=("fwd.example",)))
    results = {**PASSING, (Identity.MAIL_FROM, "postmaster@fwd.example"): SpfResult.PASS}
    session, rec, _ = make(config, results, lookup=FakeLookup())
    start(session)
    session.mail("bad@example.org", "")
    assert session.rcpt("<a@example.net>") == GO_ON
    assert [query.mail_from for query, _ in rec.queries] == ["postmaster@fwd.example"]


def test_no_transaction_means_nothing_to_do() -> None:
    session, _, _ = make()
    start(session)
    assert session.rcpt("<a@example.net>") == GO_ON
    session.header("Authentication-Results", "mx; spf=pass")
    assert session.end_of_message("") == HeaderChanges()


# --- rescue of forwarded mail ----------------------------------------------


@pytest.fixture(scope="module")
def rescue_key() -> dkimkit.KeyPair:
    return dkimkit.ed25519_key()


def rescuing(
    key: dkimkit.KeyPair, config: Config | None = None, **rescue: Any
) -> tuple[Session, Metrics, dkimkit.Zone]:
    """A session with [rescue] on (dkim unless `rescue` says otherwise)
    whose DNS holds `key` for sel._domainkey.example.org."""
    config = config or Config()
    settings = dataclasses.replace(config.rescue, **({"dkim": True} | rescue))
    config = dataclasses.replace(config, rescue=settings, suffixes=PublicSuffixes())
    zone = dkimkit.Zone()
    zone.publish("sel", "example.org", key.record)
    session, _, metrics = make(config, lookup=lambda n, t, b: list(zone.lookup(n, t, b)))
    start(session)
    return session, metrics, zone


def feed(session: Session, message: bytes, chunk: int = 65535) -> list[bool]:
    """The message as libmilter passes it: each header field's name and its
    value as sent (LF line ends inside, as Postfix sends them), then the
    body in pieces; what body() answered."""
    head, _, body = message.partition(b"\r\n\r\n")
    for field in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = field.partition(b":")
        raw = value.replace(b"\r\n", b"\n")
        session.header(name.decode(), raw.decode().strip(), raw)
    return [session.body(body[i : i + chunk]) for i in range(0, len(body), chunk)]


def signed(key: dkimkit.KeyPair, domain: str = "example.org") -> bytes:
    return dkimkit.sign(dkimkit.MESSAGE, key, domain)


def test_a_fail_rescued_by_dkim_is_accepted_with_honest_headers(
    rescue_key: dkimkit.KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    both = dataclasses.replace(Config(), headers=HeadersConfig(type=HeaderType.BOTH))
    session, metrics, _ = rescuing(rescue_key, both)
    assert session.may_rescue
    assert session.mail("bad@example.org", "") == GO_ON
    assert session.rcpt("<a@example.net>") == GO_ON
    assert session.wants_message
    assert feed(session, signed(rescue_key)) == [True]
    assert session.end_of_data("Q1") == GO_ON
    headers = dict(session.end_of_message("Q1").insert)
    assert headers["Received-SPF"].startswith("fail ")
    results = " ".join(headers["Authentication-Results"].split())
    assert "spf=fail" in results
    assert "dkim=pass header.d=example.org header.s=sel header.b=" in results
    (line,) = verdict_lines(caplog)
    assert "action=accept" in line and "result=fail" in line
    assert "rescue=dkim rescue_domain=example.org" in line
    assert "client_name=ptr.example.net" in line
    assert metrics.value("spfmilter_rescues_total", kind="dkim") == 1


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (dkimkit.MESSAGE, "no_signature"),
        ("unaligned", "unaligned"),
        ("broken", "body_hash"),
    ],
)
def test_a_fail_not_rescued_is_refused_at_end_of_data(
    rescue_key: dkimkit.KeyPair,
    message: bytes | str,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    session, metrics, zone = rescuing(rescue_key)
    if message == "unaligned":
        zone.publish("sel", "forwarder.example", rescue_key.record)
        message = signed(rescue_key, "forwarder.example")
    elif message == "broken":
        message = signed(rescue_key).replace(b"noon", b"one")
    assert isinstance(message, bytes)
    session.mail("bad@example.org", "")
    session.rcpt("<a@example.net>")
    feed(session, message)
    step = session.end_of_data("Q2")
    assert step.action is Action.REJECT
    assert step.reply == Reply(550, "5.7.23", "SPF MAIL FROM check for bad@example.org: fail")
    assert session.transaction is None
    (line,) = verdict_lines(caplog)
    assert line.startswith("Q2: verdict ")
    assert "action=reject" in line and f"rescue=none rescue_reason={reason}" in line
    assert metrics.value("spfmilter_rescues_total", kind="none") == 1


def test_an_oversized_message_is_refused_without_rescue(
    rescue_key: dkimkit.KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    session, _, zone = rescuing(rescue_key, max_message_size=1024)
    session.mail("bad@example.org", "")
    session.rcpt("<a@example.net>")
    message = signed(rescue_key).replace(b"  Alice", b"x" * 2000)
    answers = feed(session, message, chunk=100)
    assert answers[0] and not answers[-1]
    assert not session.wants_message
    step = session.end_of_data("Q3")
    assert step.action is Action.REJECT
    assert zone.asked == []
    (line,) = verdict_lines(caplog)
    assert "rescue=oversized rescue_reason=max_message_size" in line


def test_dns_trouble_defers(rescue_key: dkimkit.KeyPair, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    session, _, zone = rescuing(rescue_key)
    zone.errors["sel._domainkey.example.org"] = DnsTempError("timeout")
    session.mail("bad@example.org", "")
    session.rcpt("<a@example.net>")
    feed(session, signed(rescue_key))
    step = session.end_of_data("Q4")
    assert step.action is Action.DEFER
    assert step.reply is not None and (step.reply.code, step.reply.status) == (451, "4.7.24")
    (line,) = verdict_lines(caplog)
    assert "action=defer" in line and "rescue=temporary" in line


def test_dry_run_rescues_and_says_what_it_would_have_done(
    rescue_key: dkimkit.KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    session, _, _ = rescuing(rescue_key, with_policy(dry_run=True))
    session.mail("bad@example.org", "")
    session.rcpt("<a@example.net>")
    feed(session, dkimkit.MESSAGE)
    assert session.end_of_data("Q5") == GO_ON
    assert session.end_of_message("Q5").insert
    (line,) = verdict_lines(caplog)
    assert "action=reject" in line and "dry_run=yes" in line and "rescue=none" in line


def test_recipients_of_a_pending_transaction_are_of_one_kind(
    rescue_key: dkimkit.KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = with_policy(exempt_recipients=("postmaster@",))
    too_many = Step(Action.DEFER, Reply(452, "4.5.3", "Too many recipients"))
    session, _, zone = rescuing(rescue_key, config)
    session.mail("bad@example.org", "")
    assert session.rcpt("<postmaster@example.net>") == GO_ON
    assert session.rcpt("<bob@example.net>") == too_many
    assert session.rcpt("<postmaster@example.com>") == GO_ON
    # Exempt recipients only: the message is not held, never refused.
    assert not session.wants_message
    assert feed(session, dkimkit.MESSAGE) == [False]
    assert session.end_of_data("Q6") == GO_ON
    assert session.end_of_message("Q6").insert
    assert zone.asked == []
    (line,) = verdict_lines(caplog)
    assert "exempt_recipients=<postmaster@example.net>,<postmaster@example.com>" in line
    assert "rescue=" not in line
    session.mail("bad@example.org", "")
    assert session.rcpt("<bob@example.net>") == GO_ON
    assert session.rcpt("<postmaster@example.net>") == too_many
    feed(session, dkimkit.MESSAGE)
    assert session.end_of_data("Q7").action is Action.REJECT


def test_other_transactions_hold_nothing(rescue_key: dkimkit.KeyPair) -> None:
    session, _, zone = rescuing(rescue_key)
    session.mail("good@example.org", "")
    session.rcpt("<a@example.net>")
    assert not session.wants_message
    assert feed(session, signed(rescue_key)) == [False]
    assert session.transaction is not None and session.transaction.held is None
    assert session.end_of_data("Q8") == GO_ON
    assert zone.asked == []


def test_without_rescue_a_fail_is_refused_at_rcpt_as_before() -> None:
    session, _, _ = make()
    start(session)
    assert not session.may_rescue
    session.mail("bad@example.org", "")
    assert session.rcpt("<a@example.net>").action is Action.REJECT


def test_a_held_message_is_rebuilt_as_sent_with_crlf_line_ends() -> None:
    # The rescue verifies DKIM over these bytes: simple canonicalization
    # (RFC 6376 section 3.4.1) signs folding and the space after the colon.
    held = HeldMessage(1000)
    assert held.message() == b"\r\n"  # no field yet: an empty header
    held.add_header("Subject", b" folded\n\tover lines")
    held.add_header("X-Mixed", b" a\r\n b")
    # libmilter hands a name's non-UTF-8 bytes over as surrogate escapes.
    held.add_header("X-\udcff", b"")
    header = b"Subject: folded\r\n\tover lines\r\nX-Mixed: a\r\n b\r\nX-\xff:\r\n"
    assert held.message() == header + b"\r\n"
    assert held.add_body(b"body\r\n") and held.add_body(b"more\r\n")
    assert held.message() == header + b"\r\nbody\r\nmore\r\n"


def test_a_held_message_keeps_up_to_its_limit_and_nothing_past_it() -> None:
    held = HeldMessage(len(b"A: b\r\n\r\n") + 4)
    held.add_header("A", b" b")
    assert held.add_body(b"1234") and not held.oversized
    assert held.message() == b"A: b\r\n\r\n1234"
    assert not held.add_body(b"5") and held.oversized
    # Past the limit the memory is given back, and no later piece is kept.
    assert held.message() == b"" and not held.add_body(b"")


def test_a_simple_signature_is_verified_over_the_header_bytes_as_sent(
    rescue_key: dkimkit.KeyPair,
) -> None:
    # Simple header canonicalization (RFC 6376 section 3.4.1) signs the
    # space after the colon and the folding: only the raw value keeps them.
    message = dkimkit.sign(
        dkimkit.MESSAGE, rescue_key, "example.org", canonicalize=(b"simple", b"simple")
    )
    session, _, _ = rescuing(rescue_key)
    session.mail("bad@example.org", "")
    session.rcpt("<a@example.net>")
    feed(session, message)
    assert session.end_of_data("Q1") == GO_ON


def test_without_raw_bytes_a_header_is_held_from_its_value(rescue_key: dkimkit.KeyPair) -> None:
    # A relaxed signature survives the lost leading space; a value that
    # libmilter decoded with surrogate escapes goes back to its bytes.
    session, _, _ = rescuing(rescue_key)
    session.mail("bad@example.org", "")
    session.rcpt("<a@example.net>")
    session.header("X-Unsigned", "caf\udce9")
    head, _, body = signed(rescue_key).partition(b"\r\n\r\n")
    for field in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = field.partition(b":")
        session.header(name.decode(), value.replace(b"\r\n", b"\n").decode().strip())
    session.body(body)
    assert session.end_of_data("Q1") == GO_ON


def test_end_of_data_without_a_transaction_goes_on() -> None:
    session, _, _ = make()
    start(session)
    assert session.end_of_data("Q1") == GO_ON
