"""Pure text: Received-SPF and Authentication-Results values, reply sanitising.

This module owns how results are written for other programs to read, and
how what those programs read is recognised: the RFC 7208 section 9.1
Received-SPF layout (key order as the classic Perl policy server writes it),
RFC 8601 Authentication-Results, quoting and folding, the hygiene applied to
any text that came from the client or from DNS, the RFC 5322 lexing of a
structured field body (comments, quoted strings, quoted-pairs) for those
that read one, and which authserv-ids an incoming Authentication-Results
claims in the eyes of the programs that trust it (so that forgeries of ours
are found however they are spelled).  No I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator

from spfmilter.core.model import Identity, IPAddress, Skip, SpfOutcome, SpfResult

RECEIVED_SPF = "Received-SPF"
AUTHENTICATION_RESULTS = "Authentication-Results"

# RFC 5322 section 2.1.1: lines SHOULD be no longer than 78 characters.
FOLD_AT = 78
# RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets with CRLF;
# leave room for the code, the enhanced status code and the MTA's own text.
REPLY_TEXT_LIMIT = 400
FIELD_LIMIT = 255

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_COMMENT_SPECIALS = re.compile(r"([()\\])")
# RFC 5322 section 3.2.3 atext, used for the dot-atom test of RFC 7208 9.1.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")

# The readers of Authentication-Results, in C (isspace) and Perl (\s), take
# only these for white space.
_SPACE = " \t\n\v\f\r"
# Characters OpenDMARC's tokenizer makes tokens of their own.
_DELIMITERS = ";=."
# The RFC 2045 section 5.1 token as SpamAssassin 4 matches an authserv-id:
# ASCII but controls, space and the tspecials, of which it allows "\".
_TOKEN = re.compile(r'[^\x00-\x20\x80-\U0010ffff()<>@,;:/\[\]?="]+')
_DIGITS = re.compile(r"[0-9]+")
_PARENTHESES = re.compile(r"[()]")


def clean(text: str, limit: int = FIELD_LIMIT) -> str:
    """Make hostile text safe for one header or reply line.

    Control characters (CR and LF among them, so nothing can start a new
    header or reply line) become single spaces; non-ASCII is escaped so the
    header stays 7-bit (RFC 5322 section 2.2); the result is capped.
    """
    if not (text.isascii() and text.isprintable()):
        text = _CONTROL.sub(" ", text).encode("ascii", "backslashreplace").decode("ascii")
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def reply_text(text: str) -> str:
    """Reply text (made safe where the reply was built) for libmilter's
    smfi_setreply, which treats it as a format string: a lone '%' makes it
    refuse the reply, so every '%' is doubled (the MTA prints one)."""
    return text.replace("%", "%%")


def quote_value(value: str) -> str:
    """A Received-SPF key-value: dot-atom as is, else a quoted-string."""
    if _DOT_ATOM.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def comment_text(text: str) -> str:
    """Hostile text made safe (clean) for a header comment (RFC 5322
    section 3.2.2)."""
    return _comment_syntax(clean(text))


def _comment_syntax(text: str) -> str:
    # RFC 5322 section 3.2.2: parentheses and backslashes inside a comment
    # must be quoted-pairs or they would end or nest the comment.
    return _COMMENT_SPECIALS.sub(r"\\\1", text) if _COMMENT_SPECIALS.search(text) else text


# The classic policy servers' wording per result; "{ip}" and "{use}" are
# filled in.  Results not here (permerror, temperror) show their error.
_WORDING = {
    SpfResult.PASS: "{ip} is authorized {use}",
    SpfResult.FAIL: "{ip} is not authorized {use}",
    SpfResult.SOFTFAIL: "Sender is not authorized by default {use}, however domain is not "
    "currently prepared for false failures",
    SpfResult.NEUTRAL: "Domain does not state whether sender is authorized {use}",
    SpfResult.NONE: "No applicable sender policy available",
}
_MATCHING = frozenset({SpfResult.PASS, SpfResult.FAIL, SpfResult.SOFTFAIL, SpfResult.NEUTRAL})


def result_comment(outcome: SpfOutcome, client_ip: IPAddress | None) -> str:
    """The human explanation, in the classic policy servers' wording."""
    wording = _WORDING.get(outcome.result)
    if wording is None:
        text = comment_text(outcome.problem or str(outcome.result))
    else:
        use = f"to use '{comment_text(outcome.sender)}' in '{outcome.identity.scope}' identity"
        ip = str(client_ip) if client_ip is not None else "unknown"
        text = wording.format(ip=ip, use=use)
    if outcome.mechanism and outcome.result in _MATCHING:
        text += f" (mechanism '{comment_text(outcome.mechanism)}' matched)"
    domain = comment_text(outcome.domain) or "unknown"
    return f"{domain}: {text}"


def received_spf(
    outcome: SpfOutcome,
    *,
    client_ip: IPAddress | None,
    helo: str,
    receiver: str | None,
) -> str:
    """The Received-SPF field value (RFC 7208 section 9.1).

    `receiver` None hides the receiver= key.  Keys in the classic order:
    receiver, identity, envelope-from (not for the HELO identity), helo,
    client-ip.
    """
    pairs = []
    if receiver is not None:
        pairs.append(f"receiver={quote_value(clean(receiver))}")
    pairs.append(f"identity={outcome.identity.value}")
    if outcome.identity is Identity.MAIL_FROM:
        pairs.append(f"envelope-from={quote_value(clean(outcome.sender))}")
    if helo:
        pairs.append(f"helo={quote_value(clean(helo))}")
    if client_ip is not None:
        pairs.append(f"client-ip={quote_value(str(client_ip))}")
    comment = result_comment(outcome, client_ip)
    return fold(RECEIVED_SPF, f"{outcome.result.value} ({comment}) " + "; ".join(pairs))


def authentication_results(
    authserv_id: str,
    report: SpfOutcome | None,
    *,
    client_ip: IPAddress | None,
    skip: Skip | None = None,
    rescue: tuple[str, ...] = (),
) -> str:
    """The Authentication-Results field value (RFC 8601).

    Exactly one spf resinfo: `report`, the outcome Received-SPF carries
    (MAIL FROM whenever the sender is not null, else HELO).  Consumers read
    one spf result per header: OpenDMARC 1.4 records the last, SpamAssassin 4
    the HELO one, so a second resinfo with a HELO pass beside a MAIL FROM
    result would hand them the HELO result as the domain's (the DMARC bypass
    of CVE-2019-20790).  smtp.mailfrom carries the domain only: DMARC
    verifiers such as OpenDMARC credit an SPF pass only for a bare domain.
    `rescue`: the dkim and arc resinfos of a rescue (made safe by whoever
    wrote them), after the spf one.
    """
    parts = [clean(authserv_id)]
    if skip is not None:
        parts.append(f"none ({_comment_syntax('SPF not checked: ' + skip.text)})")
    elif report is not None:
        prop = "smtp.mailfrom" if report.identity is Identity.MAIL_FROM else "smtp.helo"
        parts.append(_resinfo(report, client_ip, prop, report.domain))
        parts.extend(rescue)
    return fold(AUTHENTICATION_RESULTS, "; ".join(parts))


def _resinfo(outcome: SpfOutcome, client_ip: IPAddress | None, prop: str, value: str) -> str:
    comment = result_comment(outcome, client_ip)
    return f"spf={outcome.result.value} ({comment}) {prop}={quote_value(clean(a_labels(value)))}"


def a_labels(domain: str) -> str:
    """`domain` with its U-labels as A-labels (IDNA), as DNS was asked.

    A DMARC verifier compares smtp.mailfrom with the From domain; an escaped
    U-label (b\\xfccher.example) matches nothing, its A-label matches the
    From domain in the form DNS and DMARC use (RFC 8616 section 5 allows
    either form).  A name IDNA cannot encode is left as it is.
    """
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def authserv_id_key(authserv_id: str) -> str:
    """An authserv-id as it is compared: case folded, trailing dots dropped.

    It names a host (RFC 8601 section 2.5), and host names compare so
    (RFC 4343 section 2; a trailing dot only makes a name absolute, RFC
    1034 section 3.1).
    """
    return authserv_id.lower().rstrip(".")


class Lexeme(enum.Enum):
    """What a piece of a structured field body is (RFC 5322 section 3.2)."""

    TEXT = "text"  # a character outside quoted strings and comments
    QTEXT = "qtext"  # a character inside a quoted string (section 3.2.4)
    DQUOTE = "dquote"  # the double quote that opens or closes a quoted string
    QUOTED_PAIR = "quoted-pair"  # a backslash and the character it quotes (section 3.2.1)
    COMMENT = "comment"  # a comment, with the comments nested in it (section 3.2.2)


def lexemes(value: str) -> Iterator[tuple[Lexeme, str]]:
    """`value` cut into the pieces of RFC 5322 section 3.2, in order; their
    texts joined give `value` back.

    A comment is one piece however deeply comments nest in it, and a
    quoted-pair in it neither opens nor closes one; "(" inside a quoted
    string is text.  Read leniently: a comment or quoted string left open
    runs to the end, a "\\" that ends the value is a quoted-pair alone, and
    a ")" outside a comment is text.
    """
    start = depth = 0  # where the open comment began; how deeply it nests
    quoted = False
    index = 0
    while index < len(value):
        char = value[index]
        end = index + 2 if char == "\\" else index + 1
        if depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if not depth:
                yield Lexeme.COMMENT, value[start:end]
        elif char == "(" and not quoted:
            start, depth = index, 1
        elif char == "\\":
            yield Lexeme.QUOTED_PAIR, value[index:end]
        elif char == '"':
            quoted = not quoted
            yield Lexeme.DQUOTE, char
        else:
            yield (Lexeme.QTEXT if quoted else Lexeme.TEXT), char
        index = end
    if depth:
        yield Lexeme.COMMENT, value[start:]


def claimed_authserv_ids(value: str) -> frozenset[str]:
    """Every authserv-id (as authserv_id_key gives it) that some reader of
    this Authentication-Results value may take it to carry.

    RFC 8601 section 5: fields that claim our authserv-id are forgeries to
    delete.  What a field claims is decided by the programs that read it,
    and on malformed text they disagree, so this is the union of three
    readings, each at least as generous as the reader it stands for: RFC
    8601 itself, the tokenizer of OpenDMARC 1.4, SpamAssassin 4's AuthRes
    plugin.  Of a name followed by "/" the part before counts too: OpenDMARC
    with AuthservIDWithJobID takes "id/job" for id.  Only the authserv-id
    part (before ";") is read: a name in the results claims nothing.
    """
    names = (
        *_without_version(_rfc8601_names(value)),
        *_without_version(_tokenizer_names(value)),
        *_spamassassin_names(value),
    )
    keys = {authserv_id_key(part) for name in names for part in (name, name.partition("/")[0])}
    keys.discard("")
    return frozenset(keys)


def _without_version(names: list[str]) -> list[str]:
    # A last word of digits after the id is the authres-version (RFC 8601
    # section 2.2), in both readings; it claims no authserv-id.
    version = len(names) > 1 and names[-1].isascii() and names[-1].isdigit()
    return names[:-1] if version else names


def _rfc8601_names(value: str) -> list[str]:
    """The words before ";" as RFC 8601 section 2.2 has them: [CFWS]
    authserv-id [CFWS authres-version], the id a token or a quoted-string.

    Read leniently: comments (nested, with quoted-pairs: RFC 5322 section
    3.2.2) separate words, quotes and backslashes are taken away, labels
    are joined across white space and comments around dots.  Every word
    counts, not only the first, so that nothing put before the id hides it.
    """
    text: list[str] = []
    for kind, piece in lexemes(value):
        if kind is Lexeme.TEXT and piece == ";":
            break
        if kind is Lexeme.COMMENT:
            text.append(" ")  # a comment separates, as whitespace does
        elif kind is Lexeme.QUOTED_PAIR:
            text.append(piece[1:])
        elif kind is not Lexeme.DQUOTE:
            text.append(piece)
    # Labels are joined across spaces around dots, but a last word of digits
    # is the authres-version ("mx.example.net. 1" is mx.example.net): a host
    # name's last label is never all digits (RFC 3696 section 2).
    words: list[str] = []
    tokens = "".join(text).split()
    for index, token in enumerate(tokens):
        version = token.isdigit() and index == len(tokens) - 1
        if words and not version and (words[-1].endswith(".") or token.startswith(".")):
            words[-1] += token
        else:
            words.append(token)
    return words


def _tokenizer_names(value: str) -> list[str]:
    """The names before ";" as OpenDMARC 1.4 reads them (ares_parse): its
    tokens (see _tokens) but those whose first character is "(", which it
    skips as comments however that "(" was written ("(c)", "\\(c" and
    '"(c"' alike), joined across "." tokens.  Every name counts, not only
    the first, which is the one OpenDMARC takes.
    """
    names: list[str] = []
    after_dot = False
    for token in _tokens(value):
        if token == ";":
            break
        if not token or token.startswith("("):
            continue
        if names and (after_dot or token == "."):
            names[-1] += token
        else:
            names.append(token)
        after_dot = token == "."
    return names


def _tokens(value: str) -> Iterator[str]:
    """`value` cut into tokens as OpenDMARC 1.4's ares_tokenize cuts it.

    A backslash makes the next character, whatever it is, part of a token;
    double quotes outside parentheses group and vanish; parentheses nest,
    and a token that opened one ends where it closes; a ")" without its "("
    is dropped.  Elsewhere white space ends a token and ";", "=", "." are
    tokens of their own.
    """
    token: list[str] = []
    started = False  # a token is open (it may still be empty: "")
    depth = 0
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
            started = True
            token.append(char)
        elif char == "\\":
            escaped = True
        elif char == '"' and not depth:
            quoted = not quoted
            started = True
        elif char == "(" and not quoted:
            depth += 1
            started = True
            token.append(char)
        elif char == ")" and not quoted:
            if depth:
                depth -= 1
                if not depth:
                    yield "".join(token) + char
                    token, started = [], False
        elif quoted or depth:
            token.append(char)
        elif char in _SPACE or char in _DELIMITERS:
            if started:
                yield "".join(token)
                token, started = [], False
            if char in _DELIMITERS:
                yield char
        else:
            started = True
            token.append(char)
    if started:
        yield "".join(token)


def _spamassassin_names(value: str) -> list[str]:
    """The authserv-id as SpamAssassin 4's AuthRes plugin reads it: the
    token at the start, then CFWS, an optional version, CFWS and ";", where
    its CFWS is white space and at most one comment whose parentheses are
    counted without regard to backslashes."""
    text = value.lstrip(_SPACE)
    token = _TOKEN.match(text)
    if token is None:
        return []
    end = _naive_cfws(text, token.end())
    version = _DIGITS.match(text, end)
    if version is not None:
        end = _naive_cfws(text, version.end())
    return [token.group()] if text.startswith(";", end) else []


def _naive_cfws(text: str, start: int) -> int:
    """Where white space and at most one comment after `start` end, the
    comment's parentheses counted as they come; the end of `text` if the
    comment never closes (nothing, no ";" either, follows it)."""
    end = _past_space(text, start)
    if not text.startswith("(", end):
        return end
    depth = 0
    for parenthesis in _PARENTHESES.finditer(text, end):
        depth += 1 if parenthesis.group() == "(" else -1
        if not depth:
            return _past_space(text, parenthesis.end())
    return len(text)


def _past_space(text: str, start: int) -> int:
    end = start
    while end < len(text) and text[end] in _SPACE:
        end += 1
    return end


def fold(name: str, value: str) -> str:
    """Fold a header value at spaces so lines stay within 78 characters.

    One line when it fits (RFC 5322 section 2.2.3); continuation lines start
    with a tab.  A word longer than a line is left whole rather than broken.
    """
    # Split at every space: a run of spaces gives empty words, so that each
    # fold replaces exactly one space and the others stay (unfolding gives
    # the value back).  A line of nothing but spaces is never ended.
    first, *words = value.split(" ")
    lines: list[str] = []
    current = first
    width = len(name) + 2  # "Name: " on the first line
    for word in words:
        if current.strip() and width + len(current) + 1 + len(word) > FOLD_AT:
            lines.append(current)
            current = word
            width = 1  # the tab that starts a continuation line
        else:
            current = f"{current} {word}"
    lines.append(current)
    return "\n\t".join(lines)
