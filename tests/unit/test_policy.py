"""The policy engine as tables: no mocks, no DNS, no milter."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from spfmilter import policy
from spfmilter.config import Config, PolicyConfig, ReplyConfig, SkipConfig, parse_networks
from spfmilter.model import (
    Action,
    Connection,
    Identity,
    Reply,
    SkipFacts,
    SpfOutcome,
    SpfResult,
    Stage,
    Transaction,
)

ALL = list(SpfResult)
DEFAULT = Config()


def outcome(identity: Identity, result: SpfResult, sender: str = "a@example.org") -> SpfOutcome:
    if identity is Identity.HELO:
        sender = "postmaster@mail.example.org"
    return SpfOutcome(identity, result, sender.rpartition("@")[2], sender)


def with_policy(**changes: Any) -> Config:
    return dataclasses.replace(DEFAULT, policy=dataclasses.replace(PolicyConfig(), **changes))


def expected_default(helo: SpfResult, mail_from: SpfResult | None) -> tuple[Action, str | None]:
    """DESIGN.md section 1, written out independently of the engine."""
    if helo is SpfResult.FAIL:
        return Action.REJECT, "helo"
    if helo is SpfResult.TEMPERROR:
        return Action.DEFER, "helo"
    if mail_from is None:  # null sender: the HELO result is final
        return Action.ACCEPT, None
    if mail_from is SpfResult.FAIL:
        return Action.REJECT, "mailfrom"
    if mail_from is SpfResult.TEMPERROR:
        return Action.DEFER, "mailfrom"
    return Action.ACCEPT, None


@pytest.mark.parametrize(
    ("helo_result", "mail_result", "null"),
    [(h, m, False) for h, m in itertools.product(ALL, ALL)] + [(h, None, True) for h in ALL],
)
def test_default_table(helo_result: SpfResult, mail_result: SpfResult | None, null: bool) -> None:
    tx = Transaction(mail_from="" if null else "a@example.org")
    helo = outcome(Identity.HELO, helo_result)
    needed = policy.mail_from_needed(DEFAULT, tx, helo)
    mail_from = outcome(Identity.MAIL_FROM, mail_result) if needed and mail_result else None
    decision = policy.decide(DEFAULT, tx, helo, mail_from)
    action, by = expected_default(helo_result, mail_result)
    assert (decision.action, decision.decided_by) == (action, by and Identity(by))
    # MAIL FROM is not evaluated after a HELO reject/defer, nor for <>.
    assert needed == (not null and helo_result not in (SpfResult.FAIL, SpfResult.TEMPERROR))
    # The header reports MAIL FROM whenever the sender is not null, even
    # when HELO passed (CVE-2019-20790); the HELO result only for <>.
    if action is Action.ACCEPT:
        assert decision.report is (helo if null else mail_from)
    expected_reply = {
        (Action.REJECT,): Reply(550, "5.7.23", ""),
        (Action.DEFER,): Reply(451, "4.7.24", ""),
    }.get((action,))
    if expected_reply is None:
        assert decision.reply is None
    else:
        assert decision.reply is not None
        assert (decision.reply.code, decision.reply.status) == (
            expected_reply.code,
            expected_reply.status,
        )
    assert decision.stage is Stage.RCPT


def test_reply_text_names_identity_result_and_explanation() -> None:
    mf = dataclasses.replace(
        outcome(Identity.MAIL_FROM, SpfResult.FAIL), explanation="Ask postmaster"
    )
    decision = policy.decide(DEFAULT, Transaction("a@example.org"), None, mf)
    assert str(decision.reply) == (
        "550 5.7.23 SPF MAIL FROM check for a@example.org: fail: Ask postmaster"
    )
    helo = outcome(Identity.HELO, SpfResult.TEMPERROR)
    helo = dataclasses.replace(helo, problem="SPF Temporary Error: DNS timeout")
    decision = policy.decide(DEFAULT, Transaction("a@example.org"), helo, None)
    assert str(decision.reply) == (
        "451 4.7.24 SPF HELO check for postmaster@mail.example.org: temperror: "
        "SPF Temporary Error: DNS timeout; try again later"
    )


def test_dry_run_accepts_but_remembers_and_still_checks_mail_from() -> None:
    config = with_policy(dry_run=True)
    tx = Transaction("a@example.org")
    helo = outcome(Identity.HELO, SpfResult.FAIL)
    assert policy.mail_from_needed(config, tx, helo)
    mf = outcome(Identity.MAIL_FROM, SpfResult.PASS)
    decision = policy.decide(config, tx, helo, mf)
    assert decision.action is Action.ACCEPT
    assert decision.intended is Action.REJECT
    assert decision.decided_by is Identity.HELO
    assert decision.reply is None
    assert decision.report is mf


@pytest.mark.parametrize(
    ("changes", "helo", "mail", "null", "action", "status"),
    [
        (
            {"permerror_reject": True},
            SpfResult.NONE,
            SpfResult.PERMERROR,
            False,
            "reject",
            "5.7.24",
        ),
        (
            {"permerror_reject": True},
            SpfResult.PERMERROR,
            SpfResult.PASS,
            False,
            "reject",
            "5.7.24",
        ),
        (
            {"temperror_defer": False},
            SpfResult.TEMPERROR,
            SpfResult.TEMPERROR,
            False,
            "accept",
            None,
        ),
        (
            {"mailfrom_reject": frozenset({SpfResult.SOFTFAIL})},
            SpfResult.NONE,
            SpfResult.SOFTFAIL,
            False,
            "reject",
            "5.7.23",
        ),
        ({"mailfrom_reject": frozenset()}, SpfResult.NONE, SpfResult.FAIL, False, "accept", None),
        (
            {"helo_reject": frozenset({SpfResult.NONE})},
            SpfResult.NONE,
            SpfResult.PASS,
            False,
            "reject",
            "5.7.23",
        ),
        (
            {"helo_reject_null_sender_only": True},
            SpfResult.FAIL,
            SpfResult.PASS,
            False,
            "accept",
            None,
        ),
        ({"helo_reject_null_sender_only": True}, SpfResult.FAIL, None, True, "reject", "5.7.23"),
        ({"helo_check": False}, None, SpfResult.FAIL, False, "reject", "5.7.23"),
        # helo_check = no: a bounce's HELO identity is its MAIL FROM identity
        # (RFC 7208 section 2.4) and is judged by mailfrom_reject.
        (
            {"helo_check": False, "mailfrom_reject": frozenset()},
            SpfResult.FAIL,
            None,
            True,
            "accept",
            None,
        ),
        ({"helo_check": False}, SpfResult.FAIL, None, True, "reject", "5.7.23"),
    ],
)
def test_policy_knobs(
    changes: dict[str, Any],
    helo: SpfResult | None,
    mail: SpfResult | None,
    null: bool,
    action: str,
    status: str | None,
) -> None:
    config = with_policy(**changes)
    tx = Transaction("" if null else "a@example.org")
    helo_outcome = outcome(Identity.HELO, helo) if helo else None
    assert (helo is not None) == policy.helo_identity_checked(config.policy, tx)
    mf = outcome(Identity.MAIL_FROM, mail) if mail else None
    decision = policy.decide(config, tx, helo_outcome, mf)
    assert decision.action is Action(action)
    assert (decision.reply.status if decision.reply else None) == status


def test_plain_codes_without_enhanced_status() -> None:
    config = dataclasses.replace(DEFAULT, reply=ReplyConfig(enhanced_status_codes=False))
    decision = policy.decide(
        config, Transaction("a@example.org"), None, outcome(Identity.MAIL_FROM, SpfResult.FAIL)
    )
    assert str(decision.reply).startswith("550 SPF MAIL FROM check")


def test_reject_stage_mail() -> None:
    decision = policy.decide(
        with_policy(reject_stage=Stage.MAIL),
        Transaction("a@example.org"),
        None,
        outcome(Identity.MAIL_FROM, SpfResult.FAIL),
    )
    assert decision.stage is Stage.MAIL


def conn(ip: str) -> Connection:
    import ipaddress

    return Connection(ipaddress.ip_address(ip), "", "mx.test.example", "mail.example.org")


@pytest.mark.parametrize(
    ("ip", "tx", "skip", "reason"),
    [
        ("127.0.0.1", Transaction("a@example.org"), SkipConfig(), "localhost is always allowed"),
        ("::1", Transaction("a@example.org"), SkipConfig(), "localhost is always allowed"),
        ("198.51.100.7", Transaction("a@example.org"), SkipConfig(), None),
        (
            "198.51.100.7",
            Transaction("a@example.org", auth_user="bob"),
            SkipConfig(),
            "SASL authenticated as bob",
        ),
        (
            "198.51.100.7",
            Transaction("a@example.org", auth_user="bob"),
            SkipConfig(authenticated=False),
            None,
        ),
        (
            "198.51.100.7",
            Transaction("a@example.org"),
            SkipConfig(trusted_relays=parse_networks("198.51.100.0/24")),
            "client 198.51.100.7 is a trusted relay",
        ),
        (
            "2001:db8::7",
            Transaction("a@example.org"),
            SkipConfig(trusted_relays=parse_networks("198.51.100.0/24, 2001:db8::/64")),
            "client 2001:db8::7 is a trusted relay",
        ),
        (
            "198.51.100.7",
            Transaction("a@Example.ORG"),
            SkipConfig(sender_domains=("example.org",)),
            "sender domain example.org is exempt",
        ),
        (
            "198.51.100.7",
            Transaction("a@sub.example.org"),
            SkipConfig(sender_domains=("example.org",)),
            None,
        ),
        (
            "203.0.113.9",
            Transaction("a@example.org"),
            SkipConfig(networks=parse_networks("203.0.113.0/24")),
            "client 203.0.113.9 in skip networks",
        ),
    ],
)
def test_skip_reasons(ip: str, tx: Transaction, skip: SkipConfig, reason: str | None) -> None:
    config = dataclasses.replace(DEFAULT, skip=skip)
    assert policy.skip_reason(config, conn(ip), tx, None) == reason


def test_no_client_ip_is_skipped() -> None:
    no_ip = Connection(None, "localhost", "mx")
    assert policy.skip_reason(DEFAULT, no_ip, Transaction("a@b.example"), None) is not None


@pytest.mark.parametrize(
    ("entries", "rcpt", "exempt"),
    [
        (("postmaster@",), "<Postmaster@example.net>", True),
        (("postmaster@",), "<postmaster.x@example.net>", False),
        (("abuse@example.net",), "<abuse@example.net>", True),
        (("abuse@example.net",), "<abuse@example.com>", False),
        ((), "<postmaster@example.net>", False),
    ],
)
def test_recipient_exempt(entries: tuple[str, ...], rcpt: str, exempt: bool) -> None:
    assert policy.recipient_exempt(PolicyConfig(exempt_recipients=entries), rcpt) is exempt


@pytest.mark.parametrize(
    ("name", "domain"),
    [
        ("mail.example.com", "example.com"),
        ("example.com.", "example.com"),
        ("MX.Example.COM", "example.com"),
        ("evilexample.com", None),
        ("example.com.evil.test", None),
    ],
)
def test_in_domains_matches_on_label_boundaries(name: str, domain: str | None) -> None:
    assert policy.in_domains(name, ("example.com",)) == domain


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (SkipFacts(helo_confirmed=True), "HELO mail.example.org resolves to the client"),
        (SkipFacts(forwarder="fwd.example"), "client passes SPF of forwarder fwd.example"),
        (
            SkipFacts(ptr_names=("evilrelay.example", "mx.relay.example")),
            "client's confirmed PTR name mx.relay.example is in relay.example",
        ),
        (SkipFacts(ptr_names=("evilrelay.example",)), None),
        (SkipFacts(), None),
    ],
)
def test_dns_based_skips(facts: SkipFacts, reason: str | None) -> None:
    skip = SkipConfig(
        helo_names=("mail.example.org",),
        ptr_domains=("relay.example",),
        forwarder_domains=("fwd.example",),
    )
    config = dataclasses.replace(DEFAULT, skip=skip)
    assert policy.skip_reason(config, conn("198.51.100.7"), Transaction("a@b.example"), facts) == (
        reason
    )


def test_helo_fact_needs_a_listed_helo() -> None:
    config = dataclasses.replace(DEFAULT, skip=SkipConfig(helo_names=("other.example",)))
    facts = SkipFacts(helo_confirmed=True)
    assert (
        policy.skip_reason(config, conn("198.51.100.7"), Transaction("a@b.example"), facts) is None
    )
