"""``spfmilter check``: one transaction through the milter's own Session, no MTA.

This module owns the check command's engine and its two front ends: a
command line (client IP, HELO, sender, recipients) and the Postfix policy
delegation protocol (attribute blocks on stdin, ``action=`` answers).  It
evaluates nothing itself: it drives a Session (the class the milter's
adapter drives) with the services the daemon would build, so the evaluation,
the policy and the header builder are exactly the milter's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from spfmilter.config.schema import Config
from spfmilter.core.model import Action, Decision, Macro, SpfOutcome
from spfmilter.core.session import Services, Session

# The recipient used when none is given.  Not postmaster@: that is the usual
# exempt recipient, and would hide a reject.
DEFAULT_RECIPIENT = "user@example.invalid"


@dataclass
class RecipientResult:
    """What the MTA is told for one RCPT."""

    address: str
    action: Action
    reply: str | None = None


@dataclass
class CheckResult:
    """Everything one checked transaction produced."""

    client_ip: str
    helo: str
    sender: str
    decision: Decision
    mail_action: Action
    mail_reply: str | None
    recipients: list[RecipientResult] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    # The answer at end of data: a refusal there when a MAIL FROM fail
    # waited for its rescue (the check has no message: none rescues it).
    data_action: Action = Action.ACCEPT
    data_reply: str | None = None


@dataclass(frozen=True)
class Request:
    """The input of one check."""

    client_ip: str
    helo: str
    sender: str
    recipients: tuple[str, ...] = (DEFAULT_RECIPIENT,)
    auth_user: str = ""
    queue_id: str = ""
    client_name: str = ""
    macros: tuple[Macro, ...] = ()


def run(config: Config, services: Services, request: Request) -> CheckResult:
    """Drive one Session through connect, HELO, MAIL, RCPT... and end of message.

    Stops where an MTA would: after a MAIL refusal, or when every recipient
    was refused.  Raises ValueError for a client IP that is not one.
    """
    ip = ipaddress.ip_address(request.client_ip)
    session = Session(config, services)
    try:
        # No MTA name (macro j): the receiver is named as for an MTA that
        # sends none (authserv_id, else this host's name).
        session.connect(ip, request.client_name or f"[{ip}]", "")
        session.hello(request.helo)
        step = session.mail(request.sender, request.auth_user, request.macros)
        assert session.transaction is not None
        result = CheckResult(
            client_ip=str(ip),
            helo=request.helo,
            sender=request.sender,
            decision=session.transaction.decision,
            mail_action=step.action,
            mail_reply=str(step.reply) if step.reply else None,
        )
        if step.action is not Action.ACCEPT:
            return result
        for address in request.recipients:
            step = session.rcpt(f"<{address}>")
            reply = str(step.reply) if step.reply else None
            result.recipients.append(RecipientResult(address, step.action, reply))
        if any(r.action is Action.ACCEPT for r in result.recipients):
            transaction = session.transaction
            step = session.end_of_data(request.queue_id)
            result.data_action = step.action
            result.data_reply = str(step.reply) if step.reply else None
            result.decision = transaction.decision  # final, after a rescue
            if step.action is Action.ACCEPT:
                result.headers = list(session.end_of_message(request.queue_id).insert)
        return result
    finally:
        session.abort(request.queue_id)
        session.close(request.queue_id)


# --- command line output -------------------------------------------------


def outcome_dict(outcome: SpfOutcome | None) -> dict[str, Any] | None:
    """An identity's outcome as JSON-ready data."""
    if outcome is None:
        return None
    return {
        "identity": outcome.identity.value,
        "result": outcome.result.value,
        "domain": outcome.domain,
        "sender": outcome.sender,
        "mechanism": outcome.mechanism,
        "explanation": outcome.explanation,
        "problem": outcome.problem,
        "lookup_ms": round(outcome.lookup_seconds * 1000, 1),
    }


def as_json(result: CheckResult) -> str:
    """One JSON object describing the checked transaction."""
    decision = result.decision
    data: dict[str, Any] = {
        "client_ip": result.client_ip,
        "helo": result.helo,
        "sender": result.sender,
        "helo_result": outcome_dict(decision.helo),
        "mail_from_result": outcome_dict(decision.mail_from),
        "skip_reason": decision.skip.text if decision.skip else None,
        "decision": decision.action.value,
        "intended": decision.intended.value,
        "stage": decision.stage.value,
        "mail": {"action": result.mail_action.value, "reply": result.mail_reply},
        "recipients": [dataclasses.asdict(r) for r in result.recipients],
        "data": {"action": result.data_action.value, "reply": result.data_reply},
        "headers": [{"name": n, "value": v} for n, v in result.headers],
    }
    return json.dumps(data, indent=2)


def as_text(result: CheckResult) -> str:
    """The checked transaction, for a person."""
    decision = result.decision
    lines = [
        f"client {result.client_ip}  HELO {result.helo or '(none)'}  MAIL FROM <{result.sender}>"
    ]
    if decision.skip is not None:
        lines.append(f"skipped:    {decision.skip.text}")
    for label, outcome in (("HELO", decision.helo), ("MAIL FROM", decision.mail_from)):
        if outcome is not None:
            detail = f"mechanism {outcome.mechanism}" if outcome.mechanism else "no mechanism"
            if outcome.problem:
                detail = outcome.problem
            lines.append(
                f"{label + ':':<11} {outcome.result.value} ({detail}; "
                f"{outcome.lookup_seconds * 1000:.0f} ms)"
            )
    verdict = decision.action.value
    if decision.intended is not decision.action:
        verdict += f" (dry run; would {decision.intended.value})"
    lines.append(f"decision:   {verdict} at {decision.stage.value}")
    if result.mail_reply:
        lines.append(f"MAIL reply: {result.mail_reply}")
    for rcpt in result.recipients:
        lines.append(f"RCPT <{rcpt.address}>: {rcpt.reply or rcpt.action.value}")
    if result.data_reply:
        lines.append(f"end of data: {result.data_reply}")
    for name, value in result.headers:
        lines.append(f"{name}: {value}")
    return "\n".join(lines)


# --- Postfix policy delegation protocol ----------------------------------


# Bounds on what one policy request may hold: Postfix's attributes are short
# (a few hundred characters with a TLS certificate subject), and nothing
# read from stdin may grow without end.
MAX_LINE = 16384
MAX_ATTRIBUTES = 256


def read_blocks(stream: IO[str], warn: Callable[[str], None]) -> Iterator[dict[str, str]]:
    """Attribute blocks (name=value lines ended by an empty line).

    A line without '=', longer than MAX_LINE characters, or beyond
    MAX_ATTRIBUTES in its block is reported through `warn` and marks its
    block malformed (key ""), to be answered DUNNO; a line too long is
    skipped without being held in memory.  End of input ends the blocks; a
    last block without its empty line is still answered.
    """
    block: dict[str, str] = {}
    number = 0
    while raw := stream.readline(MAX_LINE + 1):
        number += 1
        if len(raw) > MAX_LINE and not raw.endswith("\n"):
            warn(f"line {number}: longer than {MAX_LINE} characters")
            block[""] = "malformed"
            while (rest := stream.readline(MAX_LINE)) and not rest.endswith("\n"):
                pass
            continue
        line = raw.rstrip("\r\n")
        if not line:
            if block:
                yield block
            block = {}
            continue
        name, sep, value = line.partition("=")
        if not sep or not name:
            warn(f"line {number}: expected name=value, got {line[:80]!r}")
            block[""] = "malformed"
            continue
        if len(block) >= MAX_ATTRIBUTES:
            if "" not in block:
                warn(f"line {number}: more than {MAX_ATTRIBUTES} attributes in one request")
            block[""] = "malformed"
            continue
        block[name.strip()] = value
    if block:
        yield block


def policy_request(block: Mapping[str, str]) -> Request | None:
    """The Request an attribute block describes (None: nothing to check)."""
    if "" in block or block.get("request") != "smtpd_access_policy":
        return None
    address = block.get("client_address", "")
    if not address:
        return None
    recipient = block.get("recipient", "")
    return Request(
        client_ip=address,
        helo=block.get("helo_name", ""),
        sender=block.get("sender", ""),
        recipients=(recipient or DEFAULT_RECIPIENT,),
        auth_user=block.get("sasl_username", ""),
        queue_id=block.get("queue_id", ""),
        client_name=block.get("client_name", ""),
    )


def policy_action(result: CheckResult) -> str:
    """The policy servers' answer for a checked transaction."""
    reply = result.mail_reply
    action = result.mail_action
    if action is Action.ACCEPT and result.recipients:
        reply, action = result.recipients[0].reply, result.recipients[0].action
    if action is Action.ACCEPT and result.data_action is not Action.ACCEPT:
        reply, action = result.data_reply, result.data_action
    if action is Action.REJECT and reply:
        return f"action={reply}"
    if action is Action.DEFER and reply:
        # The policy servers' temperror answer: defer only if the rest of
        # the restrictions would have accepted (RFC 7372 text kept).
        return f"action=DEFER_IF_PERMIT {reply}"
    if result.headers:
        # One action per answer: the first header (Received-SPF unless only
        # Authentication-Results is configured), unfolded onto one line.
        name, value = result.headers[0]
        return f"action=PREPEND {name}: {' '.join(value.split())}"
    return "action=DUNNO"


def serve_policy(
    config: Config, services: Services, stream: IO[str], out: IO[str], err: IO[str] = sys.stderr
) -> None:
    """Answer every attribute block on `stream` until end of input."""

    def warn(message: str) -> None:
        print(f"spfmilter check: {message}", file=err)

    for block in read_blocks(stream, warn):
        answer = "action=DUNNO"
        request = policy_request(block)
        if request is not None:
            try:
                answer = policy_action(run(config, services, request))
            except ValueError as error:
                warn(f"client_address {request.client_ip!r}: {error}")
        out.write(f"{answer}\n\n")
        out.flush()
