"""The policy engine: pure functions from facts to a Plan, and from outcomes
to a Decision.

This module owns what spfmilter does with SPF results: which clients and
transactions are skipped, which identities are evaluated and in which
order, which results reject or defer, the SMTP replies, and which recipients
are exempt.  A session asks it twice: plan() says what to evaluate, decide()
judges the outcomes.  It performs no I/O and must not import Milter, spf or
anything that does (it may import model, config and headers).
"""

from __future__ import annotations

from spfmilter.config.schema import Config, PolicyConfig
from spfmilter.core.headers import REPLY_TEXT_LIMIT, clean
from spfmilter.core.model import (
    Action,
    Connection,
    Decision,
    Identity,
    IPAddress,
    IPNetwork,
    Plan,
    Reply,
    Skip,
    SkipFacts,
    SkipReason,
    SpfOutcome,
    SpfResult,
    Transaction,
)

# RFC 7372 section 3.2 (5.7.23 SPF validation failed, 5.7.24 SPF validation
# error) and RFC 3463 for the reply classes.
_REJECT = (550, "5.7.23")
_PERMERROR = (550, "5.7.24")
_DEFER = (451, "4.7.24")


def plan(config: Config, conn: Connection, tx: Transaction, facts: SkipFacts | None = None) -> Plan:
    """What to evaluate for this transaction, HELO first (RFC 7208 2.3).

    Skips are checked in a fixed order, so that the logged reason is
    predictable: skip networks, SASL authentication, trusted relays, sender
    domains, then (once `facts` are known) HELO names that resolve to the
    client, forwarder domains whose SPF the client passes, forward-confirmed
    PTR names.  For the null sender the HELO identity is always evaluated:
    RFC 7208 section 2.4 makes postmaster@<helo> its MAIL FROM identity.
    """
    skip = _skip(config, conn, tx)
    if skip is None and facts is None and config.skip.needs_dns:
        return Plan(facts=True)
    if skip is None and facts is not None:
        skip = _dns_skip(config, conn, facts)
    if skip is not None:
        return Plan(skip=skip)
    policy = config.policy
    return Plan(
        helo=policy.helo_check or tx.null_sender,
        mail_from=not tx.null_sender,
        final_helo_results=frozenset() if policy.dry_run else _refusing(config, tx, Identity.HELO),
    )


def _skip(config: Config, conn: Connection, tx: Transaction) -> Skip | None:
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
    if skip.authenticated and tx.auth_user:
        return Skip(SkipReason.AUTHENTICATED, clean(tx.auth_user, 64))
    for macro in skip.macros:
        if macro in tx.macros:
            return Skip(SkipReason.MACRO, str(macro))
    if _in(ip, skip.trusted_relays):
        return Skip(SkipReason.TRUSTED_RELAY, str(ip))
    if tx.sender_domain and tx.sender_domain in skip.sender_domains:
        return Skip(SkipReason.SENDER_DOMAIN, clean(tx.sender_domain, 253))
    return None


def _dns_skip(config: Config, conn: Connection, facts: SkipFacts) -> Skip | None:
    skip = config.skip
    helo = conn.helo.lower().rstrip(".")
    if facts.helo_confirmed and helo in skip.helo_names:
        return Skip(SkipReason.HELO_NAME, clean(helo, 253))
    if facts.forwarder is not None:
        return Skip(SkipReason.FORWARDER, facts.forwarder)
    for name in facts.ptr_names:
        domain = in_domains(name, skip.ptr_domains)
        if domain is not None:
            return Skip(SkipReason.PTR_DOMAIN, f"{clean(name, 253)} is in {domain}")
    return None


def in_domains(name: str, domains: tuple[str, ...]) -> str | None:
    """The listed domain `name` is, or is below, on label boundaries.

    "mail.example.com" is in "example.com"; "evilexample.com" is not.
    """
    name = name.lower().rstrip(".")
    for domain in domains:
        if name == domain or name.endswith("." + domain):
            return domain
    return None


def _in(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip in net for net in networks if net.version == ip.version)


def decide(
    config: Config,
    tx: Transaction,
    helo: SpfOutcome | None,
    mail_from: SpfOutcome | None,
) -> Decision:
    """The verdict for one transaction, HELO first (RFC 7208 section 2.3).

    The first identity whose result rejects or defers decides; otherwise
    the transaction is accepted.  Dry-run turns any reject or defer into an
    accept and keeps what it would have done in `intended`.
    """
    policy = config.policy
    action, reply, decided_by = Action.ACCEPT, None, None
    for outcome in (helo, mail_from):
        if outcome is None:
            continue
        action = _action(config, tx, outcome.identity, outcome.result)
        if action is not Action.ACCEPT:
            reply = _reply(config, outcome)
            decided_by = outcome.identity
            break
    return Decision(
        action=Action.ACCEPT if policy.dry_run else action,
        intended=action,
        stage=policy.reject_stage,
        reply=None if policy.dry_run else reply,
        decided_by=decided_by,
        helo=helo,
        mail_from=mail_from,
    )


def skipped(policy: PolicyConfig, skip: Skip) -> Decision:
    """The Decision for a transaction SPF is not applied to."""
    return Decision(action=Action.SKIP, intended=Action.SKIP, stage=policy.reject_stage, skip=skip)


def recipient_exempt(policy: PolicyConfig, recipient: str) -> bool:
    """Whether a recipient is never rejected for SPF (e.g. postmaster@).

    Entries ending in '@' match that local part at any domain; others match
    the whole address.  Comparison ignores case and angle brackets.
    """
    address = recipient.strip().strip("<>").lower()
    local = address.rpartition("@")[0] + "@"
    return any(entry in (address, local) for entry in policy.exempt_recipients)


def _refusing(config: Config, tx: Transaction, identity: Identity) -> frozenset[SpfResult]:
    """The results of `identity` that reject or defer this transaction."""
    policy = config.policy
    if identity is Identity.HELO and policy.helo_check:
        rejects = policy.helo_reject
        if policy.helo_reject_null_sender_only and not tx.null_sender:
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


def _action(config: Config, tx: Transaction, identity: Identity, result: SpfResult) -> Action:
    if result not in _refusing(config, tx, identity):
        return Action.ACCEPT
    return Action.DEFER if result is SpfResult.TEMPERROR else Action.REJECT


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
