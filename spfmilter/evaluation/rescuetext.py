"""Text of a rescue's outcome: Authentication-Results resinfos and the
verdict's summary.

This module owns how the DKIM and ARC results of a rescue are written for
other programs: the resinfo strings appended to our Authentication-Results
field (RFC 8601 section 2.2: "dkim=pass header.d=example.com header.s=sel
header.b=abcd1234", RFC 6008 for header.b; RFC 8617 section 6 for "arc="
with the registered header.oldest-pass and smtp.remote-ip), and the
RescueResult value the session decides and logs by (rescue=dkim with the
d=, rescue=arc with the sealer, or rescue=none / temporary with a reason).
Every value came from the message or DNS and is hostile: it goes through
the same cleaning and quoting as the rest of our header fields.  Pure
functions, no I/O.
"""

from __future__ import annotations

from spfmilter.core.headers import clean, comment_text, quote_value
from spfmilter.core.model import IPAddress, RescueKind, RescueResult
from spfmilter.evaluation.rescue import ArcCheck, AuthResult, DkimCheck, RescueOutcome


def resinfos(outcome: RescueOutcome, client_ip: IPAddress | None = None) -> tuple[str, ...]:
    """The resinfos for our Authentication-Results field: one per DKIM
    signature verified (unverified ones, such as unaligned signatures, are
    not reported), then the ARC result when the chain was validated."""
    found = [dkim_resinfo(check) for check in outcome.dkim if check.result is not None]
    if outcome.arc is not None and outcome.arc.result is not None:
        found.append(arc_resinfo(outcome.arc, client_ip))
    return tuple(found)


def dkim_resinfo(check: DkimCheck) -> str:
    """`dkim=<result> (<reason>) header.d=... header.s=... header.b=...`."""
    result = check.result or AuthResult.NONE
    parts = [f"dkim={result.value}"]
    if result is not AuthResult.PASS:
        parts.append(f"({check.reason.value})")
    parts.extend(
        f"{name}={pvalue(value)}"
        for name, value in (
            ("header.d", check.domain),
            ("header.s", check.selector),
            ("header.b", check.signature),
        )
        if value
    )
    return " ".join(parts)


def arc_resinfo(check: ArcCheck, client_ip: IPAddress | None = None) -> str:
    """`arc=<result> (<reason>; sealer) header.oldest-pass=N smtp.remote-ip=...`."""
    result = check.result or AuthResult.NONE
    comment = [] if result is AuthResult.PASS else [check.reason.value]
    if check.sealer:
        comment.append("sealed by " + comment_text(check.sealer))
    parts = [f"arc={result.value}"]
    if comment:
        parts.append(f"({'; '.join(comment)})")
    if check.oldest_pass is not None:
        parts.append(f"header.oldest-pass={check.oldest_pass}")
    if client_ip is not None:
        parts.append(f"smtp.remote-ip={client_ip}")
    return " ".join(parts)


def summary(outcome: RescueOutcome, client_ip: IPAddress | None = None) -> RescueResult:
    """The session's value of an outcome: how it was rescued (the d= of
    the DKIM signature, or the ARC sealer, that rescued), or why not, and
    the resinfos."""
    found = resinfos(outcome, client_ip)
    if outcome.rescued:
        rescuer = outcome.domain if outcome.kind is RescueKind.DKIM else outcome.sealer
        return RescueResult(outcome.kind, clean(rescuer), "", found)
    return RescueResult(outcome.kind, "", outcome.reason.value, found)


def pvalue(value: str) -> str:
    """A property value made safe (control characters, non-ASCII, length)
    and quoted unless a dot-atom."""
    return quote_value(clean(value))
