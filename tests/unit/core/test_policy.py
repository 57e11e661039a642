"""The policy engine as tables: no mocks, no DNS, no milter."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import pathlib
import re
from typing import Any

import pytest

from spfmilter.config.schema import Config, PolicyConfig, ReplyConfig, RescueConfig, SkipConfig
from spfmilter.config.values import parse_macros, parse_networks
from spfmilter.core import policy
from spfmilter.core.model import (
    Action,
    Connection,
    Decision,
    Envelope,
    Identity,
    Macro,
    Outcomes,
    Plan,
    Reply,
    RescueKind,
    RescueResult,
    Skip,
    SkipFacts,
    SkipReason,
    SpfOutcome,
    SpfResult,
    Stage,
    Step,
)

ALL = list(SpfResult)
DEFAULT = Config()


def outcome(identity: Identity, result: SpfResult, sender: str = "a@example.org") -> SpfOutcome:
    if identity is Identity.HELO:
        sender = "postmaster@mail.example.org"
    return SpfOutcome(identity, result, sender.rpartition("@")[2], sender)


def with_policy(**changes: Any) -> Config:
    return dataclasses.replace(DEFAULT, policy=dataclasses.replace(PolicyConfig(), **changes))


CONN = Connection(ipaddress.ip_address("198.51.100.7"), "", "mx.test.example", "mail.example.org")


def mail_from_needed(config: Config, tx: Envelope, helo: SpfOutcome | None) -> bool:
    """What the plan says about evaluating MAIL FROM after `helo`."""
    plan = policy.plan(config, CONN, tx)
    return plan.mail_from and (helo is None or helo.result not in plan.final_helo_results)


def decide(
    config: Config, tx: Envelope, helo: SpfOutcome | None, mail_from: SpfOutcome | None
) -> Decision:
    """The decision on these outcomes, by the plan for a client no skip
    applies to."""
    plan = policy.plan(config, CONN, tx)
    return policy.decide(config, plan, Outcomes(helo=helo, mail_from=mail_from))


def skip_text(config: Config, connection: Connection, tx: Envelope, facts: SkipFacts) -> str | None:
    plan = policy.plan(config, connection, tx)
    skip = policy.decide(config, plan, Outcomes(facts)).skip
    return skip.text if skip else None


def expected_default(helo: SpfResult, mail_from: SpfResult | None) -> tuple[Action, str | None]:
    """The default policy as README's "What it does" states it, written out
    independently of the engine."""
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
    tx = Envelope(mail_from="" if null else "a@example.org")
    helo = outcome(Identity.HELO, helo_result)
    needed = mail_from_needed(DEFAULT, tx, helo)
    mail_from = outcome(Identity.MAIL_FROM, mail_result) if needed and mail_result else None
    decision = decide(DEFAULT, tx, helo, mail_from)
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
    decision = decide(DEFAULT, Envelope("a@example.org"), None, mf)
    assert str(decision.reply) == (
        "550 5.7.23 SPF MAIL FROM check for a@example.org: fail: Ask postmaster"
    )
    helo = outcome(Identity.HELO, SpfResult.TEMPERROR)
    helo = dataclasses.replace(helo, problem="SPF Temporary Error: DNS timeout")
    decision = decide(DEFAULT, Envelope("a@example.org"), helo, None)
    assert str(decision.reply) == (
        "451 4.7.24 SPF HELO check for postmaster@mail.example.org: temperror: "
        "SPF Temporary Error: DNS timeout; try again later"
    )


def test_dry_run_accepts_but_remembers_and_still_checks_mail_from() -> None:
    config = with_policy(dry_run=True)
    tx = Envelope("a@example.org")
    helo = outcome(Identity.HELO, SpfResult.FAIL)
    assert mail_from_needed(config, tx, helo)
    mf = outcome(Identity.MAIL_FROM, SpfResult.PASS)
    decision = decide(config, tx, helo, mf)
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
    tx = Envelope("" if null else "a@example.org")
    helo_outcome = outcome(Identity.HELO, helo) if helo else None
    assert (helo is not None) == policy.plan(config, CONN, tx).helo
    mf = outcome(Identity.MAIL_FROM, mail) if mail else None
    decision = decide(config, tx, helo_outcome, mf)
    assert decision.action is Action(action)
    assert (decision.reply.status if decision.reply else None) == status


def test_plain_codes_without_enhanced_status() -> None:
    config = dataclasses.replace(DEFAULT, reply=ReplyConfig(enhanced_status_codes=False))
    decision = decide(
        config, Envelope("a@example.org"), None, outcome(Identity.MAIL_FROM, SpfResult.FAIL)
    )
    assert str(decision.reply).startswith("550 SPF MAIL FROM check")


def test_reject_stage_mail() -> None:
    decision = decide(
        with_policy(reject_stage=Stage.MAIL),
        Envelope("a@example.org"),
        None,
        outcome(Identity.MAIL_FROM, SpfResult.FAIL),
    )
    assert decision.stage is Stage.MAIL


def conn(ip: str) -> Connection:
    return Connection(ipaddress.ip_address(ip), "", "mx.test.example", "mail.example.org")


@pytest.mark.parametrize(
    ("ip", "tx", "skip", "reason"),
    [
        ("127.0.0.1", Envelope("a@example.org"), SkipConfig(), "localhost is always allowed"),
        ("::1", Envelope("a@example.org"), SkipConfig(), "localhost is always allowed"),
        ("198.51.100.7", Envelope("a@example.org"), SkipConfig(), None),
        (
            "198.51.100.7",
            Envelope("a@example.org", auth_user="bob"),
            SkipConfig(),
            "SASL authenticated as bob",
        ),
        (
            "198.51.100.7",
            Envelope("a@example.org", auth_user="bob"),
            SkipConfig(authenticated=False),
            None,
        ),
        (
            "198.51.100.7",
            Envelope("a@example.org", macros=(Macro("{daemon_name}", "ORIGINATING"),)),
            SkipConfig(macros=parse_macros("daemon_name=ORIGINATING")),
            "MTA macro {daemon_name}=ORIGINATING",
        ),
        (
            # The value must match exactly; a macro the MTA did not send is "".
            "198.51.100.7",
            Envelope("a@example.org", macros=(Macro("{daemon_name}", "originating"),)),
            SkipConfig(macros=parse_macros("{daemon_name}=ORIGINATING")),
            None,
        ),
        (
            "198.51.100.7",
            Envelope("a@example.org", macros=(Macro("{daemon_name}", ""),)),
            SkipConfig(macros=parse_macros("{daemon_name}=ORIGINATING")),
            None,
        ),
        (
            "198.51.100.7",
            Envelope("a@example.org"),
            SkipConfig(trusted_relays=parse_networks("198.51.100.0/24")),
            "client 198.51.100.7 is a trusted relay",
        ),
        (
            "2001:db8::7",
            Envelope("a@example.org"),
            SkipConfig(trusted_relays=parse_networks("198.51.100.0/24, 2001:db8::/64")),
            "client 2001:db8::7 is a trusted relay",
        ),
        (
            "198.51.100.7",
            Envelope("a@Example.ORG"),
            SkipConfig(sender_domains=("example.org",)),
            "sender domain example.org is exempt",
        ),
        (
            "198.51.100.7",
            Envelope("a@sub.example.org"),
            SkipConfig(sender_domains=("example.org",)),
            None,
        ),
        (
            "203.0.113.9",
            Envelope("a@example.org"),
            SkipConfig(networks=parse_networks("203.0.113.0/24")),
            "client 203.0.113.9 in skip networks",
        ),
    ],
)
def test_skip_reasons(ip: str, tx: Envelope, skip: SkipConfig, reason: str | None) -> None:
    config = dataclasses.replace(DEFAULT, skip=skip)
    assert skip_text(config, conn(ip), tx, SkipFacts()) == reason


def test_no_client_ip_is_skipped() -> None:
    no_ip = Connection(None, "localhost", "mx")
    assert skip_text(DEFAULT, no_ip, Envelope("a@b.example"), SkipFacts()) == (
        "no client IP address (local submission)"
    )


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
    ("facts", "reason"),
    [
        (SkipFacts(helo_confirmed=True), "HELO mail.example.org resolves to the client"),
        (SkipFacts(forwarder="fwd.example"), "client passes SPF of forwarder fwd.example"),
        (
            SkipFacts(ptr=("mx.relay.example", "relay.example")),
            "client's confirmed PTR name mx.relay.example is in relay.example",
        ),
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
    assert skip_text(config, conn("198.51.100.7"), Envelope("a@b.example"), facts) == reason


def test_helo_fact_needs_a_listed_helo() -> None:
    config = dataclasses.replace(DEFAULT, skip=SkipConfig(helo_names=("other.example",)))
    facts = SkipFacts(helo_confirmed=True)
    assert skip_text(config, conn("198.51.100.7"), Envelope("a@b.example"), facts) is None


def test_plan_for_the_defaults() -> None:
    plan = policy.plan(DEFAULT, CONN, Envelope("a@example.org"))
    refusing = frozenset({SpfResult.FAIL, SpfResult.TEMPERROR})
    assert plan == Plan(
        helo=True,
        mail_from=True,
        helo_refusing=refusing,
        mail_from_refusing=refusing,
        final_helo_results=refusing,
    )
    assert not plan.needs_facts


@pytest.mark.parametrize(
    ("changes", "null", "helo", "mail_from", "final"),
    [
        ({"dry_run": True}, False, True, True, set()),
        # Without helo_check a bounce's HELO is judged by the MAIL FROM rules.
        ({"helo_check": False}, False, False, True, {"fail", "temperror"}),
        ({"helo_check": False, "mailfrom_reject": frozenset()}, True, True, False, {"temperror"}),
        ({"temperror_defer": False}, False, True, True, {SpfResult.FAIL}),
        ({"permerror_reject": True}, False, True, True, {"fail", "temperror", "permerror"}),
        ({"helo_reject_null_sender_only": True}, False, True, True, {SpfResult.TEMPERROR}),
        ({"helo_reject_null_sender_only": True}, True, True, False, {"fail", "temperror"}),
        ({"helo_reject": frozenset()}, False, True, True, {SpfResult.TEMPERROR}),
    ],
)
def test_plan_follows_the_policy(
    changes: dict[str, Any], null: bool, helo: bool, mail_from: bool, final: set[str]
) -> None:
    tx = Envelope("" if null else "a@example.org")
    plan = policy.plan(with_policy(**changes), CONN, tx)
    assert (plan.helo, plan.mail_from) == (helo, mail_from)
    assert plan.final_helo_results == {SpfResult(r) for r in final}
    assert plan.skip is None and not plan.needs_facts


def test_plan_asks_for_dns_facts_only_when_a_skip_needs_them() -> None:
    config = dataclasses.replace(DEFAULT, skip=SkipConfig(ptr_domains=("relay.example",)))
    tx = Envelope("a@example.org")
    plan = policy.plan(config, CONN, tx)
    assert plan.needs_facts and plan.ptr_domains == ("relay.example",) and plan.skip is None
    found = Outcomes(SkipFacts(ptr=("mx.relay.example", "relay.example")))
    skip = policy.decide(config, plan, found).skip
    assert skip == Skip(SkipReason.PTR_DOMAIN, "mx.relay.example is in relay.example")
    assert plan.helo and policy.decide(config, plan, Outcomes()).skip is None
    # A skip that needs no DNS comes first.
    local = conn("127.0.0.1")
    assert policy.plan(config, local, tx) == Plan(skip=Skip(SkipReason.LOCALHOST))


def test_replies_are_made_safe_where_they_are_built() -> None:
    fail = SpfOutcome(
        Identity.MAIL_FROM,
        SpfResult.FAIL,
        "example.org",
        "a@example.org",
        explanation="line one\r\nX-Injected: yes " + "x" * 600,
    )
    decision = decide(DEFAULT, Envelope("a@example.org"), None, fail)
    assert decision.reply is not None
    text = decision.reply.text
    assert "\r" not in text and "\n" not in text
    assert text.startswith("SPF MAIL FROM check for a@example.org: fail: line one X-Injected")
    assert len(text) == 400 and text.endswith("...")


# Every skip applying at once: each key below, when set, skips this client.
_ALL_SKIPS = SkipConfig(
    networks=parse_networks("198.51.100.0/24"),
    authenticated=True,
    macros=parse_macros("daemon_name=ORIGINATING"),
    trusted_relays=parse_networks("198.51.100.0/24"),
    sender_domains=("example.org",),
    helo_names=("mail.example.org",),
    forwarder_domains=("fwd.example",),
    ptr_domains=("relay.example",),
)
_SKIP_KEYS = {
    SkipReason.NETWORK: "networks",
    SkipReason.AUTHENTICATED: "authenticated",
    SkipReason.MACRO: "macros",
    SkipReason.TRUSTED_RELAY: "trusted_relays",
    SkipReason.SENDER_DOMAIN: "sender_domains",
    SkipReason.HELO_NAME: "helo_names",
    SkipReason.FORWARDER: "forwarder_domains",
    SkipReason.PTR_DOMAIN: "ptr_domains",
}
_FACT_OF: dict[str, dict[str, Any]] = {
    "helo_names": {"helo_confirmed": False},
    "forwarder_domains": {"forwarder": None},
    "ptr_domains": {"ptr": None},
}
_DOCS = pathlib.Path(__file__).resolve().parents[3]


def _documented_skip_order(path: str, key: str) -> list[str]:
    """The keys in the order the paragraph starting "Skips are checked in
    this order" of `path` names them (`key` matches one key's mention)."""
    text = (_DOCS / path).read_text()
    start = text.index("Skips are checked in this order")
    ends = [i for i in (text.find("\n\n", start), text.find("\n.SH", start)) if i != -1]
    paragraph = text[start : min(ends)]
    return [k for k in re.findall(key, paragraph) if k in _SKIP_KEYS.values()]


def _skip_order() -> list[str]:
    """The order plan() and decide() apply the skips in: with every skip
    applying, the one reported, then with that one unset, the next."""
    envelope = Envelope(
        "a@example.org",
        auth_user="bob",
        macros=(Macro("{daemon_name}", "ORIGINATING"),),
    )
    facts = SkipFacts(
        helo_confirmed=True, forwarder="fwd.example", ptr=("mx.relay.example", "relay.example")
    )
    skip, order = _ALL_SKIPS, list[str]()
    while True:
        config = dataclasses.replace(DEFAULT, skip=skip)
        found = policy.decide(config, policy.plan(config, CONN, envelope), Outcomes(facts)).skip
        if found is None:
            return order
        key = _SKIP_KEYS[found.reason]
        order.append(key)
        unset: Any = False if key == "authenticated" else ()
        skip = dataclasses.replace(skip, **{key: unset})
        # The evaluator looks for a DNS fact only when its list is set.
        facts = dataclasses.replace(facts, **_FACT_OF.get(key, {}))


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("docs/configuration.md", r"`([a-z_]+)`"),
        ("man/spfmilter.cfg.5", r"^\.BR? ([a-z_]+)"),
    ],
)
def test_documented_skip_order_is_the_policys(path: str, key: str) -> None:
    assert _skip_order() == list(_SKIP_KEYS.values())
    assert _documented_skip_order(path, key if path.endswith(".md") else f"(?m){key}") == (
        _skip_order()
    )


# --- rescue of forwarded mail ----------------------------------------------

RESCUE = dataclasses.replace(DEFAULT, rescue=RescueConfig(dkim=True))
SENDER = Envelope("a@example.org")
HELO_PASS = outcome(Identity.HELO, SpfResult.PASS)


def with_rescue(config: Config = RESCUE, **changes: Any) -> Config:
    return dataclasses.replace(config, policy=dataclasses.replace(config.policy, **changes))


@pytest.mark.parametrize(
    ("config", "helo", "mail_from", "pending"),
    [
        (RESCUE, SpfResult.PASS, SpfResult.FAIL, True),
        (
            dataclasses.replace(DEFAULT, rescue=RescueConfig(arc_trusted_sealers=("l.example",))),
            SpfResult.PASS,
            SpfResult.FAIL,
            True,
        ),
        (DEFAULT, SpfResult.PASS, SpfResult.FAIL, False),
        # HELO fail is never rescued, nor a MAIL FROM result other than fail.
        (RESCUE, SpfResult.FAIL, SpfResult.FAIL, False),
        (RESCUE, SpfResult.PASS, SpfResult.TEMPERROR, False),
        (RESCUE, SpfResult.PASS, SpfResult.PASS, False),
        (
            with_rescue(mailfrom_reject=frozenset({SpfResult.SOFTFAIL, SpfResult.FAIL})),
            SpfResult.PASS,
            SpfResult.SOFTFAIL,
            False,
        ),
        # Only what the policy would reject waits.
        (with_rescue(mailfrom_reject=frozenset()), SpfResult.PASS, SpfResult.FAIL, False),
        (with_rescue(dry_run=True), SpfResult.PASS, SpfResult.FAIL, True),
        (with_rescue(dry_run=True), SpfResult.FAIL, SpfResult.FAIL, False),
    ],
)
def test_which_decisions_wait_for_a_rescue(
    config: Config, helo: SpfResult, mail_from: SpfResult, pending: bool
) -> None:
    decision = decide(
        config, SENDER, outcome(Identity.HELO, helo), outcome(Identity.MAIL_FROM, mail_from)
    )
    assert decision.pending_rescue is pending


def pending(config: Config = RESCUE) -> Decision:
    decision = decide(config, SENDER, HELO_PASS, outcome(Identity.MAIL_FROM, SpfResult.FAIL))
    assert decision.pending_rescue
    return decision


REFUSAL = Reply(550, "5.7.23", "SPF MAIL FROM check for a@example.org: fail")


@pytest.mark.parametrize(
    ("rescue", "action", "reply"),
    [
        (RescueResult(RescueKind.DKIM, "example.org"), Action.ACCEPT, None),
        (RescueResult(RescueKind.ARC, "lists.example"), Action.ACCEPT, None),
        (RescueResult(RescueKind.NONE, reason="no_signature"), Action.REJECT, REFUSAL),
        (RescueResult(RescueKind.OVERSIZED, reason="max_message_size"), Action.REJECT, REFUSAL),
        (
            RescueResult(RescueKind.TEMPORARY, reason="key_temperror"),
            Action.DEFER,
            Reply(
                451,
                "4.7.24",
                "SPF MAIL FROM check for a@example.org: fail, and its DKIM and ARC results "
                "could not be checked; try again later",
            ),
        ),
    ],
)
def test_conclude(rescue: RescueResult, action: Action, reply: Reply | None) -> None:
    final = policy.conclude(RESCUE, pending(), rescue)
    assert (final.action, final.intended, final.reply) == (action, action, reply)
    assert final.rescue == rescue and not final.pending_rescue
    assert final.decided_by is Identity.MAIL_FROM and final.report == pending().report
    assert (final.stage, final.helo, final.mail_from) == (
        Stage.RCPT,
        HELO_PASS,
        pending().mail_from,
    )
    dry = with_rescue(dry_run=True)
    final = policy.conclude(dry, pending(dry), rescue)
    assert (final.action, final.intended, final.reply) == (Action.ACCEPT, action, None)


def test_the_refusal_at_end_of_data_is_the_one_at_rcpt() -> None:
    at_rcpt = decide(DEFAULT, SENDER, HELO_PASS, outcome(Identity.MAIL_FROM, SpfResult.FAIL))
    final = policy.conclude(RESCUE, pending(), RescueResult(RescueKind.NONE, reason="x"))
    assert final.reply == at_rcpt.reply
    plain = dataclasses.replace(RESCUE, reply=ReplyConfig(enhanced_status_codes=False))
    final = policy.conclude(plain, pending(plain), RescueResult(RescueKind.TEMPORARY))
    assert final.reply is not None and (final.reply.code, final.reply.status) == (451, None)


def test_a_deferral_at_end_of_data_keeps_a_long_sender_up_to_the_reply_limit() -> None:
    # A reply line holds more than a header field (REPLY_TEXT_LIMIT, 400).
    sender = "x" * 250 + "@example.org"
    mail_from = outcome(Identity.MAIL_FROM, SpfResult.FAIL, sender=sender)
    decision = decide(RESCUE, Envelope(sender), HELO_PASS, mail_from)
    final = policy.conclude(RESCUE, decision, RescueResult(RescueKind.TEMPORARY))
    assert final.reply is not None and final.reply.text == (
        f"SPF MAIL FROM check for {sender}: fail, and its DKIM and ARC results could not "
        "be checked; try again later"
    )


TOO_MANY = Step(Action.DEFER, Reply(452, "4.5.3", "Too many recipients"))
EXEMPT = with_rescue(exempt_recipients=("postmaster@",))


@pytest.mark.parametrize(
    ("config", "held", "recipient", "answer"),
    [
        (EXEMPT, None, "<bob@example.net>", (False, Step())),
        (EXEMPT, None, "<postmaster@example.net>", (True, Step())),
        (EXEMPT, False, "<carol@example.net>", (False, Step())),
        (EXEMPT, True, "<postmaster@example.org>", (True, Step())),
        (EXEMPT, False, "<postmaster@example.net>", (False, TOO_MANY)),
        (EXEMPT, True, "<bob@example.net>", (True, TOO_MANY)),
        (
            dataclasses.replace(EXEMPT, reply=ReplyConfig(enhanced_status_codes=False)),
            True,
            "<bob@example.net>",
            (True, Step(Action.DEFER, Reply(452, None, "Too many recipients"))),
        ),
        # At MAIL there are no exempt recipients: one kind only.
        (
            with_rescue(EXEMPT, reject_stage=Stage.MAIL),
            False,
            "<postmaster@x.example>",
            (False, Step()),
        ),
    ],
)
def test_one_kind_of_recipient_per_pending_transaction(
    config: Config, held: bool | None, recipient: str, answer: tuple[bool, Step]
) -> None:
    assert policy.admit(config, held, recipient) == answer
