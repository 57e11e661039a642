"""The verdict line's fields: written as key=value, read back as written."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from spfmilter.core.verdicts import FIELD_LIMIT, format_fields
from spfmilter.process.logs import JsonFormatter, TextFormatter
from tests.support.checks import assert_one_line, log_record, unquote
from tests.support.strategies import SETTINGS, texts


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
