"""Property-based tests (hypothesis) of the text spfmilter writes, for any input.

This file owns the properties of the result headers (Received-SPF,
Authentication-Results: they parse back as RFC 5322 fields, 7-bit, folded,
comments balanced, one spf resinfo), sanitising and SMTP replies (what
libmilter's smfi_setreply accepts), the parser of Authentication-Results
authserv-ids, and log lines (one line, whatever they carry).  It also owns
the hostile-text strategies and the checks of headers, replies and log
lines that test_properties_session.py reuses for the policy, the Session
and the adapter.  Settings are local to these tests (no profile is loaded,
no example database is kept); SPFMILTER_PROPERTY_EXAMPLES asks for a
longer run.
"""

from __future__ import annotations

import dataclasses
import email.policy
import ipaddress
import json
import logging
import os
import re
import string
from email.parser import Parser
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from spfmilter.core.headers import (
    AUTHENTICATION_RESULTS,
    FOLD_AT,
    RECEIVED_SPF,
    REPLY_TEXT_LIMIT,
    a_labels,
    authentication_results,
    authserv_id_key,
    claimed_authserv_ids,
    clean,
    fold,
    quote_value,
    received_spf,
    reply_text,
)
from spfmilter.core.model import (
    Action,
    Identity,
    IPAddress,
    Reply,
    Skip,
    SkipReason,
    SpfOutcome,
    SpfResult,
)
from spfmilter.core.verdicts import FIELD_LIMIT, format_fields
from spfmilter.process.logs import JsonFormatter, TextFormatter, escape

T = TypeVar("T")
U = TypeVar("U")

SETTINGS = settings(
    max_examples=int(os.environ.get("SPFMILTER_PROPERTY_EXAMPLES", "100")),
    deadline=None,  # the test machines are noisy
    database=None,  # nothing kept between runs, nothing written to the tree
    suppress_health_check=[HealthCheck.too_slow],
    phases=[p for p in Phase if p is not Phase.explain],  # slow, and says little here
)

# --- strategies -------------------------------------------------------------

# Characters that have broken mail software: line ends of every kind, NUL,
# comment and quoting syntax, '%' (a format string to libmilter), 8-bit,
# a lone surrogate (undecodable bytes of a macro), astral characters.
SPECIAL = "\r\n\x00\t\x0b\x0c\x7f\x85\u2028\u2029()\\\"%;=.@ '<>\udcff\xe9\U0001f600"
PIECES = [*SPECIAL, "  ", "\r\n", "\r\n\t", "%s", "%%", "=?utf-8?q?=0A?="]
CHARS = st.one_of(st.characters(exclude_categories=()), st.sampled_from(SPECIAL))
texts = st.one_of(
    st.text(CHARS, max_size=30),
    # Words of printable ASCII with the special characters between them.
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(string.printable, max_size=6)),
             min_size=1, max_size=12).map("".join),
    # Very long text, cheaply: a short piece repeated.
    st.builds(lambda piece, times: piece * times, st.text(CHARS, min_size=1, max_size=4),
              st.integers(60, 400)),
)  # fmt: skip
DOMAINS = ("example.com", "example.org", "mail.example.org", "evilexample.com", "fwd.example")
_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=5)
labels = st.one_of(_alnum, st.builds("{}-{}".format, _alnum, _alnum))
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
domains = st.one_of(st.sampled_from(DOMAINS), hostnames)
ips = st.one_of(
    st.sampled_from(["127.0.0.1", "::1", "198.51.100.7", "2001:db8::7", "::ffff:192.0.2.1"]).map(
        ipaddress.ip_address
    ),
    st.ip_addresses(),
)


def rarely(strategy: st.SearchStrategy[T], usual: st.SearchStrategy[U]) -> st.SearchStrategy[T | U]:
    """`strategy` one time in five, else `usual` (hypothesis has no weights)."""
    # Not n == 0: hypothesis favours 0, and shrinking towards it leaves `usual`.
    return st.integers(0, 4).flatmap(lambda n: strategy if n == 3 else usual)


# Fail first: hypothesis favours the first choice, and fail refuses.
spf_results = st.sampled_from(sorted(SpfResult, key=lambda r: r is not SpfResult.FAIL))


def outcomes(identity: Identity) -> st.SearchStrategy[SpfOutcome]:
    """Any outcome of `identity`: every text field hostile."""
    maybe = st.one_of(st.none(), texts)
    return st.builds(
        SpfOutcome, st.just(identity), spf_results, texts, texts, maybe, maybe,
        maybe, st.floats(0, 30),
    )  # fmt: skip


# --- checks shared with test_properties_session.py --------------------------

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


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_VALUE = rf'"(?:[^"\\]|\\.)*"|{_ATEXT}+(?:\.{_ATEXT}+)*'


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
        match = re.compile(rf"([a-z-]+)=({_VALUE})(; |$)").match(rest, pos)
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
    match = re.compile(rf" (smtp\.mailfrom|smtp\.helo)=({_VALUE})").fullmatch(rest, end)
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


# --- sanitising and replies -------------------------------------------------


@SETTINGS
@given(texts, st.integers(3, 1000))
@example("a\n\rb", 255)
def test_clean(text: str, limit: int) -> None:
    cleaned = clean(text, limit)
    assert cleaned.isascii() and cleaned.isprintable() and len(cleaned) <= limit
    assert cleaned == cleaned.strip() and clean(cleaned, limit) == cleaned
    if text.isascii() and text.isprintable() and text == text.strip() and len(text) <= limit:
        assert cleaned == text  # harmless text is left alone


@SETTINGS
@given(texts)
@example("100% not ours\r\n550 fake %s%%%")
def test_reply_text_is_acceptable_to_setreply(text: str) -> None:
    sent = reply_text(clean(text, REPLY_TEXT_LIMIT))
    assert_setreply_ok("550", "5.7.23", sent)
    assert sent.replace("%%", "%") == clean(text, REPLY_TEXT_LIMIT)


# --- header building --------------------------------------------------------

client_ips = st.one_of(st.none(), ips)
any_outcome = st.one_of(outcomes(Identity.MAIL_FROM), outcomes(Identity.HELO))
skips = st.builds(Skip, st.sampled_from(SkipReason), texts.map(clean))


# Found by this property: a fold at a run of spaces dropped one, so the
# quoted envelope-from no longer said what MAIL FROM said.
FOLDED_SENDER = '"johnxxxxxxxxxxxx  smith"@example.com'


@SETTINGS
@given(
    any_outcome,
    client_ips,
    texts,
    st.one_of(st.none(), texts, hostnames),
)
@example(
    SpfOutcome(Identity.MAIL_FROM, SpfResult.PASS, "example.com", FOLDED_SENDER),
    ipaddress.ip_address("192.0.2.1"),
    "mail.example.com",
    "mx.example.net",
)
def test_received_spf_parses_back(
    outcome: SpfOutcome, ip: IPAddress | None, helo: str, receiver: str | None
) -> None:
    value = received_spf(outcome, client_ip=ip, helo=helo, receiver=receiver)
    assert_result_header(RECEIVED_SPF, value, outcome)
    pairs = parse_received_spf(assert_field(RECEIVED_SPF, value))[2]
    keys = [key for key, _ in pairs]
    assert keys == [
        k
        for k, present in (
            ("receiver", receiver is not None),
            ("identity", True),
            ("envelope-from", outcome.identity is Identity.MAIL_FROM),
            ("helo", bool(helo)),
            ("client-ip", ip is not None),
        )
        if present
    ]
    found = dict(pairs)
    assert found.get("helo", "") == (clean(helo) if helo else "")
    assert found.get("receiver") == (None if receiver is None else clean(receiver))


@SETTINGS
@given(
    hostnames,
    # What a Session has: an outcome to report, or the reason SPF was skipped.
    st.one_of(st.tuples(any_outcome, st.none()), st.tuples(st.none() | any_outcome, skips)),
    client_ips,
)
def test_authentication_results_parses_back(
    authserv_id: str, facts: tuple[SpfOutcome | None, Skip | None], ip: IPAddress | None
) -> None:
    report, skip = facts
    value = authentication_results(authserv_id, report, client_ip=ip, skip=skip)
    assert_result_header(AUTHENTICATION_RESULTS, value, None if skip else report)
    assert claimed_authserv_ids(value) == {authserv_id.lower()}  # ours, and only ours


@SETTINGS
@given(texts)
def test_result_comment_cannot_be_left_early(text: str) -> None:
    """Whatever DNS says, a comment ends only where spfmilter ends it."""
    hostile = SpfOutcome(Identity.MAIL_FROM, SpfResult.PERMERROR, text, text, text, text, text)
    for outcome in (hostile, dataclasses.replace(hostile, result=SpfResult.PASS)):
        value = received_spf(outcome, client_ip=None, helo="", receiver=None)
        pairs = parse_received_spf(value.replace("\n\t", " "))[2]
        assert pairs == [("identity", "mailfrom"), ("envelope-from", clean(text))]


@SETTINGS
@given(
    st.sampled_from([RECEIVED_SPF, AUTHENTICATION_RESULTS]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300),
)
@example(RECEIVED_SPF, "x" * 70 + "  y")  # a fold at a run of spaces
def test_fold_only_turns_spaces_into_folds(name: str, value: str) -> None:
    assume(value.strip(" ") and not value.startswith(" ") and not value.endswith(" "))
    folded = fold(name, value)
    assert folded.replace("\n\t", " ") == value
    for number, line in enumerate(folded.split("\n")):
        shown = f"{name}: {line}" if number == 0 else line
        assert len(shown) <= FOLD_AT or " " not in line.strip("\t")


@SETTINGS
@given(texts.map(clean))
def test_quote_value_round_trips(value: str) -> None:
    quoted = quote_value(value)
    assert re.fullmatch(_VALUE, quoted) and unquote(quoted) == value


# --- the A-R parser ---------------------------------------------------------

comment_texts = st.text(CHARS, max_size=8).map(lambda t: re.sub(r"([()\\])", r"\\\1", t))
comments = st.recursive(
    comment_texts.map("({})".format),
    lambda inner: st.builds("({}{}{})".format, comment_texts, inner, comment_texts),
    max_leaves=3,
)
fws = st.sampled_from([" ", "\t", "\r\n ", "\r\n\t", "  "])
cfws = st.lists(st.one_of(fws, comments), min_size=1, max_size=3).map("".join)


# Comments only to the A-R tokenizer of OpenDMARC 1.4: a token whose first
# character is "(" however written.  White space before ends the token
# before it, white space (or the ")" closing it) after ends it.
tokenizer_comments = st.builds(
    lambda form, text: form.format(text),
    st.sampled_from([" \\({} ", ' "({}" ', ' ""({})']),
    st.text(string.ascii_letters + string.digits, max_size=4),
)


@st.composite
def spelled(draw: st.DrawFn, authserv_id: str) -> str:
    """An A-R value whose authserv-id is `authserv_id`, however spelled: as
    RFC 8601 reads it, or as OpenDMARC's tokenizer reads it."""
    tokenizer = draw(st.booleans())

    def case(char: str) -> str:
        return char.upper() if draw(st.booleans()) else char

    def escape(char: str) -> str:
        return "\\" + char if draw(st.booleans()) else char

    def noise() -> str:
        # The tokenizer drops a ")" outside a comment; "" is an empty quote.
        return draw(st.sampled_from(["", ")", '""'])) if tokenizer else ""

    # A "(" that touches a token is part of it to the tokenizer.
    around = st.one_of(st.just(""), cfws.map(" {}".format) if tokenizer else cfws)
    if not tokenizer and draw(st.booleans()):  # a quoted-string
        spelling = '"' + "".join(escape(case(c)) for c in authserv_id) + '"'
    else:  # a token, its labels apart
        labels = [
            "".join(noise() + escape(case(c)) for c in label) for label in authserv_id.split(".")
        ]
        # An escaped dot belongs to the token around it: apart, it would
        # begin the next one.
        dots = st.one_of(st.builds("{}.{}".format, around, around), st.just("\\."))
        spelling = labels[0] + "".join(f"{draw(dots)}{label}" for label in labels[1:])
    # A trailing dot: the tokenizer would join it to the version, or fail.
    dot = "" if tokenizer else draw(st.sampled_from(["", "."]))
    job = draw(st.sampled_from(["", "/4XkQ2b1mFz"]))  # OpenDMARC's AuthservIDWithJobID
    version = draw(st.one_of(st.just(""), st.builds("{}1".format, around.filter(bool))))
    # Before the id, comments of either kind; after it, of its reader's kind
    # (RFC 8601 would take a tokenizer comment for a word of the id).
    first = draw(st.one_of(around, tokenizer_comments))
    last = draw(st.one_of(around, tokenizer_comments) if tokenizer else around)
    rest = draw(st.one_of(st.just(""), st.builds("; {}".format, texts)))
    return f"{first}{spelling}{dot}{job}{version}{last}{rest}"


@SETTINGS
@given(texts)
def test_claimed_authserv_ids_of_any_text(value: str) -> None:
    # A malformed value may claim anything, but only as compared: case
    # folded, no trailing dot, never empty.
    for name in claimed_authserv_ids(value):
        assert name and authserv_id_key(name) == name


# A host name's last label is never all digits (RFC 3696 section 2), which
# is how a version after the id ("mx.example.net . 1") is told from a label.
authserv_ids = hostnames.filter(lambda name: not name.rpartition(".")[2].isdigit())


@SETTINGS
@given(st.data(), authserv_ids)
def test_every_spelling_is_claimed(data: st.DataObject, authserv_id: str) -> None:
    assert authserv_id in claimed_authserv_ids(data.draw(spelled(authserv_id)))


@pytest.mark.parametrize(
    "value",
    [
        "MX.Example.NET; spf=pass",
        r'(a (nested \( one)) "mx.example.NET". ; spf=pass',
        "mx . (c) example\\.net\r\n\t1; spf=pass",
        # Found by the property above: a comment alone is CFWS before the
        # version (RFC 8601 section 2.2), and so is space after a trailing dot.
        "mx.example.net(comment)1; spf=pass",
        "mx.example.net. 1; spf=pass",
    ],
)
def test_spellings_found_are_claimed(value: str) -> None:
    assert "mx.example.net" in claimed_authserv_ids(value)


@SETTINGS
@given(st.data(), hostnames, st.sampled_from(["{}.evil", "evil.{}", "{}x", "x{}", "{}-1"]))
def test_other_ids_do_not_claim_ours(data: st.DataObject, authserv_id: str, variant: str) -> None:
    spelling = data.draw(spelled(variant.format(authserv_id)))
    assert authserv_id not in claimed_authserv_ids(spelling)


@SETTINGS
@given(hostnames, hostnames, any_outcome, client_ips)
def test_names_in_the_results_claim_nothing(
    authserv_id: str, ours: str, outcome: SpfOutcome, ip: IPAddress | None
) -> None:
    """Another receiver's header naming our host anywhere in its results
    (smtp.helo=, a comment, the domain) is not deleted."""
    named = dataclasses.replace(outcome, domain=ours, sender=f"postmaster@{ours}", mechanism=ours)
    value = authentication_results(authserv_id, named, client_ip=ip)
    assert claimed_authserv_ids(value) == {authserv_id.lower()}


# --- log lines --------------------------------------------------------------


def log_record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("spfmilter.verdicts", logging.INFO, __file__, 1, message, args, None)


def assert_one_line(line: str) -> None:
    """Nothing a reader could split on, nothing a UTF-8 writer chokes on."""
    assert line.splitlines() == [line] and "\n" not in line and "\r" not in line
    line.encode("utf-8")


@SETTINGS
@given(texts, texts)
@example("a\nb\rc\x85d\u2028e\u2029f\x0bg\x0ch\x1ci", "\udcff\n%s")
def test_log_lines_are_one_line(message: str, argument: str) -> None:
    for record in (log_record(message), log_record("looking up %s", argument)):
        text = TextFormatter().format(record)
        assert_one_line(text)
        assert text.startswith("INFO spfmilter.verdicts: ")
        assert text.endswith(escape(record.getMessage()))
        line = JsonFormatter().format(record)
        assert_one_line(line)
        assert json.loads(line)["message"] == record.getMessage()


def parse_fields(text: str) -> dict[str, str]:
    """format_fields() read back: key=value, values double-quoted with \\ escapes."""
    fields, pos = {}, 0
    pattern = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)(?: |$)', re.DOTALL)
    while pos < len(text):
        match = pattern.match(text, pos)
        assert match is not None, text[pos:]
        fields[match[1]] = unquote(match[2])
        pos = match.end()
    return fields


@SETTINGS
@given(st.dictionaries(st.sampled_from(["queue_id", "helo", "sender", "reply"]), texts))
def test_verdict_fields_read_back(fields: dict[str, str]) -> None:
    text = format_fields(dict(fields))
    capped = {
        k: v if len(v) <= FIELD_LIMIT else v[: FIELD_LIMIT - 3] + "..." for k, v in fields.items()
    }
    assert parse_fields(text) == capped
    assert_one_line(TextFormatter().format(log_record("verdict %s", text)))
    record = log_record("verdict %s", text)
    record.__dict__["fields"] = fields
    assert {
        k: v for k, v in json.loads(JsonFormatter().format(record)).items() if k in fields
    } == fields
