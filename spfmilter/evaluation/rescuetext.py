"""Text of a rescue's outcome: Authentication-Results resinfos and the
verdict line's fields.

This module owns how the DKIM and ARC results of a rescue are written for
other programs: the resinfo strings the caller appends to its own
Authentication-Results field (RFC 8601 section 2.2: "dkim=pass
header.d=example.com header.s=sel header.b=abcd1234", RFC 6008 for
header.b; RFC 8617 section 6 for "arc=" with the registered header.oldest-pass
and smtp.remote-ip), and the short key=value tokens of the verdict line
(rescue=dkim rescue_domain=example.com, or rescue=none rescue_reason=...).
Every value came from the message or DNS and is hostile: control characters
go, length is capped, and values that are not dot-atoms are quoted.  Pure
functions, no I/O.
"""

from __future__ import annotations

import re

from spfmilter.evaluation.rescue import ArcCheck, AuthResult, DkimCheck, RescueOutcome, RescueStatus
from spfmilter.model import IPAddress

# A property value: a domain name is at most 253 characters (RFC 1035
# section 2.3.4); the rest of a value is capped like it.
VALUE_LIMIT = 255
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")
# RFC 5322 section 3.2.3 dot-atom: what a pvalue may be unquoted.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def resinfos(outcome: RescueOutcome, client_ip: IPAddress | None = None) -> tuple[str, ...]:
    """The resinfos for the caller's Authentication-Results field: one per
    DKIM signature verified (unverified ones, such as unaligned signatures,
    are not reported), then the ARC result when the chain was validated."""
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
        # RFC 5322 section 3.2.2: "(", ")" and "\\" in a comment are quoted.
        comment.append("sealed by " + re.sub(r"([()\\])", r"\\\1", _token(check.sealer)))
    parts = [f"arc={result.value}"]
    if comment:
        parts.append(f"({'; '.join(comment)})")
    if check.oldest_pass is not None:
        parts.append(f"header.oldest-pass={check.oldest_pass}")
    if client_ip is not None:
        parts.append(f"smtp.remote-ip={client_ip}")
    return " ".join(parts)


def verdict_fields(outcome: RescueOutcome) -> dict[str, str]:
    """The verdict line's fields: rescue=dkim|arc with the domain and the
    selector or sealer; rescue=none (refused) or rescue=temperror
    (deferred) with the reason."""
    if outcome.rescued and outcome.method is not None:
        fields = {"rescue": outcome.method.value, "rescue_domain": _token(outcome.domain)}
        if outcome.selector:
            fields["rescue_selector"] = _token(outcome.selector)
        if outcome.sealer:
            fields["rescue_sealer"] = _token(outcome.sealer)
        return fields
    state = "temperror" if outcome.status is RescueStatus.TEMPORARY else "none"
    return {"rescue": state, "rescue_reason": outcome.reason.value}


def pvalue(value: str) -> str:
    """A property value made safe: control characters removed, non-ASCII
    escaped, capped, quoted (RFC 5322 quoted-string) unless a dot-atom."""
    text = _token(value)
    if _DOT_ATOM.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _token(value: str) -> str:
    text = _UNSAFE.sub("", value)
    if not text.isascii():
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text[:VALUE_LIMIT]
