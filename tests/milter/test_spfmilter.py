"""SpfMilter driven through pymilter's TestCtx, with a recording fake checker."""

from __future__ import annotations

import dataclasses
import email
import ipaddress
import logging
from typing import Any

import Milter
import pytest
from Milter.testctx import TestCtx as MilterTestCtx

from spfmilter import milter as spfmilter_milter
from spfmilter.config import Config, HeadersConfig, HeaderType, PolicyConfig
from spfmilter.dns import Record
from spfmilter.metrics import Metrics
from spfmilter.milter import Activity, Services, client_address, reverse_path
from spfmilter.model import Identity, IPAddress, SpfOutcome, SpfResult, Stage

Results = dict[tuple[Identity, str], SpfResult]


class Recorder:
    """A checker that answers from a table and records every call."""

    def __init__(self, results: Results) -> None:
        self.results = results
        self.calls: list[tuple[Identity, str, str, str]] = []

    def __call__(
        self,
        identity: Identity,
        *,
        client_ip: IPAddress,
        helo: str,
        mail_from: str,
        receiver: str,
        lookup_time: float,
    ) -> SpfOutcome:
        self.calls.append((identity, str(client_ip), helo, mail_from))
        subject = helo if identity is Identity.HELO else mail_from
        if subject == "boom@example.org":
            raise RuntimeError("checker exploded")
        result = self.results.get((identity, subject), SpfResult.NONE)
        sender = f"postmaster@{helo}" if identity is Identity.HELO else mail_from
        return SpfOutcome(identity, result, sender.rpartition("@")[2], sender, "-all")


class Ctx(MilterTestCtx):  # type: ignore[misc]
    """TestCtx that also records where headers are inserted."""

    def __init__(self) -> None:
        super().__init__()
        self.inserted: list[tuple[str, str, int]] = []
        self.changed: list[tuple[str, int, str]] = []

    def addheader(self, field: str, value: str, idx: int) -> None:
        self.inserted.append((field, value, idx))
        super().addheader(field, value, idx)

    def chgheader(self, field: str, idx: int, value: str) -> None:
        self.changed.append((field, idx, value))
        super().chgheader(field, idx, value)


def no_dns(name: str, qtype: str, budget: float | None) -> list[Record]:
    raise AssertionError(f"unexpected DNS lookup {name} {qtype}")


class Source:
    def __init__(self, config: Config) -> None:
        self.config = config


def make(config: Config | None = None, results: Results | None = None) -> tuple[Ctx, Recorder]:
    recorder = Recorder(results or {})
    services = Services(recorder, no_dns, Metrics(), Activity())
    Milter.factory = spfmilter_milter.factory(Source(config or Config()), services)
    ctx = Ctx()
    ctx._setsymval("j", "mx.test.example")
    return ctx, recorder


def message(ctx: Ctx, text: str = "Subject: t\n\nhi\n") -> int:
    ctx._body = None
    ctx._msg = email.message_from_string(text)
    for name, value in ctx._msg.items():
        ctx._priv.header(name, value)
    rc: int = ctx._eom()
    return rc


def start(
    ctx: Ctx,
    ip: str = "198.51.100.7",
    helo: str = "mail.example.org",
    host: str = "ptr.example.net",
) -> None:
    assert ctx._connect(host=host, helo=helo, ip=ip) == Milter.CONTINUE


PASSING: Results = {
    (Identity.HELO, "mail.example.org"): SpfResult.PASS,
    (Identity.MAIL_FROM, "good@example.org"): SpfResult.PASS,
    (Identity.MAIL_FROM, "bad@example.org"): SpfResult.FAIL,
    (Identity.MAIL_FROM, "tmp@example.org"): SpfResult.TEMPERROR,
}


def test_pass_adds_one_received_spf_at_the_top_for_three_recipients() -> None:
    ctx, rec = make(results=PASSING)
    start(ctx)
    assert ctx._envfrom("<good@example.org>") == Milter.CONTINUE
    for rcpt in ("<a@example.net>", "<b@example.net>", "<c@example.net>"):
        assert ctx._envrcpt(rcpt) == Milter.CONTINUE
    assert message(ctx) == Milter.CONTINUE
    assert [(f, i) for f, _, i in ctx.inserted] == [("Received-SPF", 0)]
    value = ctx.inserted[0][1].replace("\n\t", " ")
    assert value.startswith("pass (example.org: 198.51.100.7 is authorized")
    assert "receiver=mx.test.example; identity=mailfrom;" in value
    assert "helo=mail.example.org;" in value
    # The real HELO is checked, never the PTR name.
    assert rec.calls == [
        (Identity.HELO, "198.51.100.7", "mail.example.org", ""),
        (Identity.MAIL_FROM, "198.51.100.7", "mail.example.org", "good@example.org"),
    ]


def test_fail_is_rejected_at_rcpt_with_rfc7372_code() -> None:
    ctx, _ = make(results=PASSING)
    start(ctx)
    assert ctx._envfrom("<bad@example.org>") == Milter.CONTINUE
    assert ctx._envrcpt("<a@example.net>") == Milter.REJECT
    assert ctx._reply == ("550", "5.7.23", "SPF MAIL FROM check for bad@example.org: fail")


def test_temperror_is_deferred() -> None:
    ctx, _ = make(results=PASSING)
    start(ctx)
    ctx._envfrom("<tmp@example.org>")
    assert ctx._envrcpt("<a@example.net>") == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.7.24")


def test_reject_stage_mail() -> None:
    config = dataclasses.replace(Config(), policy=PolicyConfig(reject_stage=Stage.MAIL))
    ctx, _ = make(config, PASSING)
    start(ctx)
    assert ctx._envfrom("<bad@example.org>") == Milter.REJECT


def test_helo_fail_rejects_without_checking_mail_from() -> None:
    ctx, rec = make(results={(Identity.HELO, "evil.example"): SpfResult.FAIL})
    start(ctx, helo="evil.example")
    ctx._envfrom("<good@example.org>")
    assert ctx._envrcpt("<a@example.net>") == Milter.REJECT
    assert ctx._reply[1] == "5.7.23"
    assert [c[0] for c in rec.calls] == [Identity.HELO]


def test_helo_checked_once_per_helo_and_again_after_a_new_ehlo() -> None:
    ctx, rec = make(results=PASSING)
    start(ctx)
    for _ in range(2):
        ctx._envfrom("<good@example.org>")
        ctx._envrcpt("<a@example.net>")
        message(ctx)
    assert [c[0] for c in rec.calls].count(Identity.HELO) == 1
    assert len(ctx.inserted) == 2
    ctx._priv.hello("other.example.org")
    ctx._envfrom("<good@example.org>")
    assert [c[2] for c in rec.calls if c[0] is Identity.HELO] == [
        "mail.example.org",
        "other.example.org",
    ]


def test_null_sender_reports_helo_identity() -> None:
    ctx, rec = make(results=PASSING)
    start(ctx)
    ctx._envfrom("<>")
    assert ctx._envrcpt("<a@example.net>") == Milter.CONTINUE
    message(ctx)
    value = ctx.inserted[0][1].replace("\n\t", " ")
    assert value.startswith("pass (mail.example.org:")
    assert "identity=helo;" in value and "envelope-from" not in value
    assert [c[0] for c in rec.calls] == [Identity.HELO]


def test_loopback_is_skipped_without_header(caplog: pytest.LogCaptureFixture) -> None:
    ctx, rec = make(results=PASSING)
    caplog.set_level(logging.INFO)
    start(ctx, ip="127.0.0.1")
    assert ctx._envfrom("<bad@example.org>") == Milter.CONTINUE
    assert ctx._envrcpt("<a@example.net>") == Milter.CONTINUE
    message(ctx)
    assert ctx.inserted == [] and rec.calls == []
    assert "SPF skipped - localhost is always allowed" in caplog.text


def test_sasl_client_is_skipped() -> None:
    ctx, rec = make(results=PASSING)
    start(ctx)
    ctx._setsymval("{auth_authen}", "bob")
    ctx._envfrom("<bad@example.org>")
    assert ctx._envrcpt("<a@example.net>") == Milter.CONTINUE
    assert rec.calls == []


def test_exempt_recipient_is_accepted_and_gets_the_header() -> None:
    config = dataclasses.replace(Config(), policy=PolicyConfig(exempt_recipients=("postmaster@",)))
    ctx, _ = make(config, PASSING)
    start(ctx)
    ctx._envfrom("<bad@example.org>")
    assert ctx._envrcpt("<user@example.net>") == Milter.REJECT
    assert ctx._envrcpt("<postmaster@example.net>") == Milter.CONTINUE
    message(ctx)
    assert ctx.inserted[0][1].startswith("fail ")


def test_dry_run_accepts_and_logs_what_it_would_do(caplog: pytest.LogCaptureFixture) -> None:
    config = dataclasses.replace(Config(), policy=PolicyConfig(dry_run=True))
    ctx, _ = make(config, PASSING)
    caplog.set_level(logging.INFO)
    start(ctx)
    ctx._envfrom("<bad@example.org>")
    assert ctx._envrcpt("<a@example.net>") == Milter.CONTINUE
    message(ctx)
    assert ctx.inserted[0][1].startswith("fail ")
    verdicts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("verdict")]
    assert len(verdicts) == 1
    assert "action=reject" in verdicts[0] and "dry_run=yes" in verdicts[0]


def test_one_verdict_line_per_transaction(caplog: pytest.LogCaptureFixture) -> None:
    ctx, _ = make(results=PASSING)
    caplog.set_level(logging.INFO)
    start(ctx)
    ctx._envfrom("<good@example.org>")
    for rcpt in ("<a@example.net>", "<b@example.net>"):
        ctx._envrcpt(rcpt)
    message(ctx)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1
    assert lines[0].startswith("verdict ")
    for field in (
        "client_ip=198.51.100.7",
        "helo=mail.example.org",
        "sender=good@example.org",
        "identity=mailfrom",
        "result=pass",
        "action=accept",
        "lookup_ms=",
    ):
        assert field in lines[0]


def test_exception_in_a_callback_tempfails_and_logs_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx, _ = make(results=PASSING)
    start(ctx)
    assert ctx._envfrom("<boom@example.org>") == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")
    assert "checker exploded" in caplog.text
    assert "Traceback" in caplog.text
    # The connection goes on: the next transaction is evaluated normally.
    assert ctx._envfrom("<good@example.org>") == Milter.CONTINUE


def test_forged_authentication_results_removed_and_ours_added() -> None:
    config = dataclasses.replace(Config(), headers=HeadersConfig(type=HeaderType.BOTH))
    ctx, _ = make(config, PASSING)
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
    names = [f for f, _, _ in ctx.inserted]
    assert names == ["Received-SPF", "Authentication-Results"]
    ar = ctx.inserted[1][1].replace("\n\t", " ")
    assert ar.startswith("mx.test.example; spf=pass (example.org:")
    assert ar.endswith("smtp.mailfrom=example.org") and "smtp.helo" not in ar


@pytest.mark.parametrize(
    ("family_addr", "expected"),
    [
        ((2, ("198.51.100.7", 25)), "198.51.100.7"),
        ((10, ("::ffff:203.0.113.9", 25, 0, 0)), "203.0.113.9"),
        ((10, ("2001:db8::1", 25, 0, 0)), "2001:db8::1"),
        ((1, "/run/x"), None),
    ],
)
def test_client_address(family_addr: tuple[int, Any], expected: str | None) -> None:
    got = client_address(*family_addr)
    assert got == (ipaddress.ip_address(expected) if expected else None)


def test_ipv4_mapped_client_is_evaluated_as_ipv4() -> None:
    ctx, rec = make(results=PASSING)
    start(ctx, ip="::ffff:198.51.100.7")
    ctx._envfrom("<good@example.org>")
    assert rec.calls[0][1] == "198.51.100.7"


@pytest.mark.parametrize(
    ("argument", "address"),
    [
        ("<a@b.example>", "a@b.example"),
        ("<>", ""),
        ("<@relay.example:a@b.example>", "a@b.example"),
        ("a@b.example", "a@b.example"),
    ],
)
def test_reverse_path(argument: str, address: str) -> None:
    assert reverse_path(argument) == address


def test_identities_in_one_callback_share_the_lookup_budget() -> None:
    # The MTA times out the MAIL FROM command as a whole: what the HELO
    # evaluation spent is not available to MAIL FROM any more.
    now = [1000.0]
    budgets: list[float] = []

    def slow_check(
        identity: Identity,
        *,
        client_ip: IPAddress,
        helo: str,
        mail_from: str,
        receiver: str,
        lookup_time: float,
    ) -> SpfOutcome:
        budgets.append(lookup_time)
        now[0] += 15.0
        return SpfOutcome(identity, SpfResult.PASS, "example.org", mail_from or "p@x")

    services = Services(slow_check, no_dns, Metrics(), Activity(), clock=lambda: now[0])
    Milter.factory = spfmilter_milter.factory(Source(Config()), services)
    ctx = Ctx()
    start(ctx)
    ctx._envfrom("<a@example.org>")
    assert budgets == [20.0, 5.0]
