"""spfmilter's lines in the journal and in mail.log, through the real programs.

Under systemd/spfmilter.service the daemon's stderr is a journal stream
(StandardError=journal) whose header says facility mail (SyslogFacility=mail).
spfmilter then puts each line's sd-daemon(3) priority in front ("<6>",
"<4>") and writes the message alone, as Postfix does.  These tests check
what that turns into with Debian 12's own programs: systemd-journald files
each line at its level under facility mail with the "<N>" consumed, and
rsyslogd, reading what journald forwards, writes it to mail.log with the tag
"spfmilter[PID]:" and to no other facility's file.  journald and rsyslogd
run in a private mount namespace with private configuration and storage
(tests/support/journal.py); the stream's header is read from the unit file,
so these tests follow the unit.  Without the programs the tests are
skipped, and fail instead when CI is set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.daemon import REPO, Sections, config_text, wait_for
from testkit.dnsserver import DNSTestServer
from testkit.milterclient import one_transaction
from tests.support import journal
from tests.support.environment import unavailable
from tests.support.journal import Entry, JournaledDaemon, LoggingStack, StreamHeader

UNIT = REPO / "systemd" / "spfmilter.service"
CLIENT_IP = "198.51.100.7"  # one of "our servers" in testkit/zones/core.yaml
HELO = "helo-pass.example.org"
PASSING = "a@spf-pass.example.org"
TIMING_OUT = "t@spf-timeout.example.org"  # its TXT lookup never gets an answer
# Debian 11's rule for facility daemon, a unit's default, which Debian 12's
# rsyslog.conf dropped: a line that lost facility mail would land here.
DAEMON_RULE = journal.FileRule("daemon.*", "/var/log/daemon.log")
WAIT = 10  # seconds: an upper bound for a line to travel, not a pause

StartDaemon = Callable[..., JournaledDaemon]


@pytest.fixture(autouse=True)
def programs_installed() -> None:
    absent = journal.missing()
    if absent:
        unavailable("not installed: " + ", ".join(absent))


@pytest.fixture
def header() -> StreamHeader:
    return journal.unit_stream_header(UNIT)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LoggingStack]:
    """journald and rsyslogd with Debian's file rules; neither may complain,
    and no line may keep a priority prefix journald did not read."""
    rules = journal.file_rules(journal.RSYSLOG_CONF.read_text())
    assert any(rule.selector == "mail.*" for rule in rules), rules
    with LoggingStack(tmp_path / "logging", [*rules, DAEMON_RULE]) as running:
        yield running
        assert unconsumed(running.journald.entries()) == []
    assert running.journald.log_text() == ""
    assert running.rsyslog.log_text() == ""
    assert running.rsyslog.unexpected() == []


@pytest.fixture
def start_daemon(
    tmp_path: Path, dns_server: DNSTestServer, stack: LoggingStack, header: StreamHeader
) -> Iterator[StartDaemon]:
    """Start daemons on journal streams (one process each unless the
    sections say otherwise); each is stopped at teardown, its stream read to
    the end, and must not have logged a warning or worse other than the
    `allowed` patterns."""
    started: list[tuple[JournaledDaemon, tuple[str, ...]]] = []

    def start(sections: Sections | None = None, allowed: tuple[str, ...] = ()) -> JournaledDaemon:
        merged = {**(sections or {})}
        merged["milter"] = {"workers": "1", **merged.get("milter", {})}
        daemon = JournaledDaemon(
            tmp_path / f"daemon{len(started)}",
            config_text(dns_server, merged),
            stack.journald,
            header,
        )
        started.append((daemon, allowed))
        daemon.start()
        return daemon

    yield start
    for daemon, allowed in started:
        daemon.stop()
        if daemon.stream_id:
            wait_for(daemon.drained, WAIT, "journald to read the daemon's stream to its end")
        assert daemon.unexpected(allowed) == [], daemon.log_text()


def unconsumed(entries: list[Entry]) -> list[str]:
    """Messages that still start with a priority prefix (not read as one)."""
    return [e["MESSAGE"] for e in entries if e.get("MESSAGE", "").startswith("<")]


def find(entries: Callable[[], list[Entry]], pattern: str, count: int = 1) -> list[Entry]:
    """Poll until `count` entries have a MESSAGE matching `pattern`."""
    found: list[Entry] = []

    def present() -> bool:
        found[:] = [e for e in entries() if re.search(pattern, e.get("MESSAGE", ""))]
        return len(found) >= count

    wait_for(present, WAIT, f"{count} journal entries matching {pattern!r}")
    return found


def logged(stack: LoggingStack, name: str, pattern: str, count: int = 1) -> list[str]:
    """Poll rsyslog's file `name` until `count` lines match `pattern`."""
    found: list[str] = []

    def present() -> bool:
        found[:] = [line for line in stack.rsyslog.lines(name) if re.search(pattern, line)]
        return len(found) >= count

    wait_for(present, WAIT, f"{count} lines matching {pattern!r} in {name}")
    return found


def tag(pid: int | str) -> str:
    """The start of a line of the daemon in an rsyslog file (Debian 12's
    default format: RFC 3339 time, host name, then the syslog tag)."""
    return rf"^\S+ \S+ spfmilter\[{pid}\]: "


def test_the_unit_asks_for_facility_mail(header: StreamHeader) -> None:
    # The premise of the tests below, read the way systemd reads the unit.
    assert header.priority == journal.FACILITIES["mail"] * 8 + journal.LEVELS["info"]
    assert header.identifier == "spfmilter"
    assert header.level_prefix


def test_levels_and_facility_in_the_journal_and_mail_log(
    start_daemon: StartDaemon, stack: LoggingStack, header: StreamHeader
) -> None:
    daemon = start_daemon(allowed=(r"^warning: DNS timeout looking up spf-timeout\.example\.org",))
    (start,) = find(daemon.entries, r"^spfmilter starting: ")
    assert start["PRIORITY"] == "6", start

    one_transaction(daemon.socket, CLIENT_IP, HELO, PASSING)
    (verdict,) = find(daemon.entries, r"^NOQUEUE: verdict .*\bresult=pass\b")
    assert verdict["PRIORITY"] == "6"
    assert verdict["SYSLOG_FACILITY"] == str(header.facility) == "2"
    assert verdict["SYSLOG_IDENTIFIER"] == "spfmilter"
    assert verdict["_PID"] == str(daemon.pid)
    assert verdict["_TRANSPORT"] == "stdout"

    one_transaction(daemon.socket, CLIENT_IP, HELO, TIMING_OUT)
    find(daemon.entries, r"^NOQUEUE: verdict .*\bresult=temperror\b")
    # The warning itself, not the verdict quoting it in its reply.
    timeouts = find(daemon.entries, r"^(?!NOQUEUE: ).*DNS timeout looking up spf-timeout\.")
    assert {(e["PRIORITY"], e["SYSLOG_FACILITY"]) for e in timeouts} == {("4", "2")}, timeouts
    assert all(e["MESSAGE"].startswith("warning: DNS timeout ") for e in timeouts), timeouts

    # Forwarded by journald to rsyslog as mail.info and mail.warning, tagged
    # with the identifier and the PID: Postfix's own lines look the same.
    (line,) = logged(stack, "mail.log", tag(daemon.pid) + r"NOQUEUE: verdict .*\bresult=pass\b")
    logged(stack, "mail.log", tag(daemon.pid) + r"warning: DNS timeout looking up spf-timeout\.")
    # Every file whose rule takes mail.info has the line ("syslog" takes
    # all facilities); every other file has nothing of spfmilter's.
    chosen = {r.name for r in stack.rsyslog.rules if r.selects(header.facility, 6)}
    others = {r.name for r in stack.rsyslog.rules} - chosen
    assert "mail.log" in chosen and "daemon.log" in others, (chosen, others)
    for name in chosen:
        logged(stack, name, "^" + re.escape(line) + "$")
    for name in others:
        assert not any("spfmilter[" in text for text in stack.rsyslog.lines(name)), name


def test_json_lines_in_the_journal_and_mail_log(
    start_daemon: StartDaemon, stack: LoggingStack
) -> None:
    daemon = start_daemon({"log": {"format": "json"}})
    (start,) = find(daemon.entries, r'^\{.*"message": "spfmilter starting: ')
    assert start["PRIORITY"] == "6"
    (warning,) = find(daemon.entries, r'^\{"level": "warning", .*"message": "running as root')
    assert warning["PRIORITY"] == "4"

    one_transaction(daemon.socket, CLIENT_IP, HELO, PASSING)
    (verdict,) = find(daemon.entries, r'^\{.*"message": "NOQUEUE: verdict ')
    assert (verdict["PRIORITY"], verdict["SYSLOG_FACILITY"]) == ("6", "2")
    record = json.loads(verdict["MESSAGE"])
    assert (record["level"], record["queue_id"], record["result"]) == ("info", "NOQUEUE", "pass")
    (line,) = logged(stack, "mail.log", tag(daemon.pid) + r'\{.*"message": "NOQUEUE: verdict ')
    assert json.loads(line.split("]: ", 1)[1]) == record


def test_lines_of_workers_carry_the_workers_pid(
    start_daemon: StartDaemon, stack: LoggingStack
) -> None:
    # Workers inherit the daemon's stderr: journald tells their lines apart
    # by the sender's credentials on each read, and so does the tag.
    daemon = start_daemon({"milter": {"workers": "2"}})
    find(daemon.entries, r"^worker 1 started: ")
    workers = {str(pid) for pid in daemon.pids()[1:]}
    assert len(workers) == 2, workers
    for _ in range(4):
        one_transaction(daemon.socket, CLIENT_IP, HELO, PASSING)
    verdicts = find(daemon.entries, r"^NOQUEUE: verdict .*\bresult=pass\b", count=4)
    assert {e["_PID"] for e in verdicts} <= workers, verdicts
    for entry in verdicts:
        conn = re.escape(entry["MESSAGE"].split()[2])  # "conn=N", unique per daemon
        logged(stack, "mail.log", tag(entry["_PID"]) + rf"NOQUEUE: verdict {conn} ")


# spfmilter's logging set up as the daemon sets it up, then an exception
# logged with its traceback, as the milter's callback guard logs one.
TRACEBACK_SCRIPT = """
import logging
from spfmilter.config.loading import parse_config
from spfmilter.process.logs import setup_logging

setup_logging(parse_config(""), "spfmilter")
try:
    raise ValueError("first line\\nsecond line")
except ValueError:
    logging.getLogger("spfmilter.milter").exception("internal error in envfrom")
"""


def run_on_stream(stack: LoggingStack, header: StreamHeader, *args: str) -> tuple[int, int]:
    """Run this Python with `args` in the namespace, stderr on a journal
    stream; return its PID and exit status."""
    argv = [*journal.python_in(stack.namespace), *args]
    process = journal.start_on_stream(stack.journald, header, argv)
    try:
        return process.pid, process.wait(30)
    finally:
        if process.poll() is None:  # timed out: not left running
            process.kill()
            process.wait(5)


def test_a_traceback_keeps_its_records_level(stack: LoggingStack, header: StreamHeader) -> None:
    pid, status = run_on_stream(stack, header, "-c", TRACEBACK_SCRIPT)
    assert status == 0

    def entries() -> list[Entry]:
        return [e for e in stack.journald.entries() if e.get("_PID") == str(pid)]

    # The last line written: the stream is read in order.
    find(entries, r"^  \| second line$")
    messages = [e["MESSAGE"] for e in entries()]
    assert messages[:2] == [
        "error: internal error in envfrom",
        "  | Traceback (most recent call last):",
    ]
    # The exception's own text breaks a line too, and keeps the mark.
    assert messages[-2:] == ["  | ValueError: first line", "  | second line"], messages
    assert all(m.startswith("  | ") for m in messages[1:]), messages
    # Every line at the record's level, so that "journalctl -p err" shows
    # the whole traceback; one mail.log line each, in order.
    assert {(e["PRIORITY"], e["SYSLOG_FACILITY"]) for e in entries()} == {("3", "2")}
    lines = logged(stack, "mail.log", tag(pid), count=len(messages))
    assert [line.split("]: ", 1)[1] for line in lines] == messages


def test_a_configuration_error_is_filed_as_an_error(
    stack: LoggingStack, header: StreamHeader, tmp_path: Path
) -> None:
    # What ExecStartPre (--check-config) and ExecStart say about a bad file:
    # the unit promises that the file, line and key are in the journal.
    config = tmp_path / "bad.cfg"
    config.write_text("[dns]\ntimeout = soon\n")
    pid, status = run_on_stream(
        stack, header, "-m", "spfmilter", "--check-config", "--config", str(config)
    )
    assert status == 78  # EX_CONFIG
    (entry,) = find(
        lambda: [e for e in stack.journald.entries() if e.get("_PID") == str(pid)],
        r"bad\.cfg:2: \[dns\] timeout: ",
    )
    assert int(entry["PRIORITY"]) <= journal.LEVELS["err"], entry
