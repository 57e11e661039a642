"""Log formatting: one record is one line, whatever text it carries."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from spfmilter.printable import escape
from spfmilter.process.logs import (
    JournalFormatter,
    JsonFormatter,
    MailLogFormatter,
    TextFormatter,
    stderr_is_journal,
)

FORGED = "x\nINFO spfmilter.verdicts: NOQUEUE: verdict result=pass action=accept"


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
    assert "  | INFO spfmilter.verdicts: NOQUEUE: verdict result=pass action=accept" in rest


def test_json_format_is_one_line() -> None:
    text = JsonFormatter().format(record("looking up %s", FORGED, exc=True))
    assert text.splitlines() == [text]
    data = json.loads(text)
    assert data["message"] == f"looking up {FORGED}"
    assert "ValueError" in data["traceback"]


def at(level: int, message: str, *, exc: bool = False) -> logging.LogRecord:
    made = record(message, exc=exc)
    made.levelno, made.levelname = level, logging.getLevelName(level)
    return made


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (logging.INFO, "4XyZ1: verdict conn=1"),
        (logging.WARNING, "warning: 4XyZ1: verdict conn=1"),
        (logging.ERROR, "error: 4XyZ1: verdict conn=1"),
        (logging.CRITICAL, "fatal: 4XyZ1: verdict conn=1"),
    ],
)
def test_mail_log_lines_are_the_message_as_postfix_writes_them(level: int, expected: str) -> None:
    assert MailLogFormatter().format(at(level, "4XyZ1: verdict conn=1")) == expected


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
    ],
)
def test_journal_lines_carry_their_priority(level: int, prefix: str) -> None:
    text = JournalFormatter(MailLogFormatter()).format(at(level, FORGED, exc=True))
    lines = text.split("\n")
    # The record, and every traceback line, at the record's priority.
    assert len(lines) > 2 and all(line.startswith(prefix) for line in lines)
    assert (
        lines[0]
        .removeprefix(prefix)
        .endswith("x\\nINFO spfmilter.verdicts: NOQUEUE: verdict result=pass action=accept")
    )
    assert all(line.startswith(prefix + "  | ") for line in lines[1:])


def test_json_lines_in_the_journal_too() -> None:
    text = JournalFormatter(JsonFormatter()).format(at(logging.ERROR, "boom", exc=True))
    assert text.startswith("<3>{") and "\n" not in text
    assert json.loads(text[3:])["level"] == "error"


def test_stderr_is_the_journal_only_when_it_is_the_stream_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stream").open("w") as stream, (tmp_path / "other").open("w") as other:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        monkeypatch.setattr(sys, "stderr", stream)
        assert stderr_is_journal()
        # A child whose stderr was redirected inherits the variable.
        monkeypatch.setattr(sys, "stderr", other)
        assert not stderr_is_journal()
        monkeypatch.delenv("JOURNAL_STREAM")
        monkeypatch.setattr(sys, "stderr", stream)
        assert not stderr_is_journal()
