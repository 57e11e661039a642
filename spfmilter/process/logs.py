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
none can pass for a record.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from typing import Any

from spfmilter.config.schema import Config, LogFormat, LogTarget
from spfmilter.printable import escape


class TextFormatter(logging.Formatter):
    """'LEVEL logger: message' on one line (journald adds the time)."""

    def __init__(self, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        text = self.formatMessage(record)
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            text += "".join(f"\n  | {escape(line)}" for line in trace.splitlines())
        return text


# Postfix's own words for the levels it marks in the mail log.
_MAIL_LOG_LABELS = {"WARNING": "warning: ", "ERROR": "error: ", "CRITICAL": "fatal: "}


class MailLogFormatter(TextFormatter):
    """The message alone, as Postfix writes its lines to the mail log
    ("4XyZ1: verdict ...", "warning: ..."): the syslog priority carries the
    level, and the tag the program's name and process id."""

    def __init__(self) -> None:
        super().__init__("%(label)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.label = _MAIL_LOG_LABELS.get(record.levelname, "")
        return super().format(record)


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


# sd-daemon(3): the priority prefixes journald reads at the start of a line.
_PRIORITIES = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class JournalFormatter(logging.Formatter):
    """Another formatter's text with every line prefixed "<N>", the syslog
    priority (sd-daemon(3)): journald files each line at its record's level,
    traceback lines included, so "journalctl -p warning" finds them."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITIES.get(record.levelname, 6)}>"
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


def stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd connected (JOURNAL_STREAM
    holds its "device:inode", systemd.exec(5)), not a copy inherited by a
    process whose stderr was since redirected."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):  # no stderr at all
        return False
    return bool(expected) and expected == f"{info.st_dev}:{info.st_ino}"


def report(program: str, message: str, level: int = logging.ERROR) -> None:
    """One message on stderr before logging is set up (a bad command line or
    configuration): "program: message" on a terminal, as commands write
    them; in the journal with its priority and label, the program's name
    being the journal's own tag ("<3>error: spfmilter.cfg:12: ...").  An
    error, not "fatal": the unit's check before a reload says the same, and
    the running daemon then keeps its configuration."""
    record = logging.LogRecord(program, level, "", 0, message, None, None)
    if stderr_is_journal():
        text = JournalFormatter(MailLogFormatter()).format(record)
    else:
        label = _MAIL_LOG_LABELS.get(record.levelname, "") if level < logging.ERROR else ""
        text = f"{program}: {label}{escape(message)}"
    print(text, file=sys.stderr, flush=True)


def setup_logging(config: Config, ident: str) -> None:
    """Install the one handler for the whole process: syslog, the journal
    (stderr under systemd) or a plain stream."""
    settings = config.log
    json_lines = settings.format is LogFormat.JSON
    handler: logging.Handler
    formatter: logging.Formatter
    if settings.target is LogTarget.SYSLOG:
        handler = _SysLog(ident, address=settings.syslog_socket, facility=_SysLog.LOG_MAIL)
        formatter = JsonFormatter() if json_lines else MailLogFormatter()
    else:
        handler = logging.StreamHandler(sys.stderr)
        if stderr_is_journal():
            formatter = JournalFormatter(JsonFormatter() if json_lines else MailLogFormatter())
        else:
            formatter = JsonFormatter() if json_lines else TextFormatter()
    handler.setFormatter(formatter)
    # No format here shows in which thread or process a record was made:
    # spare each record those lookups (the logging HOWTO's "Optimization").
    # Set once, before any thread starts.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.value.upper())
