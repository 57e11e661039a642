"""The adapter driven through pymilter's TestCtx: a Session's values become
libmilter replies and header changes.  What the Session decides is tested
in tests/unit/test_session.py."""

from __future__ import annotations

import dataclasses
import email
import ipaddress
import re
from collections.abc import Callable
from typing import Any

import Milter
import pytest

from spfmilter.config.orgdomain import PublicSuffixes
from spfmilter.config.schema import Config, HeadersConfig, HeaderType, PolicyConfig, RescueConfig
from spfmilter.config.values import parse_macros
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import Identity, SpfOutcome, SpfQuery, SpfResult, Stage
from spfmilter.core.session import Services, Session
from spfmilter.evaluation.evaluator import Evaluator
from spfmilter.evaluation.resolver import Record
from spfmilter.mta.libmilter import client_address, reverse_path
from testkit import dkimkit
from tests.support.testctx import Ctx

RESULTS = {
    "mail.example.org": SpfResult.PASS,
    "good@example.org": SpfResult.PASS,
    "bad@example.org": SpfResult.FAIL,
    "tmp@example.org": SpfResult.TEMPERROR,
}


def check(query: SpfQuery, lookup_time: float) -> SpfOutcome:
    identity, helo, mail_from = query.identity, query.helo, query.mail_from
    subject = helo if identity is Identity.HELO else mail_from
    if subject == "boom@example.org":
        raise RuntimeError("checker exploded")
    sender = f"postmaster@{helo}" if identity is Identity.HELO else mail_from
    explanation = "100% not ours" if subject == "bad@example.org" else None
    result = RESULTS.get(subject, SpfResult.NONE)
    return SpfOutcome(identity, result, sender.rpartition("@")[2], sender, "-all", explanation)


def no_dns(name: str, qtype: str, budget: float | None) -> list[Record]:
    raise AssertionError(f"unexpected DNS lookup {name} {qtype}")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def make(metrics: Metrics) -> Callable[..., Ctx]:
    """An MTA connection to the adapter.  This MTA cannot skip replies to
    connect and HELO (as Sendmail 8.13 could not): the adapter must work
    that way too; the property tests and the daemon's tests cover the steps
    without reply (SMFIP_NR_CONN, SMFIP_NR_HELO)."""

    def made(config: Config | None = None) -> Ctx:
        evaluator = Evaluator(check, no_dns, metrics, lookup_time=20.0)
        ctx = Ctx(config or Config(), Services(evaluator, metrics), no_reply=False)
        ctx._setsymval("j", "mx.test.example")
        return ctx

    return made


def start(ctx: Ctx, ip: str = "198.51.100.7") -> None:
    assert ctx._connect(host="ptr.example.net", helo="mail.example.org", ip=ip) == Milter.CONTINUE


def message(ctx: Ctx, text: str = "Subject: t\n\nhi\n") -> int:
    ctx._body = None
    ctx._msg = email.message_from_string(text)
    for name, value in ctx._msg.items():
        ctx._header(name, value)
    return ctx._eom()


def test_accepted_message_gets_its_header_at_the_top(make: Any) -> None:
    ctx = make()
    start(ctx)
    assert ctx._envfrom("<good@example.org>") == Milter.CONTINUE
    assert ctx._envrcpt("<a@example.net>") == Milter.CONTINUE
    assert message(ctx) == Milter.CONTINUE
    assert [(f, i) for f, _, i in ctx.inserted] == [("Received-SPF", 0)]
    assert ctx.inserted[0][1].startswith("pass (example.org:")


def test_refusal_becomes_reject_with_its_reply_and_percent_doubled(make: Any) -> None:
    ctx = make()
    start(ctx)
    assert ctx._envfrom("<bad@example.org>") == Milter.CONTINUE
    assert ctx._envrcpt("<a@example.net>") == Milter.REJECT
    # smfi_setreply reads a format string: '%' is sent doubled.
    text = "SPF MAIL FROM check for bad@example.org: fail: 100%% not ours"
    assert ctx._reply == ("550", "5.7.23", text)


def test_deferral_becomes_tempfail(make: Any) -> None:
    ctx = make()
    start(ctx)
    ctx._envfrom("<tmp@example.org>")
    assert ctx._envrcpt("<a@example.net>") == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.7.24")


def test_refusal_at_mail(make: Any) -> None:
    ctx = make(dataclasses.replace(Config(), policy=PolicyConfig(reject_stage=Stage.MAIL)))
    start(ctx)
    assert ctx._envfrom("<bad@example.org>") == Milter.REJECT


def test_header_changes_delete_then_insert(make: Any) -> None:
    ctx = make(dataclasses.replace(Config(), headers=HeadersConfig(type=HeaderType.BOTH)))
    start(ctx)
    ctx._envfrom("<good@example.org>")
    ctx._envrcpt("<a@example.net>")
    message(
        ctx,
        "Authentication-Results: other.example; spf=pass\n"
        "Authentication-Results: MX.test.example; spf=pass smtp.mailfrom=x\n"
        "Subject: t\n\nhi\n",
    )
    assert ctx.changed == [("Authentication-Results", 2, "")]
    assert [(f, i) for f, _, i in ctx.inserted] == [
        ("Received-SPF", 0),
        ("Authentication-Results", 0),
    ]


def test_sasl_macro_reaches_the_session(make: Any) -> None:
    ctx = make()
    start(ctx)
    ctx._setsymval("{auth_authen}", "bob")
    ctx._envfrom("<bad@example.org>")
    assert ctx._envrcpt("<a@example.net>") == Milter.CONTINUE


def test_configured_macros_reach_the_session(make: Any) -> None:
    skip = dataclasses.replace(Config().skip, macros=parse_macros("{daemon_name}=ORIGINATING"))
    ctx = make(dataclasses.replace(Config(), skip=skip))
    start(ctx)
    ctx._envfrom("<bad@example.org>")
    assert ctx._envrcpt("<a@example.net>") == Milter.REJECT  # no macro: checked
    ctx._setsymval("{daemon_name}", "ORIGINATING")
    ctx._envfrom("<bad@example.org>")
    assert ctx._envrcpt("<a@example.net>") == Milter.CONTINUE


def test_a_failed_step_without_reply_tempfails_the_next_mail_from(
    make: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = make()

    def explode(self: Any, helo: str) -> None:
        raise RuntimeError("hello exploded")

    monkeypatch.setattr(Session, "hello", explode)
    start(ctx)  # the MTA is answered CONTINUE at HELO whatever happened
    assert ctx._envfrom("<good@example.org>") == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.3.0", "Temporary SPF checking problem; try again later")
    assert "internal error in hello" in caplog.text and "hello exploded" in caplog.text


def test_exception_in_a_callback_tempfails_and_logs_a_traceback(
    make: Any, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = make()
    start(ctx)
    assert ctx._envfrom("<boom@example.org>") == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.3.0", "Temporary SPF checking problem; try again later")
    assert "checker exploded" in caplog.text and "Traceback" in caplog.text
    assert metrics.value("spfmilter_internal_errors_total") == 1
    # The connection goes on: the next transaction is evaluated normally.
    assert ctx._envfrom("<good@example.org>") == Milter.CONTINUE


def test_lost_connect_takes_the_client_from_its_macro(make: Any) -> None:
    ctx = make()
    ctx._negotiate()  # the object exists, but its connect callback never ran
    ctx._setsymval("{client_addr}", "198.51.100.7")
    assert ctx._envfrom("<bad@example.org>") == Milter.CONTINUE
    assert ctx._envrcpt("<a@example.net>") == Milter.REJECT


def test_lost_connect_without_an_address_tempfails(make: Any) -> None:
    ctx = make()
    ctx._negotiate()
    assert ctx._envfrom("<good@example.org>") == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")


@pytest.mark.parametrize(
    ("family_addr", "expected"),
    [
        ((2, ("198.51.100.7", 25)), "198.51.100.7"),
        ((10, ("::ffff:203.0.113.9", 25, 0, 0)), "203.0.113.9"),
        ((10, ("2001:db8::1", 25, 0, 0)), "2001:db8::1"),
        ((10, "fe80::1%eth0"), "fe80::1"),
        ((1, "/run/x"), None),
        ((2, None), None),
    ],
)
def test_client_address(family_addr: tuple[int, Any], expected: str | None) -> None:
    got = client_address(*family_addr)
    assert got == (ipaddress.ip_address(expected) if expected else None)


@pytest.mark.parametrize(
    ("argument", "address"),
    [
        ("<a@b.example>", "a@b.example"),
        ("<>", ""),
        ("<@relay.example:a@b.example>", "a@b.example"),
        ("a@b.example", "a@b.example"),
        (" <a@b.example> ", "a@b.example"),
    ],
)
def test_reverse_path(argument: str, address: str) -> None:
    assert reverse_path(argument) == address


# --- rescue of forwarded mail ----------------------------------------------

RESCUE = dataclasses.replace(Config(), rescue=RescueConfig(dkim=True), suffixes=PublicSuffixes())


@pytest.fixture(scope="module")
def rescue_key() -> dkimkit.KeyPair:
    return dkimkit.ed25519_key()


def rescuing(metrics: Metrics, key: dkimkit.KeyPair, config: Config = RESCUE) -> Ctx:
    zone = dkimkit.Zone()
    zone.publish("sel", "example.org", key.record)
    evaluator = Evaluator(
        check, lambda n, t, b: list(zone.lookup(n, t, b)), metrics, lookup_time=20.0
    )
    ctx = Ctx(config, Services(evaluator, metrics), no_reply=False)
    ctx._setsymval("j", "mx.test.example")
    return ctx


def send(ctx: Ctx, message: bytes) -> list[int]:
    """Header fields as an MTA sends them with SMFIP_HDR_LEADSPC (the
    white space after the colon kept, LF inside folded fields), then the
    body in two pieces; the answers."""
    head, _, body = message.partition(b"\r\n\r\n")
    answers = []
    for field in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = field.partition(b":")
        answers.append(ctx.step("header", -1, name.decode(), value.replace(b"\r\n", b"\n")))
    half = len(body) // 2
    answers += [ctx._chunk(body[:half]), ctx._chunk(body[half:])]
    return answers


def test_negotiation_without_rescue_asks_for_no_body(make: Any) -> None:
    ctx = make()
    ctx._negotiate()
    assert ctx._protocol & Milter.P_NOBODY
    assert ctx._protocol & Milter.P_NOHDRS
    assert not ctx._protocol & Milter.P_HDR_LEADSPC


def test_negotiation_with_rescue(metrics: Metrics, rescue_key: dkimkit.KeyPair) -> None:
    ctx = rescuing(metrics, rescue_key)
    ctx._negotiate()
    assert not ctx._protocol & (Milter.P_NOBODY | Milter.P_NOHDRS)
    assert ctx._protocol & Milter.P_HDR_LEADSPC
    assert ctx._protocol & Milter.P_SKIP


def test_a_rescued_message_is_accepted(metrics: Metrics, rescue_key: dkimkit.KeyPair) -> None:
    ctx = rescuing(metrics, rescue_key)
    start(ctx)
    assert ctx._envfrom("<bad@example.org>") == Milter.CONTINUE
    assert ctx._envrcpt("<a@example.net>") == Milter.CONTINUE
    answers = send(ctx, dkimkit.sign(dkimkit.MESSAGE, rescue_key, "example.org"))
    assert answers[-2:] == [Milter.CONTINUE, Milter.CONTINUE]
    assert ctx._eom() == Milter.CONTINUE
    (header,) = ctx.inserted
    assert header[0] == "Received-SPF" and header[1].startswith("fail ")


def test_a_message_not_rescued_is_refused_at_its_end(
    metrics: Metrics, rescue_key: dkimkit.KeyPair
) -> None:
    ctx = rescuing(metrics, rescue_key)
    start(ctx)
    ctx._envfrom("<bad@example.org>")
    ctx._envrcpt("<a@example.net>")
    send(ctx, dkimkit.MESSAGE)
    assert ctx._eom() == Milter.REJECT
    # The reply of a refusal at RCPT, explanation and all.
    text = "SPF MAIL FROM check for bad@example.org: fail: 100%% not ours"
    assert ctx._reply == ("550", "5.7.23", text)
    assert ctx.inserted == []


def test_other_transactions_skip_their_body(metrics: Metrics, rescue_key: dkimkit.KeyPair) -> None:
    ctx = rescuing(metrics, rescue_key)
    start(ctx)
    ctx._envfrom("<good@example.org>")
    ctx._envrcpt("<a@example.net>")
    assert send(ctx, dkimkit.MESSAGE)[-2:] == [Milter.SKIP, Milter.SKIP]
    assert ctx._eom() == Milter.CONTINUE
    assert ctx.inserted[0][1].startswith("pass ")
