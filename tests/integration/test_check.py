"""`spfmilter check`, run as a real command against the test DNS server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testkit.daemon import REPO, config_text
from testkit.dnsserver import DNSTestServer
from testkit.milterclient import MilterClient
from tests.conftest import MakeDaemon

AUTHSERV = "mx.check.example"


@pytest.fixture
def cfg(tmp_path: Path, dns_server: DNSTestServer) -> Path:
    path = tmp_path / "check.cfg"
    path.write_text(config_text(dns_server, {"headers": {"authserv_id": AUTHSERV}}))
    return path


def spfmilter(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spfmilter", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def check_json(cfg: Path, ip: str, helo: str, sender: str, *rcpts: str) -> dict[str, Any]:
    extra = [a for r in rcpts for a in ("--rcpt", r)]
    done = spfmilter(
        "check",
        "--config",
        str(cfg),
        "--client-ip",
        ip,
        "--helo",
        helo,
        "--sender",
        sender,
        "--json",
        *extra,
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_pass_in_text_mode(cfg: Path) -> None:
    done = spfmilter(
        "check",
        "--config",
        str(cfg),
        "--client-ip",
        "198.51.100.7",
        "--helo",
        "helo-pass.example.org",
        "--sender",
        "alice@spf-pass.example.org",
    )
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[1].startswith("HELO:       pass (mechanism ip4:198.51.100.0/24; ")
    assert lines[2].startswith("MAIL FROM:  pass (mechanism ip4:198.51.100.0/24; ")
    assert lines[3] == "decision:   accept at rcpt"
    assert lines[5].startswith("Received-SPF: pass (spf-pass.example.org: 198.51.100.7 is")


@pytest.mark.parametrize(
    ("ip", "helo", "sender", "decision", "rcpt_reply"),
    [
        (
            "203.0.113.5",
            "helo-none.example.org",
            "m@spf-fail-noexp.example.org",
            "reject",
            "550 5.7.23 SPF MAIL FROM check for m@spf-fail-noexp.example.org: fail",
        ),
        ("198.51.100.7", "helo-none.example.org", "s@spf-softfail.example.org", "accept", None),
        (
            "198.51.100.7",
            "helo-none.example.org",
            "t@spf-timeout.example.org",
            "defer",
            "451 4.7.24 SPF MAIL FROM check for t@spf-timeout.example.org: temperror: SPF "
            "Temporary Error: DNS timeout looking up spf-timeout.example.org TXT; try again later",
        ),
        ("198.51.100.7", "helo-pass.example.org", "", "accept", None),
        ("127.0.0.1", "helo-fail.example.org", "m@spf-fail-noexp.example.org", "skip", None),
    ],
)
def test_json_mode(
    cfg: Path, ip: str, helo: str, sender: str, decision: str, rcpt_reply: str | None
) -> None:
    data = check_json(cfg, ip, helo, sender, "user@example.net")
    assert data["decision"] == decision
    assert data["recipients"][0]["reply"] == rcpt_reply
    if decision == "accept":
        (header,) = data["headers"]
        assert header["name"] == "Received-SPF"
        identity = "helo" if sender == "" else "mailfrom"
        assert f"identity={identity};" in " ".join(header["value"].split())
    if decision == "skip":
        assert data["skip_reason"] == "localhost is always allowed"
        assert data["headers"] == []


POLICY_BLOCKS = """\
request=smtpd_access_policy
protocol_state=RCPT
protocol_name=ESMTP
client_address=198.51.100.7
client_name=mail.example.org
helo_name=helo-pass.example.org
sender=alice@spf-pass.example.org
recipient=user@example.net
queue_id=
instance=123.456.7
some_future_attribute=ignored

request=smtpd_access_policy
protocol_state=RCPT
client_address=203.0.113.5
helo_name=helo-none.example.org
sender=mallory@spf-fail-noexp.example.org
recipient=user@example.net

request=smtpd_access_policy
protocol_state=RCPT
client_address=198.51.100.7
helo_name=helo-none.example.org
sender=carol@spf-timeout.example.org
recipient=user@example.net

request=smtpd_access_policy
protocol_state=RCPT
client_address=198.51.100.7
helo_name=helo-pass.example.org
sender=
recipient=user@example.net

this line is not an attribute
sender=x@y

request=smtpd_access_policy
client_address=127.0.0.1
helo_name=localhost
sender=root@localhost
recipient=user@example.net

"""


def test_policy_request_answers_every_block(cfg: Path) -> None:
    done = spfmilter("check", "--config", str(cfg), "--policy-request", stdin=POLICY_BLOCKS)
    assert done.returncode == 0
    answers = done.stdout.split("\n\n")
    assert answers[-1] == ""
    answers = answers[:-1]
    assert len(answers) == 6
    assert answers[0].startswith(
        "action=PREPEND Received-SPF: pass (spf-pass.example.org: 198.51.100.7 is authorized"
    )
    assert answers[0].endswith(
        f'receiver={AUTHSERV}; identity=mailfrom; envelope-from="alice@spf-pass.example.org"; '
        "helo=helo-pass.example.org; client-ip=198.51.100.7"
    )
    assert answers[1] == (
        "action=550 5.7.23 SPF MAIL FROM check for mallory@spf-fail-noexp.example.org: fail"
    )
    assert answers[2].startswith("action=DEFER_IF_PERMIT 451 4.7.24 SPF MAIL FROM check")
    assert answers[3].startswith("action=PREPEND Received-SPF: pass (helo-pass.example.org:")
    assert "identity=helo;" in answers[3]
    assert answers[4] == "action=DUNNO"  # the malformed block
    assert answers[5] == "action=DUNNO"  # loopback is skipped
    assert "line 34: expected name=value, got 'this line is not an attribute'" in done.stderr


def test_policy_request_lines_are_bounded(cfg: Path) -> None:
    # A 128 MB line must not be held in memory: the request is malformed
    # (DUNNO) and the next one is answered normally.
    huge = "x" * (128 * 1024 * 1024)
    block = (
        "request=smtpd_access_policy\nclient_address=198.51.100.7\n"
        "helo_name=helo-pass.example.org\nsender=a@spf-pass.example.org\n\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "spfmilter", "check", "--config", str(cfg), "--policy-request"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(f"comment={huge}\n\n{block}")
    process.stdin.flush()
    answers = [process.stdout.readline(), process.stdout.readline()]
    answers += [process.stdout.readline(), process.stdout.readline()]
    # Still running: its peak resident size so far.
    peak = Path(f"/proc/{process.pid}/status").read_text().split("VmHWM:")[1].split()[0]
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert answers[0:2] == ["action=DUNNO\n", "\n"]
    assert answers[2].startswith("action=PREPEND Received-SPF: pass ")
    assert "line 1: longer than 16384 characters" in err
    assert int(peak) < 100 * 1024, f"{peak} KiB"  # far below the line's 128 MiB


def test_policy_request_attribute_count_is_bounded(cfg: Path) -> None:
    many = "".join(f"x{i}=y\n" for i in range(300))
    done = spfmilter(
        "check", "--config", str(cfg), "--policy-request", stdin=f"{many}client_address=1.2.3.4\n\n"
    )
    assert done.stdout == "action=DUNNO\n\n"
    assert "line 257: more than 256 attributes in one request" in done.stderr


def test_macro_option_tries_the_macro_skip(tmp_path: Path, dns_server: DNSTestServer) -> None:
    cfg = tmp_path / "macros.cfg"
    cfg.write_text(config_text(dns_server, {"skip": {"macros": "{daemon_name}=ORIGINATING"}}))
    common = ["check", "--config", str(cfg), "--client-ip", "203.0.113.5", "--json"]
    sender = ["--helo", "helo-none.example.org", "--sender", "m@spf-fail-noexp.example.org"]
    checked = json.loads(spfmilter(*common, *sender).stdout)
    assert checked["decision"] == "reject" and checked["skip_reason"] is None
    done = spfmilter(*common, *sender, "--macro", "daemon_name=ORIGINATING")
    assert done.returncode == 0, done.stderr
    skipped = json.loads(done.stdout)
    assert skipped["skip_reason"] == "MTA macro {daemon_name}=ORIGINATING"
    bad = spfmilter(*common, *sender, "--macro", "daemon_name")
    assert bad.returncode == 2 and "--macro: expected NAME=VALUE" in bad.stderr


def test_bad_arguments_and_bad_config(tmp_path: Path) -> None:
    assert spfmilter("check", "--client-ip", "1.2.3.4").returncode == 2
    done = spfmilter("check", "--client-ip", "not-an-ip", "--sender", "a@b.example")
    assert done.returncode == 2 and "--client-ip" in done.stderr
    bad = tmp_path / "bad.cfg"
    bad.write_text("[dns]\ntimeout = never\n")
    done = spfmilter("check", "--config", str(bad), "--client-ip", "1.2.3.4", "--sender", "a@b")
    assert done.returncode == 78
    assert f"{bad}:2: [dns] timeout: expected a number of seconds" in done.stderr


@pytest.mark.parametrize(
    ("ip", "helo", "sender"),
    [
        ("198.51.100.7", "helo-pass.example.org", "alice@spf-pass.example.org"),
        ("203.0.113.5", "helo-none.example.org", "bob@spf-softfail.example.org"),
        ("2001:db8:1::25", "helo-pass.example.org", ""),
        ("198.51.100.7", "helo-none.example.org", "carol@spf-permerror.example.org"),
    ],
)
def test_check_and_daemon_write_byte_identical_headers(
    cfg: Path, make_daemon: MakeDaemon, ip: str, helo: str, sender: str
) -> None:
    data = check_json(cfg, ip, helo, sender, "user@example.net")
    expected = [(h["name"], h["value"]) for h in data["headers"]]
    daemon = make_daemon({"headers": {"authserv_id": AUTHSERV}})
    with MilterClient(daemon.socket) as client:
        client.negotiate()
        client.macros("C", {"j": "ignored.example"})
        client.connect("client.example", ip)
        client.helo(helo)
        result = client.transaction(f"<{sender}>", ["<user@example.net>"])
    assert result.eom is not None
    got = [(m.name, m.value) for m in result.eom.modifications]
    assert got == expected and expected


def test_with_rescue_a_mail_from_fail_is_refused_at_end_of_data(
    tmp_path: Path, dns_server: DNSTestServer
) -> None:
    """The check has no message to verify: a MAIL FROM fail waits for its
    rescue, and none comes."""
    path = tmp_path / "rescue.cfg"
    path.write_text(config_text(dns_server, {"rescue": {"dkim": "yes"}}))
    data = check_json(path, "203.0.113.5", "helo-none.example.org", "m@spf-fail-noexp.example.org")
    assert data["recipients"][0]["action"] == "accept"
    assert data["data"]["action"] == "reject"
    assert data["data"]["reply"].startswith("550 5.7.23 SPF MAIL FROM check for ")
    assert data["decision"] == "reject" and data["headers"] == []
    request = (
        "request=smtpd_access_policy\nclient_address=203.0.113.5\n"
        "helo_name=helo-none.example.org\nsender=m@spf-fail-noexp.example.org\n"
        "recipient=user@example.net\n\n"
    )
    done = spfmilter("check", "--config", str(path), "--policy-request", stdin=request)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("action=550 5.7.23 SPF MAIL FROM check for ")
