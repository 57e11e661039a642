"""Property-based tests of the policy for any configuration and any facts:
what plan() says to look up and evaluate, in which order, the refusal
tables against the documented rules, any fact found as a skip, what
decide() refuses and how, dry-run, the outcome reported (never a HELO pass
for the sender, CVE-2019-20790), and exempt recipients."""

from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import example, given
from hypothesis import strategies as st

from spfmilter.config.schema import (
    Config,
    PolicyConfig,
    SkipConfig,
)
from spfmilter.core import policy
from spfmilter.core.model import (
    Action,
    Connection,
    Decision,
    Envelope,
    Identity,
    Outcomes,
    Plan,
    Skip,
    SkipFacts,
    SkipReason,
    SpfOutcome,
    SpfResult,
)
from tests.support.checks import assert_reply
from tests.support.strategies import (
    SETTINGS,
    configs,
    connections,
    domains,
    ips,
    outcomes,
    policies,
    texts,
    transactions,
)

skip_facts = st.builds(
    SkipFacts, st.booleans(), st.one_of(st.none(), domains),
    st.one_of(st.none(), st.tuples(st.one_of(domains, texts), domains)),
)  # fmt: skip
# A client no skip applies to, and a configuration without skips: what
# decide() is given when the identities were evaluated.
CLIENT = Connection(ipaddress.ip_address("198.51.100.7"), "", "mx", "mail.example.org")
NO_SKIP = SkipConfig(networks=(), authenticated=False)


def refusing(config: Config, tx: Envelope, identity: Identity) -> set[SpfResult]:
    """The results of `identity` that refuse, written out from the
    documentation of [policy] rather than from the engine."""
    settings = config.policy
    if identity is Identity.HELO and settings.helo_check:
        null_only = settings.helo_reject_null_sender_only and not tx.null_sender
        results = set() if null_only else set(settings.helo_reject)
    else:  # a bounce's HELO checked as its MAIL FROM identity: MAIL FROM's rules
        results = set(settings.mailfrom_reject)
    results.discard(SpfResult.TEMPERROR)
    if settings.temperror_defer:
        results.add(SpfResult.TEMPERROR)
    if settings.permerror_reject:
        results.add(SpfResult.PERMERROR)
    return results


def decide(
    config: Config, tx: Envelope, helo: SpfOutcome | None, mfrom: SpfOutcome | None
) -> Decision:
    """decide() on these outcomes, by the plan for a client no skip applies to."""
    plan = policy.plan(dataclasses.replace(config, skip=NO_SKIP), CLIENT, tx)
    return policy.decide(config, plan, Outcomes(helo=helo, mail_from=mfrom))


def refuses(config: Config, tx: Envelope, helo: SpfResult) -> bool:
    one = SpfOutcome(Identity.HELO, helo, "d", "postmaster@d")
    return decide(config, tx, one, None).intended is not Action.ACCEPT


@SETTINGS
@given(configs, connections(st.none() | ips), transactions)
def test_plan(config: Config, conn: Connection, tx: Envelope) -> None:
    plan = policy.plan(config, conn, tx)
    if conn.client_ip is None:
        assert plan.skip == Skip(SkipReason.LOCAL_SUBMISSION)
    elif any(conn.client_ip in net for net in config.skip.networks):
        assert plan.skip is not None
        assert plan.skip.reason in (SkipReason.LOCALHOST, SkipReason.NETWORK)
    if plan.skip is not None:  # nothing to look up or evaluate, so nothing to decide
        assert plan == Plan(skip=plan.skip)
        assert plan.skip.text.isascii() and plan.skip.text.isprintable()  # safe for headers
        return
    # DNS facts: what the configured skips ask for, the HELO only if listed.
    helo = conn.helo.lower().rstrip(".")
    assert plan.helo_name == (helo if helo in config.skip.helo_names else None)
    assert plan.ptr_domains == config.skip.ptr_domains
    assert plan.forwarder_domains == config.skip.forwarder_domains
    assert plan.mail_from is not tx.null_sender  # never MAIL FROM for <>
    assert plan.helo is (config.policy.helo_check or tx.null_sender)
    assert plan.helo_refusing == refusing(config, tx, Identity.HELO)
    assert plan.mail_from_refusing == refusing(config, tx, Identity.MAIL_FROM)
    # MAIL FROM is skipped exactly after a HELO result that decides already;
    # dry-run evaluates it anyway.  A HELO pass never ends the evaluation.
    expected = {r for r in SpfResult if not config.policy.dry_run and refuses(config, tx, r)}
    assert plan.final_helo_results == expected and SpfResult.PASS not in expected


@SETTINGS
@given(configs, connections(ips), transactions, skip_facts)
def test_a_fact_found_is_a_skip(
    config: Config, conn: Connection, tx: Envelope, facts: SkipFacts
) -> None:
    plan = policy.plan(config, conn, tx)
    decision = policy.decide(config, plan, Outcomes(facts))
    if plan.skip is not None:
        assert decision.skip == plan.skip
        return
    helo = facts.helo_confirmed and plan.helo_name is not None
    assert (decision.skip is not None) is (
        helo or facts.forwarder is not None or facts.ptr is not None
    )
    if decision.skip is not None:  # in the documented order: HELO, forwarder, PTR
        expected = (
            SkipReason.HELO_NAME if helo
            else SkipReason.FORWARDER if facts.forwarder is not None
            else SkipReason.PTR_DOMAIN
        )  # fmt: skip
        assert decision.skip.reason is expected and decision.action is Action.SKIP
        assert decision.skip.text.isascii() and decision.skip.text.isprintable()


@SETTINGS
@given(
    configs,
    transactions,
    st.one_of(st.none(), outcomes(Identity.HELO)),
    st.one_of(st.none(), outcomes(Identity.MAIL_FROM)),
)
def test_decide(
    config: Config, tx: Envelope, helo: SpfOutcome | None, mfrom: SpfOutcome | None
) -> None:
    decision = decide(config, tx, helo, mfrom)
    assert decision.report == (mfrom or helo) and decision.stage is config.policy.reject_stage
    assert decision.intended in (Action.ACCEPT, Action.REJECT, Action.DEFER)
    if config.policy.dry_run:  # never refuses, says what it would have done
        assert decision.action is Action.ACCEPT and decision.reply is None
        real = dataclasses.replace(config.policy, dry_run=False)
        wet = decide(dataclasses.replace(config, policy=real), tx, helo, mfrom)
        assert (decision.intended, decision.decided_by) == (wet.intended, wet.decided_by)
        return
    assert decision.action is decision.intended
    if decision.action is Action.ACCEPT:
        assert decision.reply is None and decision.decided_by is None
        return
    assert_reply(decision.reply, decision.action)
    assert decision.reply is not None
    # HELO first: the first identity whose result refuses decides.
    if helo is not None and refuses(config, tx, helo.result):
        assert decision.decided_by is Identity.HELO
    deciding = helo if decision.decided_by is Identity.HELO else mfrom
    assert deciding is not None and deciding.result is not SpfResult.PASS
    assert (deciding.result is SpfResult.TEMPERROR) == (decision.action is Action.DEFER)
    if config.reply.enhanced_status_codes:
        expected = {SpfResult.TEMPERROR: "4.7.24", SpfResult.PERMERROR: "5.7.24"}
        assert decision.reply.status == expected.get(deciding.result, "5.7.23")
    else:
        assert decision.reply.status is None


@SETTINGS
@given(
    configs,
    connections(ips),
    transactions,
    outcomes(Identity.HELO),
    outcomes(Identity.MAIL_FROM),
)
@example(  # CVE-2019-20790: a HELO pass must not stand in for MAIL FROM's none
    Config(),
    Connection(ipaddress.ip_address("198.51.100.7"), "", "mx", "mail.example.org"),
    Envelope("victim@example.com"),
    SpfOutcome(Identity.HELO, SpfResult.PASS, "mail.example.org", "postmaster@mail.example.org"),
    SpfOutcome(Identity.MAIL_FROM, SpfResult.NONE, "example.com", "victim@example.com"),
)
def test_plan_then_decide_reports_the_sender(
    config: Config, conn: Connection, tx: Envelope, helo: SpfOutcome, mfrom: SpfOutcome
) -> None:
    """As the Session runs them: never a HELO pass as the sender's result
    (CVE-2019-20790), the HELO result for <>."""
    # A client no skip applies to (the skips have test_plan).
    config = dataclasses.replace(config, skip=SkipConfig(networks=(), authenticated=False))
    plan = policy.plan(config, conn, tx)
    helo_done = helo if plan.helo else None
    stop = helo_done is not None and helo_done.result in plan.final_helo_results
    mfrom_done = mfrom if plan.mail_from and not stop else None
    decision = policy.decide(config, plan, Outcomes(helo=helo_done, mail_from=mfrom_done))
    report = decision.report
    if tx.null_sender:
        assert report is helo
    elif config.policy.dry_run or not stop:
        assert report is mfrom
    else:  # MAIL FROM not evaluated: the HELO result refused the transaction
        assert report is helo and decision.decided_by is Identity.HELO
        assert decision.action in (Action.REJECT, Action.DEFER)


@SETTINGS
@given(policies, st.one_of(texts, st.sampled_from(["<Postmaster@X.example>", "abuse@example.net"])))
def test_recipient_exempt(policy_config: PolicyConfig, recipient: str) -> None:
    exempt = policy.recipient_exempt(policy_config, recipient)
    if recipient.lower().startswith("<postmaster@"):
        assert exempt is ("postmaster@" in policy_config.exempt_recipients)
    if recipient == "abuse@example.net":
        assert exempt is ("abuse@example.net" in policy_config.exempt_recipients)
