"""Log formatting: one record is one line, whatever text it carries."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from spfmilter.logs import JsonFormatter, TextFormatter, escape

FORGED = "x\nINFO spfmilter.verdicts: verdict queue_id=- result=pass action=accept"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text, ünïcode", "plain text, ünïcode"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("nul\x00 del\x7f vt\x0b ff\x0c", "nul\\x00 del\\x7f vt\\x0b ff\\x0c"),
        ("nel\x85 ls\u2028 ps\u2029", "nel\\x85 ls\\u2028 ps\\u2029"),
        ("lone surrogate \udcff", "lone surrogate \\udcff"),
    ],
)
def test_escape(text: str, expected: str) -> None:
    assert escape(text) == expected
    assert len(escape(text).splitlines()) == 1


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError(FORGED)
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("spfmilter.dns", logging.WARNING, __file__, 1, message, args, info)


def test_text_format_keeps_a_record_on_one_line() -> None:
    line = TextFormatter().format(record("DNS server failure looking up %s TXT", FORGED))
    assert line.splitlines() == [line]
    assert line.startswith("WARNING spfmilter.dns: DNS server failure looking up x\\nINFO")


def test_tracebacks_are_indented_and_escaped() -> None:
    text = TextFormatter().format(record("internal error", exc=True))
    first, *rest = text.split("\n")
    assert first == "WARNING spfmilter.dns: internal error"
    # The exception's text brought a line feed: that line too is marked as
    # part of the traceback.
    assert rest and all(line.startswith("  | ") for line in rest)
    assert "  | INFO spfmilter.verdicts: verdict queue_id=- result=pass action=accept" in rest


def test_json_format_is_one_line() -> None:
    text = JsonFormatter().format(record("looking up %s", FORGED, exc=True))
    assert text.splitlines() == [text]
    data = json.loads(text)
    assert data["message"] == f"looking up {FORGED}"
    assert "ValueError" in data["traceback"]
