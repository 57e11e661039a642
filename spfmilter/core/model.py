"""Value types shared by every layer of spfmilter.

This module owns the vocabulary: SPF results and identities (RFC 7208 names),
the per-connection and per-transaction facts the milter gathers, the Plan
the policy makes, the Outcomes its evaluation finds, and the Decision the
policy returns.  Everything here is an immutable value.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SpfResult(enum.StrEnum):
    """The seven results of check_host() (RFC 7208 section 2.6)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


class Identity(enum.StrEnum):
    """The identity an SPF check authorises (RFC 7208 section 2.3 and 2.4).

    The value is the `identity=` key of Received-SPF (RFC 7208 section 9.1).
    """

    HELO = "helo"
    MAIL_FROM = "mailfrom"

    @property
    def scope(self) -> str:
        """The scope word used in result comments ('helo' or 'mfrom')."""
        return "helo" if self is Identity.HELO else "mfrom"


class Action(enum.StrEnum):
    """What the MTA is told to do with the transaction."""

    ACCEPT = "accept"
    REJECT = "reject"
    DEFER = "defer"
    SKIP = "skip"


class Stage(enum.StrEnum):
    """The SMTP command whose reply carries a reject or defer."""

    MAIL = "mail"
    RCPT = "rcpt"


@dataclass(frozen=True)
class SpfQuery:
    """Everything one check_host() evaluation depends on besides DNS
    (RFC 7208 section 4.1): the identity, the client, the HELO, the sender
    (MAIL FROM, or "" for the HELO identity) and the receiver's name."""

    identity: Identity
    client_ip: IPAddress
    helo: str
    mail_from: str
    receiver: str


@dataclass(frozen=True)
class SpfOutcome:
    """The result of evaluating one identity.

    `domain` is the domain whose policy was evaluated, `sender` the address
    check_host() saw (``postmaster@<helo>`` for the HELO identity),
    `explanation` the text of the domain's exp= modifier when it gave one
    (RFC 7208 section 6.2), `problem` the error text of a permerror or
    temperror, `mechanism` the mechanism that matched, if any.
    """

    identity: Identity
    result: SpfResult
    domain: str
    sender: str
    mechanism: str | None = None
    explanation: str | None = None
    problem: str | None = None
    lookup_seconds: float = 0.0


@dataclass(frozen=True)
class Connection:
    """What is known about the SMTP client once it has said HELO.

    `receiver` is the MTA's name for itself (macro ``j``); `helo` is the
    client's real HELO/EHLO argument, never its PTR name.
    """

    client_ip: IPAddress | None
    client_name: str
    receiver: str
    helo: str = ""


@dataclass(frozen=True)
class Macro:
    """A milter macro and a value, such as {daemon_name}=ORIGINATING."""

    name: str
    value: str

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


@dataclass(frozen=True)
class Envelope:
    """What MAIL FROM says about one transaction.

    `mail_from` is the reverse-path without angle brackets; ``""`` is the
    null sender.  `auth_user` is the SASL login name (macro
    ``{auth_authen}``) or ``""``.  `macros` holds the values the MTA sent
    for the macros [skip] macros names.
    """

    mail_from: str
    auth_user: str = ""
    macros: tuple[Macro, ...] = ()

    @property
    def null_sender(self) -> bool:
        """True for ``MAIL FROM:<>`` (bounces, RFC 5321 section 4.5.5)."""
        return self.mail_from == ""

    @property
    def sender_domain(self) -> str:
        """The domain part of the reverse-path, lower-cased ("" if none)."""
        _, _, domain = self.mail_from.rpartition("@")
        return domain.lower().rstrip(".")


class SkipReason(enum.StrEnum):
    """Why SPF is not applied to a transaction; the value labels the skip
    metric, the template (filled with a detail) is the logged reason."""

    LOCAL_SUBMISSION = "local_submission"
    LOCALHOST = "localhost"
    NETWORK = "network"
    AUTHENTICATED = "authenticated"
    TRUSTED_RELAY = "trusted_relay"
    HELO_NAME = "helo_name"
    FORWARDER = "forwarder"
    PTR_DOMAIN = "ptr_domain"
    SENDER_DOMAIN = "sender_domain"
    MACRO = "macro"

    @property
    def template(self) -> str:
        """The reason's wording, "{}" standing for its detail."""
        return _SKIP_TEMPLATES[self]


_SKIP_TEMPLATES = {
    SkipReason.LOCAL_SUBMISSION: "no client IP address (local submission)",
    # The wording of the classic policy servers (postfix-policyd-spf-perl).
    SkipReason.LOCALHOST: "localhost is always allowed",
    SkipReason.NETWORK: "client {} in skip networks",
    SkipReason.AUTHENTICATED: "SASL authenticated as {}",
    SkipReason.TRUSTED_RELAY: "client {} is a trusted relay",
    SkipReason.HELO_NAME: "HELO {} resolves to the client",
    SkipReason.FORWARDER: "client passes SPF of forwarder {}",
    SkipReason.PTR_DOMAIN: "client's confirmed PTR name {}",
    SkipReason.SENDER_DOMAIN: "sender domain {} is exempt",
    SkipReason.MACRO: "MTA macro {}",
}


@dataclass(frozen=True)
class Skip:
    """A transaction SPF is not applied to: the reason and its detail (a
    client address, a name), already made safe for headers and logs."""

    reason: SkipReason
    detail: str = ""

    @property
    def text(self) -> str:
        """The reason in words, e.g. "SASL authenticated as bob"."""
        return self.reason.template.format(self.detail)


@dataclass(frozen=True)
class SkipFacts:
    """What DNS said about the client for the skips a Plan lists: each fact
    found is a skip.

    `helo_confirmed`: the plan's HELO name resolves (A/AAAA) to the client
    IP.  `forwarder`: a listed forwarder domain whose SPF policy the client
    passes.  `ptr`: a forward-confirmed PTR name of the client and the
    listed domain it is in.
    """

    helo_confirmed: bool = False
    forwarder: str | None = None
    ptr: tuple[str, str] | None = None

    @property
    def found(self) -> bool:
        """Whether any fact was found, so that a skip applies."""
        return self.helo_confirmed or self.forwarder is not None or self.ptr is not None


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: code, optional enhanced status code, text."""

    code: int
    status: str | None
    text: str

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.status:
            parts.append(self.status)
        parts.append(self.text)
        return " ".join(parts)


@dataclass(frozen=True)
class Plan:
    """Everything the policy needs evaluated for one transaction, said once.

    `skip`: SPF is not applied, and nothing is evaluated.  Otherwise DNS
    facts about the client come first, each of which is a skip: whether
    `helo_name` (the HELO, when [skip] helo_names lists it) resolves to the
    client, a domain of `forwarder_domains` whose SPF policy the client
    passes, a forward-confirmed PTR name in `ptr_domains`.  Then the
    identities `helo` and `mail_from` say to evaluate, HELO first (RFC 7208
    section 2.3).  `helo_refusing` and `mail_from_refusing` are the results
    of each identity that reject or defer the transaction; MAIL FROM is not
    evaluated after a HELO result in `final_helo_results` (the HELO result
    refuses already; empty in dry-run, which evaluates both).
    """

    skip: Skip | None = None
    helo_name: str | None = None
    forwarder_domains: tuple[str, ...] = ()
    ptr_domains: tuple[str, ...] = ()
    helo: bool = False
    mail_from: bool = False
    helo_refusing: frozenset[SpfResult] = frozenset()
    mail_from_refusing: frozenset[SpfResult] = frozenset()
    final_helo_results: frozenset[SpfResult] = frozenset()

    @property
    def needs_facts(self) -> bool:
        """Whether a skip needs DNS facts about the client."""
        return self.helo_name is not None or bool(self.forwarder_domains or self.ptr_domains)


@dataclass(frozen=True)
class Outcomes:
    """What the evaluation of a Plan found: the skip facts, and the outcome
    of each identity evaluated (None: not evaluated)."""

    facts: SkipFacts = SkipFacts()
    helo: SpfOutcome | None = None
    mail_from: SpfOutcome | None = None


class RescueKind(enum.StrEnum):
    """How the rescue of a MAIL FROM fail ended; the value is the verdict
    line's `rescue=` token and the rescue metric's label."""

    DKIM = "dkim"
    ARC = "arc"
    NONE = "none"
    OVERSIZED = "oversized"
    TEMPORARY = "temporary"

    @property
    def rescues(self) -> bool:
        """Whether the message is accepted despite its MAIL FROM fail."""
        return self in (RescueKind.DKIM, RescueKind.ARC)


@dataclass(frozen=True)
class RescueResult:
    """The end of a rescue: its kind, the DKIM d= or the ARC sealer that
    rescued (`domain`), why it did not (`reason`, a short token), and the
    DKIM and ARC resinfos for Authentication-Results (RFC 8601 section 2.2,
    RFC 8617 section 6), already made safe."""

    kind: RescueKind
    domain: str = ""
    reason: str = ""
    resinfos: tuple[str, ...] = ()

    @property
    def rescued(self) -> bool:
        """Whether the message is accepted despite its MAIL FROM fail."""
        return self.kind.rescues


@dataclass(frozen=True)
class Step:
    """The answer to one SMTP command: go on, or refuse it with a reply."""

    action: Action = Action.ACCEPT
    reply: Reply | None = None


@dataclass(frozen=True)
class HeaderChanges:
    """What end of message changes in the header: occurrences of a field to
    delete (name, index counted from 1), then fields to insert at the top,
    in order."""

    delete: tuple[tuple[str, int], ...] = ()
    insert: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Decision:
    """The policy engine's verdict on one transaction.

    `action` is what the MTA is told; `intended` is what the policy asked
    for before dry-run turned it into an accept (equal to `action`
    otherwise).  `decided_by` names the identity whose result caused a reject
    or defer.  `helo` and `mail_from` are the outcomes available for
    headers; `report` is the one that Received-SPF reports (RFC 7208
    section 9.1: the MAIL FROM result whenever the sender is not null).
    `skip` is set when SPF was not evaluated at all.  `pending_rescue`:
    the decision is "refuse unless rescued", made final at end of message
    by the DKIM and ARC checks of the message (`action` and `reply` say
    what happens without a rescue); `rescue` is how that ended.
    """

    action: Action
    intended: Action
    stage: Stage
    reply: Reply | None = None
    decided_by: Identity | None = None
    helo: SpfOutcome | None = None
    mail_from: SpfOutcome | None = None
    skip: Skip | None = None
    pending_rescue: bool = False
    rescue: RescueResult | None = None

    @property
    def report(self) -> SpfOutcome | None:
        """The outcome that Received-SPF carries."""
        return self.mail_from if self.mail_from is not None else self.helo
