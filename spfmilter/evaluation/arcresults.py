"""What an ARC sealer recorded: reading ARC-Authentication-Results.

This module owns the reading of the results a sealer saw when the message
reached it (RFC 8617 section 4.1.1: an ARC-Authentication-Results field is
"i=" instance, then an Authentication-Results payload, RFC 8601 section
2.2), and the question the rescue asks of them: did the sealer record an
SPF pass for our MAIL FROM domain, or a DKIM pass aligned with it?

Only the newest set's field is read, and only after its seal has been
checked: it is the trusted sealer's own statement.  The reading is still
defensive (comments, quoted strings, any order of properties), and a
result it cannot read vouches for nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spfmilter.config.orgdomain import PublicSuffixes, normalise
from spfmilter.core.headers import Lexeme, lexemes

# RFC 8601 section 2.2: method [ "/" version ] "=" result, then properties
# ptype "." property "=" pvalue (a token, a quoted-string, or an address).
_METHOD = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_-]*)\s*(?:/\s*[0-9]+\s*)?=\s*([A-Za-z0-9_-]+)")
# Read left to right, a token at a time, so that text inside a quoted
# string (a reason="...") is never taken for a property.
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_TOKEN = re.compile(
    rf"\s*(?:([A-Za-z0-9_-]+)\s*\.\s*([A-Za-z0-9_-]+)\s*=\s*({_QUOTED}|[^\s\";]+)"
    rf'|{_QUOTED}|[^\s"]+|")',
    re.DOTALL,
)
_INSTANCE = re.compile(r"\s*i\s*=\s*([0-9]+)\s*")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True)
class Resinfo:
    """One result: method (lower case), result (lower case) and the
    properties as ("ptype.property", value) pairs, values unquoted."""

    method: str
    result: str
    properties: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        """The first value of property `name` ("smtp.mailfrom")."""
        return next((value for key, value in self.properties if key == name), None)


@dataclass(frozen=True)
class SealerResults:
    """An ARC-Authentication-Results field read: its instance, the
    authserv-id and the results."""

    instance: int
    authserv_id: str
    results: tuple[Resinfo, ...]


def parse(value: str) -> SealerResults | None:
    """Read an ARC-Authentication-Results value; None if it has no
    instance or no authserv-id."""
    segments = _segments(_without_comments(value))
    if len(segments) < 2:
        return None
    instance = _INSTANCE.fullmatch(segments[0])
    words = segments[1].split()
    if instance is None or not words:
        return None
    results = tuple(r for r in (_resinfo(text) for text in segments[2:]) if r is not None)
    return SealerResults(int(instance.group(1)), _unquote(words[0]), results)


def vouches(results: SealerResults, mail_from_domain: str, suffixes: PublicSuffixes) -> str | None:
    """What in the sealer's results vouches for `mail_from_domain`: "spf"
    for an SPF pass of that very domain (smtp.mailfrom, RFC 8601 section
    2.7.2; an address counts by its domain), "dkim" for a DKIM pass whose
    header.d (or, without one, header.i's domain) is aligned with it; None
    otherwise."""
    domain = normalise(mail_from_domain)
    if not domain:
        return None
    for result in results.results:
        if result.method == "spf" and result.result == "pass":
            mailfrom = result.get("smtp.mailfrom")
            if mailfrom is not None and normalise(mailfrom.rpartition("@")[2]) == domain:
                return "spf"
    for result in results.results:
        if result.method == "dkim" and result.result == "pass":
            signer = result.get("header.d") or (result.get("header.i") or "").rpartition("@")[2]
            if signer and suffixes.aligned(signer, domain):
                return "dkim"
    return None


def _without_comments(value: str) -> str:
    """`value` with each of its comments (RFC 5322 section 3.2.2: nested,
    with quoted-pairs) replaced by a space; quoted strings kept as they are."""
    return "".join(" " if kind is Lexeme.COMMENT else text for kind, text in lexemes(value))


def _segments(value: str) -> list[str]:
    """`value` cut at each ";" outside quoted strings."""
    segments: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = quoted
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            segments.append("".join(current))
            current = []
            continue
        current.append(char)
    segments.append("".join(current))
    return segments


def _resinfo(text: str) -> Resinfo | None:
    method = _METHOD.match(text)
    if method is None:
        return None
    properties = []
    position = method.end()
    while (token := _TOKEN.match(text, position)) is not None and token.end() > position:
        position = token.end()
        ptype, name, value = token.groups()
        if ptype is not None:
            properties.append((f"{ptype.lower()}.{name.lower()}", _unquote(value)))
    return Resinfo(method.group(1).lower(), method.group(2).lower(), tuple(properties))


def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return value
