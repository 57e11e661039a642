"""The policy engine: a pure function from facts to a Decision.

This module owns what spfmilter does with SPF results: which clients and
transactions are skipped, which identities are evaluated and in which
order, which results reject or defer, the SMTP replies, and which recipients
are exempt.  It performs no I/O and must not import Milter, spf or anything
that does (it may import model, config and headers).
"""

from __future__ import annotations

from spfmilter.config import Config, PolicyConfig
from spfmilter.headers import clean
from spfmilter.model import (
    Action,
    Connection,
    Decision,
    Identity,
    IPAddress,
    IPNetwork,
    Reply,
    SkipFacts,
    SpfOutcome,
    SpfResult,
    Transaction,
)

LOCALHOST_REASON = "localhost is always allowed"

# RFC 7372 section 3.2 (5.7.23 SPF validation failed, 5.7.24 SPF validation
# error) and RFC 3463 for the reply classes.
_REJECT = (550, "5.7.23")
_PERMERROR = (550, "5.7.24")
_DEFER = (451, "4.7.24")


def skip_reason(
    config: Config, conn: Connection, tx: Transaction, facts: SkipFacts | None
) -> str | None:
    """Why SPF is not applied to this transaction, or None to apply it.

    Checked in a fixed order so that the logged reason is predictable: skip
    networks, SASL authentication, trusted relays, HELO names that resolve to
    the client, forwarder domains whose SPF the client passes, forward-
    confirmed PTR names, sender domains.  With `facts` None (DNS not asked
    yet) the skips that need DNS are left out.
    """
    skip = config.skip
    ip = conn.client_ip
    if ip is None:
        # Mail submitted on the MTA host itself (Postfix non_smtpd_milters,
        # sendmail -bs) has no SMTP client whose address SPF could check.
        return "no client IP address (local submission)"
    if _in(ip, skip.networks):
        return LOCALHOST_REASON if ip.is_loopback else f"client {ip} in skip networks"
    if skip.authenticated and tx.auth_user:
        return f"SASL authenticated as {clean(tx.auth_user, 64)}"
    if _in(ip, skip.trusted_relays):
        return f"client {ip} is a trusted relay"
    if facts is not None:
        helo = conn.helo.lower().rstrip(".")
        if facts.helo_confirmed and helo in skip.helo_names:
            return f"HELO {clean(helo, 253)} resolves to the client"
        if facts.forwarder is not None:
            return f"client passes SPF of forwarder {facts.forwarder}"
        for name in facts.ptr_names:
            domain = in_domains(name, skip.ptr_domains)
            if domain is not None:
                return f"client's confirmed PTR name {clean(name, 253)} is in {domain}"
    if tx.sender_domain and tx.sender_domain in skip.sender_domains:
        return f"sender domain {clean(tx.sender_domain, 253)} is exempt"
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


def helo_identity_checked(policy: PolicyConfig, tx: Transaction) -> bool:
    """Whether the HELO identity is evaluated for this transaction.

    For the null sender it always is: RFC 7208 section 2.4 makes
    postmaster@<helo> the MAIL FROM identity of a bounce.
    """
    return policy.helo_check or tx.null_sender


def mail_from_needed(config: Config, tx: Transaction, helo: SpfOutcome | None) -> bool:
    """Whether MAIL FROM must be evaluated after the HELO outcome is known.

    Not for the null sender (the HELO result is final), and not when the
    HELO result already rejects or defers, unless dry-run wants the full
    picture.
    """
    if tx.null_sender:
        return False
    if config.policy.dry_run or helo is None:
        return True
    return _verdict(config, tx, helo)[0] is Action.ACCEPT


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
        action, reply = _verdict(config, tx, outcome)
        if action is not Action.ACCEPT:
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


def skipped(policy: PolicyConfig, reason: str) -> Decision:
    """The Decision for a transaction SPF is not applied to."""
    return Decision(
        action=Action.SKIP, intended=Action.SKIP, stage=policy.reject_stage, skip_reason=reason
    )


def recipient_exempt(policy: PolicyConfig, recipient: str) -> bool:
    """Whether a recipient is never rejected for SPF (e.g. postmaster@).

    Entries ending in '@' match that local part at any domain; others match
    the whole address.  Comparison ignores case and angle brackets.
    """
    address = recipient.strip().strip("<>").lower()
    local = address.rpartition("@")[0] + "@"
    return any(entry in (address, local) for entry in policy.exempt_recipients)


def _verdict(config: Config, tx: Transaction, outcome: SpfOutcome) -> tuple[Action, Reply | None]:
    policy = config.policy
    result = outcome.result
    if outcome.identity is Identity.HELO and policy.helo_check:
        rejects = policy.helo_reject
        if policy.helo_reject_null_sender_only and not tx.null_sender:
            rejects = frozenset()
    else:
        # A bounce's HELO identity checked only because it is the MAIL FROM
        # identity (helo_check = no) is judged by the MAIL FROM rules.
        rejects = policy.mailfrom_reject
    if result is SpfResult.TEMPERROR:
        if policy.temperror_defer:
            return Action.DEFER, _reply(config, _DEFER, outcome)
        return Action.ACCEPT, None
    if result is SpfResult.PERMERROR and (policy.permerror_reject or result in rejects):
        return Action.REJECT, _reply(config, _PERMERROR, outcome)
    if result in rejects:
        return Action.REJECT, _reply(config, _REJECT, outcome)
    return Action.ACCEPT, None


def _reply(config: Config, code: tuple[int, str], outcome: SpfOutcome) -> Reply:
    who = "HELO" if outcome.identity is Identity.HELO else "MAIL FROM"
    text = f"SPF {who} check for {outcome.sender}: {outcome.result.value}"
    detail = outcome.explanation or outcome.problem
    if detail:
        text += f": {detail}"
    if outcome.result is SpfResult.TEMPERROR:
        text += "; try again later"
    status = code[1] if config.reply.enhanced_status_codes else None
    return Reply(code[0], status, text)
