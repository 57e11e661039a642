"""Verdict and skip lines as spfmilter writes them, for the report's tests:
its own field formatting (format_fields) and text formatter (escape), in
the syslog form rsyslog writes to mail.log."""

from __future__ import annotations

from spfmilter.core.verdicts import format_fields
from spfmilter.printable import escape

PREFIX = "Dec  2 10:15:01 mx spfmilter[4711]: "


def verdict(
    sender: str = "alice@example.org",
    result: str = "pass",
    action: str = "accept",
    *,
    identity: str = "mailfrom",
    client_ip: str = "198.51.100.7",
    **extra: object,
) -> str:
    """One verdict line; `extra` fields (client_name, rescue, dry_run...)
    go where spfmilter puts optional ones, after the fixed ones."""
    fields: dict[str, object] = {"queue_id": "NOQUEUE", "conn": 1, "client_ip": client_ip}
    fields.update(helo="mail.example.org", sender=sender, identity=identity, result=result)
    fields.update(mechanism="-all", action=action, stage="rcpt", **extra, lookup_ms=3)
    return PREFIX + escape(f"NOQUEUE: verdict {format_fields(fields, 1)}")


def skip(reason: str, client_ip: str = "203.0.113.10", sender: str = "bob@example.org") -> str:
    """One skip line."""
    fields: dict[str, object] = {"queue_id": "NOQUEUE", "conn": 1, "client_ip": client_ip}
    fields.update(helo="x", sender=sender, action="skip", reason=reason)
    return PREFIX + escape(f"NOQUEUE: SPF skipped - {reason} {format_fields(fields, 1)}")
