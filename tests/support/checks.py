"""Checks of what spfmilter writes, shared by the property tests.

This module owns the independent readers of spfmilter's output: result
headers parsed back as RFC 5322 fields (Received-SPF, Authentication-Results),
replies as libmilter's smfi_setreply takes them, and log lines that must stay
one line.
"""

from __future__ import annotations

import contextlib
import email.message
import email.policy
import logging
import re
from collections.abc import Iterator
from email.parser import Parser

from spfmilter.core.headers import (
    FOLD_AT,
    RECEIVED_SPF,
    a_labels,
    clean,
    reply_text,
)
from spfmilter.core.model import (
    Action,
    Identity,
    Reply,
    SpfOutcome,
)

MAXREPLYLEN = 980  # libmilter's smfi_setreply refuses longer text


def assert_setreply_ok(code: str, status: str | None, text: str) -> None:
    """What libmilter's smfi_setreply accepts (it returns MI_FAILURE else),
    and what fits an RFC 5321 reply line (4.5.3.1.5: 512 octets with CRLF)."""
    assert re.fullmatch(r"[45][0-9][0-9]", code), code
    if status is not None:
        assert re.fullmatch(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}", status) and status[0] == code[0]
    assert not set(text) & {"\r", "\n", "\0"}, text
    # A format string: a lone '%' makes libmilter drop the reply.
    assert all(len(run) % 2 == 0 for run in re.findall("%+", text)), text
    assert len(text) <= MAXREPLYLEN
    shown = text.replace("%%", "%")  # what the MTA prints
    assert shown.isascii() and shown.isprintable(), shown
    assert len(" ".join(p for p in (code, status, shown) if p)) + 2 <= 512


def assert_reply(reply: Reply | None, action: Action) -> None:
    """A refusal's reply as the adapter hands it to setreply."""
    assert reply is not None and action in (Action.REJECT, Action.DEFER)
    assert reply.code == (550 if action is Action.REJECT else 451)
    assert_setreply_ok(str(reply.code), reply.status, reply_text(reply.text))


def unfold(value: str) -> str:
    """RFC 5322 section 2.2.3 unfolding: CRLF before WSP removed."""
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def assert_field(name: str, value: str) -> str:
    """`value` is one well-formed field `name`; returns it with our folds
    turned back into the spaces they replaced."""
    assert value.isascii(), value
    lines = value.split("\n")
    assert "\r" not in value
    for number, line in enumerate(lines):
        body = line[1:] if number else line
        assert line.startswith("\t") == bool(number), line  # folds are "\n\t"
        assert body.isprintable() and body.strip(), line  # no empty continuation
        shown = f"{name}: {line}" if number == 0 else line
        # fold(): lines within 78 characters, unless one word is longer.
        assert len(shown) <= FOLD_AT or " " not in body, shown
    for mail_policy in (email.policy.compat32, email.policy.default):
        message = Parser(policy=mail_policy).parsestr(f"{name}: {value}\n\nbody\n")
        ((got_name, got_value),) = message.raw_items()
        assert got_name == name
        assert unfold(got_value) == unfold(value)
    return value.replace("\n\t", " ")


def comment_at(text: str, start: int) -> tuple[str, int]:
    """The RFC 5322 comment at text[start] ('('): its content with quoted
    pairs undone, and the index after its ')'.  Fails if it never closes."""
    assert text[start] == "(", text[start:]
    depth, out, i = 0, [], start
    while True:
        assert i < len(text), f"comment not closed: {text[start:]}"
        char = text[i]
        if char == "\\":
            assert i + 1 < len(text), "quoted-pair cut off"
            out.append(text[i + 1])
            i += 2
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        i += 1
        if depth == 0:
            return "".join(out), i
        if depth > 1 or char != "(":
            out.append(char)


ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
HEADER_VALUE = rf'"(?:[^"\\]|\\.)*"|{ATEXT}+(?:\.{ATEXT}+)*'


def unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value


def parse_received_spf(value: str) -> tuple[str, str, list[tuple[str, str]]]:
    """result, comment, key-value pairs of an unfolded Received-SPF value
    (RFC 7208 section 9.1, as spfmilter writes it); fails on anything else."""
    result, _, rest = value.partition(" ")
    comment, end = comment_at(rest, 0)
    pairs, pos = [], end + 1
    assert rest[end : end + 1] == " ", rest[end:]
    while pos < len(rest):
        match = re.compile(rf"([a-z-]+)=({HEADER_VALUE})(; |$)").match(rest, pos)
        assert match is not None, rest[pos:]
        pairs.append((match[1], unquote(match[2])))
        pos = match.end()
    return result, comment, pairs


def parse_authentication_results(value: str) -> tuple[str, str, str, tuple[str, str] | None]:
    """authserv-id, method=result (or "none"), comment, (property, value) of
    an unfolded A-R value with exactly one resinfo; fails on anything else."""
    authserv_id, sep, rest = value.partition("; ")
    assert sep and ";" not in authserv_id and "(" not in authserv_id, value
    method, _, rest = rest.partition(" ")
    comment, end = comment_at(rest, 0)
    if method == "none":
        assert end == len(rest), rest
        return authserv_id, method, comment, None
    match = re.compile(rf" (smtp\.mailfrom|smtp\.helo)=({HEADER_VALUE})").fullmatch(rest, end)
    assert match is not None, rest[end:]
    return authserv_id, method, comment, (match[1], unquote(match[2]))


def assert_result_header(name: str, value: str, report: SpfOutcome | None) -> None:
    """A header spfmilter inserts: well-formed, and saying what `report` says."""
    text = assert_field(name, value)
    if name == RECEIVED_SPF:
        assert report is not None
        result, comment, pairs = parse_received_spf(text)
        keys = dict(pairs)
        assert result == report.result.value and keys["identity"] == report.identity.value
        assert ("envelope-from" in keys) == (report.identity is Identity.MAIL_FROM)
        if "envelope-from" in keys:
            assert keys["envelope-from"] == clean(report.sender)
    else:
        _, method, comment, prop = parse_authentication_results(text)
        if report is None or prop is None:  # not checked
            assert method == "none" and comment.startswith("SPF not checked: ")
            return
        assert method == f"spf={report.result.value}"  # the one spf resinfo
        mailfrom = report.identity is Identity.MAIL_FROM
        domain = clean(a_labels(report.domain))
        assert prop == ("smtp.mailfrom" if mailfrom else "smtp.helo", domain)
    assert comment.startswith(f"{clean(report.domain) or 'unknown'}: "), comment


def log_record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("spfmilter.verdicts", logging.INFO, __file__, 1, message, args, None)


def assert_one_line(line: str) -> None:
    """Nothing a reader could split on, nothing a UTF-8 writer chokes on."""
    assert line.splitlines() == [line] and "\n" not in line and "\r" not in line
    line.encode("utf-8")


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def verdict_records() -> Iterator[list[logging.LogRecord]]:
    """The verdict lines logged meanwhile (the logger restored after)."""
    logger = logging.getLogger("spfmilter.verdicts")
    handler = Keep()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
