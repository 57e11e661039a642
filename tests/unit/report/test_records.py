"""Reading verdict lines back: every form the log takes, hostile values,
and lines that only look like verdicts."""

from __future__ import annotations

import json
import logging
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spfmilter.core.verdicts import FIELD_LIMIT, format_fields
from spfmilter.printable import escape
from spfmilter.process.logs import JsonFormatter, MailLogFormatter, TextFormatter
from spfmilter.report.records import parse

SETTINGS = settings(
    max_examples=int(os.environ.get("SPFMILTER_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

FIELDS = (
    "conn=3 client_ip=198.51.100.7 helo=mail.example.org sender=alice@example.org "
    "identity=mailfrom result=pass mechanism=ip4:198.51.100.0/24 action=accept stage=rcpt "
    "lookup_ms=4"
)
EXPECTED = {
    "conn": "3",
    "client_ip": "198.51.100.7",
    "helo": "mail.example.org",
    "sender": "alice@example.org",
    "identity": "mailfrom",
    "result": "pass",
    "mechanism": "ip4:198.51.100.0/24",
    "action": "accept",
    "stage": "rcpt",
    "lookup_ms": "4",
}
REFUSED = (
    "conn=4 client_ip=203.0.113.9 helo=x sender=bob@bank.example identity=mailfrom "
    'result=fail mechanism=-all action=reject stage=rcpt reply="550 5.7.23 SPF MAIL FROM '
    'check for bob@bank.example: fail" dry_run=yes lookup_ms=4'
)


@pytest.mark.parametrize(
    "prefix",
    [
        "",  # journald's MESSAGE, journalctl -o cat
        "<6>",  # stderr under systemd, read by something else than journald
        "INFO spfmilter.verdicts: ",  # stderr, text format
        "<6>INFO spfmilter.verdicts: ",
        "Dec  2 10:15:01 mx spfmilter[4711]: ",  # rsyslog's traditional format
        "Dec 12 10:15:01 mx spfmilter[4711]: ",
        "Dec 02 10:15:01.123456 mx spfmilter[4711]: ",  # journalctl -o short-precise
        "2026-12-02T10:15:01.123456+00:00 mx spfmilter[4711]: ",  # RFC 3339
        "2026-12-02T10:15:01+0000 mx spfmilter[4711]: ",  # journalctl -o short-iso
        "Dec  2 10:15:01 mx spfmilter: ",
        "Dec  2 10:15:01 mx spfmilter[4711]: <6>",
    ],
)
def test_every_text_form(prefix: str) -> None:
    assert parse(f"{prefix}4XyZ1: verdict {FIELDS}") == EXPECTED
    assert parse(f"{prefix}NOQUEUE: verdict {FIELDS}\r") == EXPECTED


def test_quoted_values() -> None:
    fields = parse(f"NOQUEUE: verdict {REFUSED}")
    assert fields is not None
    assert fields["reply"] == "550 5.7.23 SPF MAIL FROM check for bob@bank.example: fail"
    assert (fields["dry_run"], fields["lookup_ms"]) == ("yes", "4")
    escaped = REFUSED.replace("sender=bob@bank.example", r'sender="\"a b\"\\c@bank.example"')
    fields = parse(f"NOQUEUE: verdict {escaped}")
    assert fields is not None and fields["sender"] == r'"a b"\c@bank.example'
    assert parse('X: verdict a="" b=1') == {"a": "", "b": "1"}


@pytest.mark.parametrize(
    "line",
    [
        "Dec  2 10:15:01 mx postfix/smtpd[123]: connect from unknown[203.0.113.9]",
        "",
        "just text",
        # Postfix logs the sender address: a sender spelling a verdict is
        # still a Postfix line.
        "Dec  2 10:15:01 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[203.0.113.9]: "
        "550 5.7.1 <u@x>; from=<a: verdict identity=mailfrom result=fail action=reject "
        "client_ip=6.6.6.6@evil.example> to=<u@x>",
        "Dec  2 10:15:01 mx other[1]: 4XyZ1: verdict " + FIELDS,
        "Dec  2 10:15:01 mx spfmilter[4711]: spfmilter starting: workers=1",
        '{"level": "info", "logger": "spfmilter.daemon", "message": "spfmilter starting"}',
        "[1, 2]",
        '{"MESSAGE": "4XyZ1: verdict ' + FIELDS + '", "SYSLOG_IDENTIFIER": "postfix/smtpd"}',
    ],
)
def test_other_lines(line: str) -> None:
    assert parse(line) is None


@pytest.mark.parametrize(
    "line",
    [
        # Cut short by a syslog message size limit, inside a quoted value.
        'NOQUEUE: verdict conn=4 client_ip=203.0.113.9 sender="x result=fail action=reject',
        'NOQUEUE: verdict conn=4 sender="a b"c=1',
        "NOQUEUE: verdict conn=4 client_ip=203.0.113.9 sender",
        "NOQUEUE: verdict conn=4  client_ip=203.0.113.9",
        'NOQUEUE: verdict conn=4 sender="a \\" b" oops result=fail',
        'NOQUEUE: verdict a="x"b=1',
        '{"level": "info", "logger": "spfmilter.verdicts", "message": "NOQUEUE: verdict',
        "NOQUEUE: SPF skipped - no fields at all",
        # The reason field must repeat the reason (or its start, when cut).
        'NOQUEUE: SPF skipped - abcdef conn=1 action=skip reason="abc"',
        'NOQUEUE: SPF skipped - abcdef conn=1 action=skip reason="abx..."',
    ],
)
def test_lines_that_start_as_verdicts_but_do_not_read(line: str) -> None:
    assert parse(line) == {}


def test_a_skip_reason_may_hold_what_looks_like_fields() -> None:
    reason = "SASL authenticated as a conn=1 client_ip=6.6.6.6 action=accept b"
    fields = {"conn": 5, "client_ip": "203.0.113.10", "helo": "x", "sender": "s@example.org"}
    fields.update(action="skip", reason=reason)
    line = f"NOQUEUE: SPF skipped - {reason} {format_fields(fields)}"
    parsed = parse(line)
    assert parsed is not None
    assert (parsed["client_ip"], parsed["action"], parsed["reason"]) == (
        "203.0.113.10",
        "skip",
        reason,
    )


def test_a_long_skip_reason_is_cut_in_its_field_only() -> None:
    reason = "SASL authenticated as " + "x" * FIELD_LIMIT
    fields = {"conn": 5, "client_ip": "203.0.113.10", "action": "skip", "reason": reason}
    parsed = parse(f"NOQUEUE: SPF skipped - {reason} {format_fields(fields)}")
    assert parsed is not None and parsed["action"] == "skip"


def test_json_forms() -> None:
    record: dict[str, object] = {"level": "info", "logger": "spfmilter.verdicts"}
    record.update(message=f"4XyZ1: verdict {FIELDS}", queue_id="4XyZ1", **EXPECTED)
    record.update(conn=3, lookup_ms=4)
    line = json.dumps(record)
    fields = parse(line)
    # The fields the report reads, as text.
    assert fields == {
        "client_ip": "198.51.100.7",
        "sender": "alice@example.org",
        "identity": "mailfrom",
        "result": "pass",
        "action": "accept",
    }
    assert parse(f"Dec  2 10:15:01 mx spfmilter[4711]: {line}") == fields
    assert parse(f"<6>{line}") == fields
    # journalctl -o json: the record is the entry's MESSAGE, as text or
    # (not UTF-8) as bytes.
    entry: dict[str, object] = {"__CURSOR": "s=1", "SYSLOG_IDENTIFIER": "spfmilter"}
    entry["MESSAGE"] = line
    assert parse(json.dumps(entry)) == fields
    entry["MESSAGE"] = f"4XyZ1: verdict {FIELDS}"
    assert parse(json.dumps(entry)) == EXPECTED
    entry["MESSAGE"] = list(f"4XyZ1: verdict {FIELDS} x=\xff".encode("latin-1"))
    assert parse(json.dumps(entry)) == {**EXPECTED, "x": "\N{REPLACEMENT CHARACTER}"}
    entry["MESSAGE"] = [1, 2, 300]
    assert parse(json.dumps(entry)) is None
    # A journal entry inside a journal entry is no record.
    assert parse(json.dumps({"MESSAGE": json.dumps({"MESSAGE": FIELDS})})) is None
    # Values of other types become text; a list is no field value.
    odd = parse(json.dumps({**record, "sender": ["a", "b"], "client_ip": None}))
    assert odd is not None and (odd["sender"], odd["client_ip"]) == ("['a', 'b']", "None")


def test_json_nested_too_deep_for_the_parser() -> None:
    assert parse("{" + '"a": [' * 100_000) is None
    assert parse('{"logger": "spfmilter.verdicts", "x": ' + "[" * 100_000) == {}


# --- lines made by spfmilter's own formatters ------------------------------

CHARS = st.one_of(
    st.characters(exclude_categories=()),
    st.sampled_from('\r\n\x00\t\x0b\x1b\x85\u2028\u202e\\" =%\udcff'),
)
values = st.text(CHARS, max_size=60)


def formatted(
    formatter: logging.Formatter, name: str, message: str, fields: dict[str, object]
) -> str:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)
    record.fields = fields
    return formatter.format(record)


@SETTINGS
@given(values, values, values)
def test_text_lines_read_back_as_logged(sender: str, helo: str, reply: str) -> None:
    fields: dict[str, object] = {"queue_id": "NOQUEUE", "conn": 1, "client_ip": "192.0.2.1"}
    fields.update(helo=helo, sender=sender, identity="mailfrom", result="fail", action="reject")
    fields.update(reply=reply, lookup_ms=3)
    message = f"NOQUEUE: verdict {format_fields(fields, 1)}"
    for line in (
        formatted(TextFormatter(), "spfmilter.verdicts", message, fields),
        "Dec  2 10:15:01 mx spfmilter[7]: "
        + formatted(MailLogFormatter(), "spfmilter.verdicts", message, fields),
    ):
        parsed = parse(line)
        assert parsed is not None
        # The values as the log shows them: escaped, never re-read as fields.
        for key in ("helo", "sender", "reply"):
            assert parsed[key] == escape(str(fields[key]) or ""), key
        assert (parsed["result"], parsed["action"], parsed["lookup_ms"]) == ("fail", "reject", "3")


@SETTINGS
@given(values, values)
def test_skip_lines_read_back_as_logged(reason: str, sender: str) -> None:
    fields: dict[str, object] = {"queue_id": "NOQUEUE", "conn": 1, "client_ip": "192.0.2.1"}
    fields.update(helo="x", sender=sender, action="skip", reason=reason)
    message = f"NOQUEUE: SPF skipped - {reason} {format_fields(fields, 1)}"
    parsed = parse(formatted(TextFormatter(), "spfmilter.verdicts", message, fields))
    assert parsed is not None
    assert (parsed["action"], parsed["reason"], parsed["sender"]) == (
        "skip",
        escape(reason),
        escape(sender),
    )


@SETTINGS
@given(values, values)
def test_json_lines_read_back_as_logged(sender: str, helo: str) -> None:
    fields: dict[str, object] = {"queue_id": "NOQUEUE", "conn": 1, "client_ip": "192.0.2.1"}
    fields.update(helo=helo, sender=sender, identity="helo", result="fail", action="reject")
    message = f"NOQUEUE: verdict {format_fields(fields, 1)}"
    parsed = parse(formatted(JsonFormatter(), "spfmilter.verdicts", message, fields))
    assert parsed is not None
    assert (parsed["sender"], parsed["identity"], parsed["action"]) == (sender, "helo", "reject")
