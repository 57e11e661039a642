"""Which log lines are spfmilter's verdicts, and their fields.

This module owns reading one log line (or one journal message) back into the
fields spfmilter's verdict line was made of.  The line is attacker-influenced
text (sender addresses, HELO names, DNS explanations), so recognition is
anchored: a record counts only where spfmilter's own line starts (after an
optional sd-daemon(3) "<N>" priority, a syslog time, host and "spfmilter"
tag, or the "INFO spfmilter.verdicts: " of its stderr text form), never
where a sender address merely contains the words, as Postfix's own lines
can.  Field values are read exactly as spfmilter quoted them (double quotes
with backslash escapes for `"` and backslash); the escapes the log adds for
non-printable characters (\\n, \\xNN, \\uNNNN) are kept as they are, which is
how an administrator sees the value in the log.  JSON lines (the `json` log
format, and the journal's `-o json` output with the message inside) give
the same fields as keys.

`parse()` answers a field dictionary for a verdict or skip record (empty
when the line starts like one but its fields do not read), or None for any
other line.  The log format is the contract here, not spfmilter's code.
"""

from __future__ import annotations

import json
import re

# The log format's record: what may stand before spfmilter's message, then
# the message's start: a JSON object, or the queue id and "verdict" or
# "SPF skipped - ".
_RECORD = re.compile(
    r"(?:<\d{1,3}>)?"  # sd-daemon(3) priority, when nothing consumed it
    r"(?:"
    r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?"  # syslog's traditional time
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S*)"  # RFC 3339 time (rsyslog, journalctl)
    r" \S+ spfmilter[\w.-]*(?:\[\d+\])?: (?:<\d{1,3}>)?"  # host and tag
    r"|INFO spfmilter\.verdicts: "  # spfmilter's own text form on stderr
    r")?"
    r"(?:(\{)|\S+: (?:(verdict )|SPF skipped - ))"
)
# One field of the key=value part: a quoted value with its escapes, or a
# bare one (never holding a space or a quote: spfmilter quotes those).
_FIELD = re.compile(r'([a-z_]+)=("[^"\\]*(?:\\.[^"\\]*)*"|[^ "]*)(?: |$)')
_UNQUOTE = re.compile(r'\\(["\\])')
# Stands in for a quoted value; spfmilter escapes it in any value.
_MARK = "\x00"
# Where the fields of a skip record may start, after the reason's text.
_SKIP_FIELDS = re.compile(r" (?=conn=\d+ )")

VERDICT_LOGGER = "spfmilter.verdicts"
# The fields the report reads from a record.
FIELDS = (
    "client_ip",
    "client_name",
    "sender",
    "identity",
    "result",
    "action",
    "dry_run",
    "exempt_recipients",
    "reason",
    "rescue",
    "rescue_domain",
    "rescue_reason",
)

Fields = dict[str, str]


def parse(line: str, *, journal: bool = True) -> Fields | None:
    """The fields of a verdict or skip record; {} when `line` starts like
    one but does not read; None for any other line.  `journal`: a JSON
    line may be a journal entry whose message is the record."""
    found = _RECORD.match(line)
    if found is None:
        return None
    if found.group(1):
        return _json(line[found.start(1) :], journal)
    rest = line[found.end() :].rstrip("\r")
    if found.group(2):
        return _fields(rest)
    return _skip(rest)


def _fields(text: str) -> Fields:
    """key=value pairs, all of `text` or nothing."""
    if '"' not in text:
        return _bare(text)
    if "\\" in text or _MARK in text:
        return _scanned(text)
    # Quoted values without escapes: each stands in for a mark while the
    # rest reads as bare fields, and must come back as a whole value.
    pieces = text.split('"')
    if len(pieces) % 2 == 0:
        return {}
    fields = _bare(_MARK.join(pieces[0::2]))
    quoted = pieces[1::2]
    used = 0
    for key, value in fields.items():
        if value == _MARK:
            fields[key] = quoted[used]
            used += 1
    return fields if used == len(quoted) else {}


def _bare(text: str) -> Fields:
    # In a line spfmilter wrote, every space separates two fields and every
    # "=" a key from its value (a value holding either is quoted).  Counting
    # them is the check that pays for itself; a line not written so may
    # read wrongly, but never unboundedly.
    parts = text.replace("=", " ").split(" ")
    if len(parts) % 2 or text.count("=") * 2 != len(parts):
        return {}
    pairs = iter(parts)
    return dict(zip(pairs, pairs, strict=True))


def _scanned(text: str) -> Fields:
    """Fields read one by one, for values with escapes."""
    found = _FIELD.findall(text)
    # Contiguous or nothing: a field found further on, past text that is
    # no field, could sit inside a value that lost its closing quote.  Each
    # field but the last takes its own length and one space.
    if sum(len(key) + len(value) + 1 for key, value in found) + len(found) - 1 != len(text):
        return {}
    return {key: _unquote(value) for key, value in found}


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    value = value[1:-1]
    return _UNQUOTE.sub(r"\1", value) if "\\" in value else value


def _skip(text: str) -> Fields:
    """The fields after a skip's reason: the reason is free text, so each
    " conn=N " is tried in turn, and the fields count only when their
    reason= repeats the text before them (or its start, when the field was
    cut to its length limit and ends in "...")."""
    for start in _SKIP_FIELDS.finditer(text):
        fields = _fields(text[start.end() :])
        reason, before = fields.get("reason"), text[: start.start()]
        if reason is not None and (
            reason == before or (reason.endswith("...") and before.startswith(reason[:-3]))
        ):
            return fields
    return {}


def _json(text: str, journal: bool) -> Fields | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deep
        return {} if f'"{VERDICT_LOGGER}"' in text else None
    if not isinstance(data, dict):
        return None
    if "MESSAGE" in data:
        return _journal_entry(data) if journal else None
    if data.get("logger") != VERDICT_LOGGER:
        return None
    return {key: str(data[key]) for key in FIELDS if key in data}


def _journal_entry(entry: dict[str, object]) -> Fields | None:
    """A `journalctl -o json` entry: its MESSAGE, when spfmilter logged it
    (journald gives a message that is not UTF-8 as a list of bytes)."""
    if not str(entry.get("SYSLOG_IDENTIFIER", "spfmilter")).startswith("spfmilter"):
        return None
    message = entry["MESSAGE"]
    if isinstance(message, list):
        try:
            message = bytes(message).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return None
    if not isinstance(message, str):
        return None
    return parse(message, journal=False)
