"""``spfmilter report`` on logs the real daemon wrote.

The daemon runs as in production, its verdicts driven over the milter
protocol with the test zone's names for each result (testkit/zones/core.yaml):
once logging text to stderr while rejecting, once logging JSON in dry run,
and once under journald and rsyslog as systemd runs it.  The report then
reads what was logged (the file, a gzip of it, standard input, the
journal's export, rsyslog's mail.log) and must count exactly what was
sent, whatever form the lines took.  Senders with markup and escape
sequences in them travel the whole way.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from spfmilter.report import main
from testkit.daemon import REPO, Daemon, config_text, wait_for
from testkit.dnsserver import DNSTestServer
from testkit.milterclient import MilterClient
from tests.conftest import MakeDaemon
from tests.support import htmlcheck, journal
from tests.support.environment import unavailable
from tests.support.journal import JournaledDaemon, LoggingStack

OURS = "198.51.100.7"  # in spf-pass.example.org's record; helo-none's address
FORWARDER = "203.0.113.77"  # a stranger to every record of the zone
FORWARDER_NAME = "mx.fwd.example"
HOSTILE = ("<script>alert(1)</script>@x", "e@x\x1b[31m.example")
UNRELATED = [f"u@fwd{n}.example" for n in range(6)]  # no such domains: none

PASS = ("mailfrom", "pass", "accept")
NONE = ("mailfrom", "none", "accept")


def ours(helo: str, sender: str) -> tuple[str, str, str, str]:
    return (OURS, "unknown", helo, sender)


# (client, its name, HELO, sender) -> (identity, result, action) of its verdict
TRANSACTIONS: list[tuple[tuple[str, str, str, str], tuple[str, str, str]]] = [
    (ours("helo-pass.example.org", "a@spf-pass.example.org"), PASS),
    (ours("helo-pass.example.org", "b@spf-pass.example.org"), PASS),
    (ours("helo-none.example.org", "m@spf-fail.example.org"), ("mailfrom", "fail", "reject")),
    (ours("helo-none.example.org", "n@spf-fail-noexp.example.org"), ("mailfrom", "fail", "reject")),
    (
        ours("helo-none.example.org", "s@spf-softfail.example.org"),
        ("mailfrom", "softfail", "accept"),
    ),
    (ours("helo-none.example.org", "x@spf-neutral.example.org"), ("mailfrom", "neutral", "accept")),
    (ours("helo-none.example.org", "y@spf-none.example.org"), NONE),
    (
        ours("helo-none.example.org", "p@spf-permerror.example.org"),
        ("mailfrom", "permerror", "accept"),
    ),
    (
        ours("helo-none.example.org", "t@spf-servfail.example.org"),
        ("mailfrom", "temperror", "defer"),
    ),
    (ours("helo-fail.example.org", "h@spf-pass.example.org"), ("helo", "fail", "reject")),
    *((ours("helo-none.example.org", sender), NONE) for sender in HOSTILE),
    *(((FORWARDER, FORWARDER_NAME, "helo-none.example.org", s), NONE) for s in UNRELATED),
]
SKIPPED = (("127.0.0.1", "localhost", "localhost", "l@spf-pass.example.org"),)
ALLOWED = (r"DNS server failure looking up spf-servfail\.example\.org",)
WIDE = "none,softfail,fail"  # --reject for the preview: the forwarder's mail is none


def send(socket: str, client: str, name: str, helo: str, sender: str) -> None:
    with MilterClient(socket) as milter:
        milter.negotiate()
        milter.macros("C", {"j": "mx.test.example"})
        milter.connect(name, client)
        milter.helo(helo)
        milter.transaction(f"<{sender}>", ["<user@example.net>"])


def drive(daemon: Daemon) -> None:
    """Every transaction, then wait until each has its line in the log."""
    for (client, name, helo, sender), _ in TRANSACTIONS:
        send(daemon.socket, client, name, helo, sender)
    for client, name, helo, sender in SKIPPED:
        send(daemon.socket, client, name, helo, sender)
    expected = len(TRANSACTIONS) + len(SKIPPED)
    wait_for(lambda: count_records(daemon.log_text()) >= expected, 10, "every verdict logged")


def count_records(text: str) -> int:
    return len(re.findall(r": (verdict |SPF skipped - )", text))


def report(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["--json", *argv]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def expected_results() -> dict[tuple[str, str], list[int]]:
    table: dict[tuple[str, str], list[int]] = {}
    for _, (identity, result, action) in TRANSACTIONS:
        row = table.setdefault((identity, result), [0, 0, 0])
        row[("accept", "reject", "defer").index(action)] += 1
    return table


def check(data: dict[str, object], log: str, *, dry_run: bool) -> None:
    """The report of one daemon's log, with --reject none,softfail,fail."""
    rows = data["by_result"]
    assert isinstance(rows, list)
    found = {(r["identity"], r["result"]): [r["accept"], r["reject"], r["defer"]] for r in rows}
    assert found == expected_results()
    refused_or_deferred = sum(a != "accept" for _, (_, _, a) in TRANSACTIONS)
    assert data["verdicts"] == len(TRANSACTIONS)
    assert data["dry_run"] == (refused_or_deferred if dry_run else 0)
    assert (data["skipped"], data["skips"]) == (
        1,
        [{"reason": "localhost is always allowed", "count": 1}],
    )
    assert data["unreadable"] == 0
    lines = data["lines"]
    assert isinstance(lines, int)
    assert data["other_lines"] == lines - len(TRANSACTIONS) - len(SKIPPED)
    # none, softfail, fail of MAIL FROM: 2 fail, 1 softfail, 1 + 2 + 6 none.
    refusals = data["refusals"]
    assert isinstance(refusals, dict)
    assert (refusals["total"], refusals["not_evaluated"], refusals["still_refused"]) == (12, 12, 12)
    assert data["helo_refused"] == 1
    domains = data["domains"]
    assert isinstance(domains, list)
    assert {d["domain"]: d["refused"] for d in domains} == {
        "spf-fail.example.org": 1,
        "spf-fail-noexp.example.org": 1,
        "spf-softfail.example.org": 1,
        "spf-none.example.org": 1,
        # As the log shows them: the escape sequence stays escaped.
        "x": 1,
        "x\\x1b[31m.example": 1,
        **{s.split("@")[1]: 1 for s in UNRELATED},
    }
    forwarders = data["forwarders"]
    assert isinstance(forwarders, list) and len(forwarders) == 1
    (forwarder,) = forwarders
    assert forwarder["client"]["client_ip"] == FORWARDER
    assert (forwarder["client"]["domains"], forwarder["client"]["refused"]) == (6, 6)
    # The client's name reaches the log with the verdict line's client_name=
    # field; before, the report can only name the address.
    if "client_name=" in log or '"client_name"' in log:
        assert forwarder["config"] == f"ptr_domains = {FORWARDER_NAME}"
    else:
        assert forwarder["config"] == f"trusted_relays = {FORWARDER}/32"
    assert data["forwarder_config"] == f"[skip]\n{forwarder['config']}\n"
    assert data["exact"] is True


@pytest.fixture
def text_log(make_daemon: MakeDaemon) -> Path:
    daemon = make_daemon(allowed=ALLOWED)
    drive(daemon)
    return daemon.log_path


def test_text_log_from_file_gzip_and_stdin(
    text_log: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = text_log.read_text()
    assert "INFO spfmilter.verdicts: NOQUEUE: verdict " in log  # the text form on stderr
    data = report(capsys, "--reject", WIDE, str(text_log))
    check(data, log, dry_run=False)
    # Today's mailfrom_reject (fail): only the two fails.
    default = report(capsys, str(text_log))
    assert isinstance(default["refusals"], dict) and default["refusals"]["total"] == 2
    assert default["forwarders"] == []

    packed = tmp_path / "spfmilter.log.1.gz"
    packed.write_bytes(gzip.compress(text_log.read_bytes()))
    assert report(capsys, "--reject", WIDE, str(packed)) == {**data, "inputs": [str(packed)]}
    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(packed.read_bytes())))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert report(capsys, "--reject", WIDE) == {**data, "inputs": ["standard input"]}
    # Two files: everything twice.
    both = report(capsys, "--reject", WIDE, str(text_log), str(packed))
    assert both["verdicts"] == 2 * len(TRANSACTIONS)


def test_text_and_html_outputs_are_safe(
    text_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--reject", WIDE, str(text_log)]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "x\\x1b[31m.example" in text
    assert f"trusted_relays = {FORWARDER}/32" in text or f"ptr_domains = {FORWARDER_NAME}" in text

    assert main(["--html", "--reject", WIDE, str(text_log)]) == 0
    html = capsys.readouterr().out
    assert htmlcheck.problems(html, tmp_path) == []
    tags: list[str] = []
    links: list[str | None] = []

    class Page(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.append(tag)
            links.extend(value for name, value in attrs if name in ("href", "src"))

    Page().feed(html)
    assert "script" not in tags and all(link and link.startswith("#") for link in links)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" not in html  # only the domain is shown
    assert "\x1b" not in html and "x\\x1b[31m.example" in html


def test_the_command_line(text_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # As an administrator runs it: "spfmilter report", each output form.
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "spfmilter", "report", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO,
        )

    as_json = run("--json", "--reject", WIDE, str(text_log))
    assert (as_json.returncode, as_json.stderr) == (0, "")
    assert json.loads(as_json.stdout) == report(capsys, "--reject", WIDE, str(text_log))
    as_text = run(str(text_log))
    assert as_text.returncode == 0 and as_text.stdout.startswith("spfmilter report: ")
    as_html = run("--html", str(text_log))
    assert as_html.returncode == 0 and as_html.stdout.startswith("<!DOCTYPE html>")
    wrong = run("--reject", "softfail,fial", str(text_log))
    assert (wrong.returncode, wrong.stdout) == (2, "")
    assert "argument --reject: expected a comma list of" in wrong.stderr


def test_json_log_in_dry_run(make_daemon: MakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = make_daemon(
        {"log": {"format": "json"}, "policy": {"dry_run": "yes"}},
        allowed=(r'"level": "warning".*DNS server failure looking up spf-servfail\.',),
    )
    drive(daemon)
    log = daemon.log_text()
    assert '"logger": "spfmilter.verdicts"' in log and '"dry_run": "yes"' in log
    check(report(capsys, "--reject", WIDE, str(daemon.log_path)), log, dry_run=True)


# --- under systemd: the journal and rsyslog's mail.log ----------------------


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LoggingStack]:
    absent = journal.missing()
    if absent:
        unavailable("not installed: " + ", ".join(absent))
    rules = journal.file_rules(journal.RSYSLOG_CONF.read_text())
    with LoggingStack(tmp_path / "logging", rules) as running:
        yield running


def test_the_journal_export_and_mail_log(
    stack: LoggingStack,
    dns_server: DNSTestServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    header = journal.unit_stream_header(REPO / "systemd" / "spfmilter.service")
    sections = {"milter": {"workers": "1"}}
    daemon = JournaledDaemon(
        tmp_path / "daemon", config_text(dns_server, sections), stack.journald, header
    )
    daemon.start()
    try:
        drive(daemon)
    finally:
        daemon.stop()
    wait_for(daemon.drained, 10, "journald to read the daemon's stream to its end")
    log = daemon.log_text()
    assert daemon.unexpected(ALLOWED) == [], log

    export = tmp_path / "spfmilter.export"
    directory = stack.namespace.host_path(journal.JOURNAL_DIR)
    with export.open("wb") as out:
        subprocess.run(
            ["journalctl", f"--directory={directory}", "-o", "export", "--no-pager"],
            stdout=out,
            check=True,
            timeout=60,
            env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"),
        )
    assert export.read_bytes().startswith(b"__CURSOR=")
    check(report(capsys, "--reject", WIDE, str(export)), log, dry_run=False)

    mail_log = stack.rsyslog.file("mail.log")
    wait_for(
        lambda: count_records(mail_log.read_text(errors="replace")) >= len(TRANSACTIONS) + 1,
        10,
        "rsyslog to write every verdict to mail.log",
    )
    check(report(capsys, "--reject", WIDE, str(mail_log)), log, dry_run=False)
