"""The policy engine: pure functions from facts to a Plan, and from outcomes
to a Decision.

This module owns what spfmilter does with SPF results: which clients and
transactions are skipped, which identities are evaluated and in which
order, which results reject or defer, the SMTP replies, and which recipients
are exempt.  A session asks it twice per transaction: plan() says, once,
everything to evaluate and which results will refuse; decide() judges the
outcomes by that same plan.  With the rescue of forwarded mail on, decide()
may leave a MAIL FROM fail pending ("refuse unless rescued"), admit()
keeps the recipients of such a transaction of one kind, and conclude()
makes it final at end of message.  It performs no I/O.
"""

from __future__ import annotations

from spfmilter.config.schema import Config, PolicyConfig
from spfmilter.core.headers import REPLY_TEXT_LIMIT, clean
from spfmilter.core.model import (
    Action,
    Connection,
    Decision,
    Envelope,
    Identity,
    IPAddress,
    IPNetwork,
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

# RFC 7372 section 3.2 (5.7.23 SPF validation failed, 5.7.24 SPF validation
# error) and RFC 3463 for the reply classes.
_REJECT = (550, "5.7.23")
_PERMERROR = (550, "5.7.24")
_DEFER = (451, "4.7.24")
# RFC 5321 section 4.5.3.1.10: a client told "452 too many recipients"
# sends that recipient again in a later transaction (RFC 3463 4.5.3).
_TOO_MANY_RECIPIENTS = (452, "4.5.3", "Too many recipients")


def plan(config: Config, conn: Connection, envelope: Envelope) -> Plan:
    """What to evaluate for this transaction, HELO first (RFC 7208 2.3).

    Skips are checked in a fixed order, so that the logged reason is
    predictable: no client address, skip networks, SASL authentication,
    macros, trusted relays, sender domains; then, from DNS, HELO names that
    resolve to the client, forwarder domains whose SPF the client passes,
    forward-confirmed PTR names (the plan lists what to look up, decide()
    keeps the order).  For the null sender the HELO identity is always
    evaluated: RFC 7208 section 2.4 makes postmaster@<helo> its MAIL FROM
    identity.
    """
    skip = _skip(config, conn, envelope)
    if skip is not None:
        return Plan(skip=skip)
    policy, skips = config.policy, config.skip
    helo = conn.helo.lower().rstrip(".")
    helo_refusing = _refusing(config, envelope, Identity.HELO)
    return Plan(
        helo_name=helo if helo in skips.helo_names else None,
        forwarder_domains=skips.forwarder_domains,
        ptr_domains=skips.ptr_domains,
        helo=policy.helo_check or envelope.null_sender,
        mail_from=not envelope.null_sender,
        helo_refusing=helo_refusing,
        mail_from_refusing=_refusing(config, envelope, Identity.MAIL_FROM),
        final_helo_results=frozenset() if policy.dry_run else helo_refusing,
    )


def _skip(config: Config, conn: Connection, envelope: Envelope) -> Skip | None:
    skip = config.skip
    ip = conn.client_ip
    if ip is None:
        # Mail submitted on the MTA host itself (Postfix non_smtpd_milters,
        # sendmail -bs) has no SMTP client whose address SPF could check.
        return Skip(SkipReason.LOCAL_SUBMISSION)
    if _in(ip, skip.networks):
        if ip.is_loopback:
            return Skip(SkipReason.LOCALHOST)
        return Skip(SkipReason.NETWORK, str(ip))
    if skip.authenticated and envelope.auth_user:
        return Skip(SkipReason.AUTHENTICATED, clean(envelope.auth_user, 64))
    for macro in skip.macros:
        if macro in envelope.macros:
            return Skip(SkipReason.MACRO, str(macro))
    if _in(ip, skip.trusted_relays):
        return Skip(SkipReason.TRUSTED_RELAY, str(ip))
    if envelope.sender_domain and envelope.sender_domain in skip.sender_domains:
        return Skip(SkipReason.SENDER_DOMAIN, clean(envelope.sender_domain, 253))
    return None


def _dns_skip(plan: Plan, facts: SkipFacts) -> Skip | None:
    if facts.helo_confirmed and plan.helo_name is not None:
        return Skip(SkipReason.HELO_NAME, clean(plan.helo_name, 253))
    if facts.forwarder is not None:
        return Skip(SkipReason.FORWARDER, facts.forwarder)
    if facts.ptr is not None:
        name, domain = facts.ptr
        return Skip(SkipReason.PTR_DOMAIN, f"{clean(name, 253)} is in {domain}")
    return None


def _in(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip in net for net in networks if net.version == ip.version)


def decide(config: Config, plan: Plan, outcomes: Outcomes) -> Decision:
    """The verdict for one transaction, by the plan it was evaluated with:
    a skip when the plan or a fact found says so, else the first identity,
    HELO first (RFC 7208 section 2.3), whose result refuses decides, and
    otherwise the transaction is accepted.  Dry-run turns any reject or
    defer into an accept and keeps what it would have done in `intended`.
    """
    policy = config.policy
    skip = plan.skip or _dns_skip(plan, outcomes.facts)
    if skip is not None:
        return Decision(
            action=Action.SKIP, intended=Action.SKIP, stage=policy.reject_stage, skip=skip
        )
    action, reply, decided_by = Action.ACCEPT, None, None
    for outcome, refusing in (
        (outcomes.helo, plan.helo_refusing),
        (outcomes.mail_from, plan.mail_from_refusing),
    ):
        if outcome is not None and outcome.result in refusing:
            action = Action.DEFER if outcome.result is SpfResult.TEMPERROR else Action.REJECT
            reply = _reply(config, outcome)
            decided_by = outcome.identity
            break
    # A MAIL FROM fail may be rescued by the message (a forwarder's DKIM or
    # a trusted ARC sealer): refused, if at all, at end of message.  HELO
    # fail never is: it says nothing of the message's origin.
    pending = (
        config.rescue.enabled
        and decided_by is Identity.MAIL_FROM
        and action is Action.REJECT
        and outcomes.mail_from is not None
        and outcomes.mail_from.result is SpfResult.FAIL
    )
    return Decision(
        action=Action.ACCEPT if policy.dry_run else action,
        intended=action,
        stage=policy.reject_stage,
        reply=None if policy.dry_run else reply,
        decided_by=decided_by,
        helo=outcomes.helo,
        mail_from=outcomes.mail_from,
        pending_rescue=pending,
    )


def admit(config: Config, held: bool | None, recipient: str) -> tuple[bool | None, Step]:
    """A recipient of a transaction pending rescue: the kind of recipients
    the transaction holds (exempt or not, None before the first) and the
    answer.

    After DATA a message is refused as a whole, and exempt recipients must
    never be refused: the first recipient accepted fixes the kind, and one
    of the other kind is told 452 4.5.3, which makes the client send it
    again in a new transaction (RFC 5321 section 4.5.3.1.10).  With
    reject_stage = mail there are no exempt recipients, as without rescue.
    """
    exempt = config.policy.reject_stage is Stage.RCPT and recipient_exempt(config.policy, recipient)
    if held is None or held == exempt:
        return exempt, Step()
    code, status, text = _TOO_MANY_RECIPIENTS
    reply = Reply(code, status if config.reply.enhanced_status_codes else None, text)
    return held, Step(Action.DEFER, reply)


def conclude(config: Config, decision: Decision, rescue: RescueResult) -> Decision:
    """The final decision on a transaction pending rescue, by how the
    rescue ended: accepted when rescued, deferred as for a temperror when
    DNS kept the rescue from knowing, else refused with the reply of the
    MAIL FROM fail.  Dry-run accepts and keeps the verdict in `intended`."""
    outcome = decision.mail_from
    assert outcome is not None  # only a MAIL FROM fail is pending
    reply: Reply | None = None
    if rescue.rescued:
        intended = Action.ACCEPT
    elif rescue.kind is RescueKind.TEMPORARY:
        intended = Action.DEFER
        text = (
            f"SPF MAIL FROM check for {outcome.sender}: fail, and its DKIM and ARC "
            "results could not be checked; try again later"
        )
        status = _DEFER[1] if config.reply.enhanced_status_codes else None
        reply = Reply(_DEFER[0], status, clean(text, REPLY_TEXT_LIMIT))
    else:
        intended = Action.REJECT
        reply = _reply(config, outcome)
    dry_run = config.policy.dry_run
    return Decision(
        action=Action.ACCEPT if dry_run else intended,
        intended=intended,
        stage=decision.stage,
        reply=None if dry_run else reply,
        decided_by=decision.decided_by,
        helo=decision.helo,
        mail_from=decision.mail_from,
        rescue=rescue,
    )


def recipient_exempt(policy: PolicyConfig, recipient: str) -> bool:
    """Whether a recipient is never rejected for SPF (e.g. postmaster@).

    Entries ending in '@' match that local part at any domain; others match
    the whole address.  Comparison ignores case and angle brackets.
    """
    address = recipient.strip().strip("<>").lower()
    local = address.rpartition("@")[0] + "@"
    return any(entry in (address, local) for entry in policy.exempt_recipients)


def _refusing(config: Config, envelope: Envelope, identity: Identity) -> frozenset[SpfResult]:
    """The results of `identity` that reject or defer this transaction."""
    policy = config.policy
    if identity is Identity.HELO and policy.helo_check:
        rejects = policy.helo_reject
        if policy.helo_reject_null_sender_only and not envelope.null_sender:
            rejects = frozenset()
    else:
        # A bounce's HELO identity checked only because it is the MAIL FROM
        # identity (helo_check = no) is judged by the MAIL FROM rules.
        rejects = policy.mailfrom_reject
    refusing = set(rejects) - {SpfResult.TEMPERROR}
    if policy.temperror_defer:
        refusing.add(SpfResult.TEMPERROR)
    if policy.permerror_reject:
        refusing.add(SpfResult.PERMERROR)
    return frozenset(refusing)


def _reply(config: Config, outcome: SpfOutcome) -> Reply:
    """The reply to a refused transaction; the text is made safe here
    (explanations and errors come from DNS)."""
    if outcome.result is SpfResult.TEMPERROR:
        code = _DEFER
    elif outcome.result is SpfResult.PERMERROR:
        code = _PERMERROR
    else:
        code = _REJECT
    who = "HELO" if outcome.identity is Identity.HELO else "MAIL FROM"
    text = f"SPF {who} check for {outcome.sender}: {outcome.result.value}"
    detail = outcome.explanation or outcome.problem
    if detail:
        text += f": {detail}"
    if outcome.result is SpfResult.TEMPERROR:
        text += "; try again later"
    status = code[1] if config.reply.enhanced_status_codes else None
    return Reply(code[0], status, clean(text, REPLY_TEXT_LIMIT))
