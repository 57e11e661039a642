"""Log output: the handlers, the two formats, and the one place that makes
every logged value safe.

This module owns how a log record becomes text: plain "LEVEL logger:
message" lines or one JSON object per line, on stderr or to syslog
(facility mail).  Log messages carry text from DNS and from SMTP clients (a
TXT record can hold a line feed, and macro expansion supplies spaces, RFC
7208 section 7.3), so the formatters escape every character that could end a
line or hide text: whatever a record holds, it stays one line, and no fake
line can be written through it.  Tracebacks follow their record, every line
of them (the exception's own text included) starting with "  | ", so that
none can pass for a record.  It imports config only.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from typing import Any

from spfmilter.config import Config
from spfmilter.values import LogFormat, LogTarget

# Escapes for the characters str.isprintable() refuses that are common
# enough to deserve a short form; the rest become \xNN or \uNNNN.
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """`text` with every non-printable character escaped (so it holds no
    line break of any kind: LF, CR, VT, FF, NEL, U+2028, U+2029, ...)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _SHORT.get(c) or _code(c) for c in text)


def _code(char: str) -> str:
    point = ord(char)
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


class TextFormatter(logging.Formatter):
    """'LEVEL logger: message' on one line (journald adds the time)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        text = self.formatMessage(record)
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            text += "".join(f"\n  | {escape(line)}" for line in trace.splitlines())
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, verdict fields as keys (JSON escapes every
    control character)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update({k: v if isinstance(v, int | float) else str(v) for k, v in fields.items()})
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data)


class _SysLog(logging.handlers.SysLogHandler):
    """Syslog messages tagged "name[pid]: " with the pid of the process
    that logs (a worker forked after the handler was made has its own)."""

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(**options)
        self._name = name

    def format(self, record: logging.LogRecord) -> str:
        return f"{self._name}[{os.getpid()}]: {super().format(record)}"


def setup_logging(config: Config, ident: str) -> None:
    """Install the one handler for the whole process."""
    settings = config.log
    handler: logging.Handler
    if settings.target is LogTarget.SYSLOG:
        handler = _SysLog(ident, address=settings.syslog_socket, facility=_SysLog.LOG_MAIL)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.value.upper())
