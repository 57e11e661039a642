"""Property-based tests of log lines: one line, whatever they carry."""

from __future__ import annotations

import json

from hypothesis import example, given

from spfmilter.printable import escape
from spfmilter.process.logs import JsonFormatter, TextFormatter
from tests.support.checks import assert_one_line, log_record
from tests.support.strategies import SETTINGS, texts


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
