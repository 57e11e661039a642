"""The one log line of a transaction's verdict, and its metrics.

This module owns what an administrator reads per transaction: one INFO line
that starts with the queue id as Postfix's own lines do ("4XyZ1: ", or
"NOQUEUE: " before there is one), then "verdict" and key=value fields (the
connection, the client and its name, the identity that decided, its result,
the action, and how a rescue of a MAIL FROM fail ended),
or "SPF skipped - <reason>" and the fields for a skipped one; the same
fields, queue_id included, as JSON keys; and the verdict, skip and rescue
counters.
Values are quoted here; making them safe for a log line is the formatters'
job (the process layer's log formatters).
"""

from __future__ import annotations

import logging
import re

from spfmilter.core.metrics import Metrics
from spfmilter.core.model import Connection, Decision, Envelope, Identity, SpfOutcome

log = logging.getLogger("spfmilter.verdicts")

FIELD_LIMIT = 400
_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


def record(
    metrics: Metrics,
    decision: Decision,
    *,
    queue_id: str,
    conn_id: int,
    conn: Connection,
    envelope: Envelope,
    exempt: list[str],
) -> None:
    """Log the verdict line of one transaction and count it."""
    fields: dict[str, object] = {
        "queue_id": (queue_id or "NOQUEUE")[:FIELD_LIMIT],
        "conn": conn_id,
        "client_ip": conn.client_ip,
        "client_name": conn.client_name,
        "helo": conn.helo,
        "sender": envelope.mail_from,
    }
    if decision.skip is not None:
        metrics.skips.labels(decision.skip.reason.value).inc()
        fields.update(action="skip", reason=decision.skip.text)
        _info(
            fields,
            "%s: SPF skipped - %s %s",
            fields["queue_id"],
            decision.skip.text,
            format_fields(fields, 1),
        )
        return
    outcome = _deciding(decision)
    assert outcome is not None  # a decision that is no skip has an outcome
    fields.update(
        identity=outcome.identity.value,
        result=outcome.result.value,
        mechanism=outcome.mechanism or "-",
        action=decision.intended.value,
        stage=decision.stage.value,
    )
    if decision.reply is not None:
        fields["reply"] = str(decision.reply)
    if decision.action is not decision.intended:
        fields["dry_run"] = "yes"
    if exempt:
        fields["exempt_recipients"] = ",".join(exempt)
    rescue = decision.rescue
    if rescue is not None:
        fields["rescue"] = rescue.kind.value
        if rescue.domain:
            fields["rescue_domain"] = rescue.domain
        if rescue.reason:
            fields["rescue_reason"] = rescue.reason
        metrics.rescues.labels(rescue.kind.value).inc()
    lookup = sum(o.lookup_seconds for o in (decision.helo, decision.mail_from) if o)
    fields["lookup_ms"] = round(lookup * 1000)
    metrics.verdicts.labels(
        outcome.identity.value, outcome.result.value, decision.intended.value
    ).inc()
    _info(fields, "%s: verdict %s", fields["queue_id"], format_fields(fields, 1))


def _info(fields: dict[str, object], message: str, *args: object) -> None:
    """Log the line at INFO, its fields beside it for the JSON format.

    The record is made here rather than by log.info(), which would also
    look for the caller's file and line on the stack: no format shows them,
    and that search would add about a fifth to the line's cost, on every
    transaction.
    """
    if log.isEnabledFor(logging.INFO):
        record = log.makeRecord(
            log.name,
            logging.INFO,
            "(unknown file)",
            0,
            message,
            args,
            None,
            extra={"fields": fields},
        )
        log.handle(record)


def _deciding(decision: Decision) -> SpfOutcome | None:
    if decision.decided_by is Identity.HELO:
        return decision.helo
    return decision.report


def format_fields(fields: dict[str, object], skip: int = 0) -> str:
    """key=value pairs, leaving out the first `skip`; values with spaces,
    quotes or '=' are double-quoted, and each is capped at FIELD_LIMIT
    characters."""
    parts = []
    for key, value in list(fields.items())[skip:]:
        text = str(value if value is not None else "-")
        if len(text) > FIELD_LIMIT:
            text = text[: FIELD_LIMIT - 3] + "..."
        if not text or _NEEDS_QUOTES.search(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)
