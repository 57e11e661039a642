"""The administrator's path, run from README's own code blocks.

Each README block an administrator runs is marked with an HTML comment
naming its step (``<!-- admin-path: install -->`` before a ```sh block);
this test runs exactly those blocks, in a fresh Debian 12 booted with
systemd as PID 1 (tests/support/machine.py), so the document and the test
cannot drift.  Debian's Postfix is installed with its default answers
(Internet Site, smtpd chrooted); the package is built from a clone and
installed; real SMTP goes to port 25 with swaks, posing as outside clients
with XCLIENT, and the mailbox and the journal are read.  Then reload, a
typo and reload, restarts under a stream of mail (none may be deferred), a
reboot, an upgrade under mail, removal, and installing again.

The machine has a private network: the test DNS server runs inside it
(nameserver 127.0.0.1), and the Debian packages the README installs are
downloaded into its apt cache before it boots.  The harness itself adds
only what the README cannot: apt's "yes" to its questions, the DNS
server, XCLIENT for loopback, and a mailbox user.
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
import time
from pathlib import Path

import pytest

from testkit.daemon import REPO
from tests.support.machine import Machine, usable, wait_until

README = REPO / "README.md"
BLOCK = re.compile(r"<!-- admin-path: ([a-z-]+) -->\n```sh\n(.*?)```", re.DOTALL)
# The steps README must show, in the order an administrator meets them.
STEPS = ("postfix-install", "install", "postfix", "check", "reload", "restart", "remove")
CLONE = f"/root/{REPO.name}"
CONFIG = "/etc/spfmilter/spfmilter.cfg"
MAILBOX = "/var/mail/user"
DNS_UNIT = f"""[Unit]
Description=The tests' DNS server (testkit/zones/core.yaml)
Before=spfmilter.service postfix.service

[Service]
WorkingDirectory={CLONE}
Environment=PYTHONDONTWRITEBYTECODE=1
ExecStart=/usr/bin/python3 -m testkit.dnsserver testkit/zones/core.yaml --port 53

[Install]
WantedBy=multi-user.target
"""
# (name, client, HELO, sender, expected SMTP code, Received-SPF result or None)
CASES = (
    ("pass", "198.51.100.7", "helo-pass.example.org", "alice@spf-pass.example.org", 250, "pass"),
    ("fail", "198.51.100.7", "helo-pass.example.org", "mallory@spf-fail.example.org", 550, None),
    (
        "softfail",
        "198.51.100.7",
        "helo-pass.example.org",
        "bob@spf-softfail.example.org",
        250,
        "softfail",
    ),
    ("null", "198.51.100.7", "helo-pass.example.org", "<>", 250, "pass"),
    ("helo-fail", "198.51.100.7", "helo-fail.example.org", "dave@spf-pass.example.org", 550, None),
    (
        "temperror",
        "198.51.100.7",
        "helo-pass.example.org",
        "carol@spf-servfail.example.org",
        451,
        None,
    ),
)


def readme_steps(text: str) -> dict[str, str]:
    """The marked blocks of README, by step name."""
    steps: dict[str, str] = {}
    for name, body in BLOCK.findall(text):
        assert name not in steps, f"README marks two blocks as {name!r}"
        steps[name] = body
    return steps


def test_readme_shows_every_step_of_the_admin_path() -> None:
    steps = readme_steps(README.read_text())
    assert tuple(steps) == STEPS
    assert all(body.strip() for body in steps.values())
    # Postfix reads no trailing comments: a value must be all value.
    for line in steps["postfix"].splitlines():
        assert "#" not in line, line


def swaks(machine: Machine, case: str, client: str, helo: str, sender: str) -> tuple[int, str]:
    """One message through Postfix on port 25 as `client`: 250 when it was
    accepted, else the code that refused it; and swaks's transcript."""
    done = machine.run(
        f"swaks --server 127.0.0.1 --to user@localhost --from '{sender}' --helo {helo} "
        f"--xclient 'ADDR={client} NAME=[UNAVAILABLE] HELO={helo}' "
        f"--header 'Subject: case-{case}' --timeout 60",
        check=False,
    )
    # swaks marks the replies it did not expect "<**"; the first one ends
    # the message.
    refused = re.findall(r"^<\*\* +(\d{3})[ -]", done.stdout, re.MULTILINE)
    if done.returncode == 0:
        return 250, done.stdout
    assert refused, done.stdout + done.stderr
    return int(refused[0]), done.stdout


def check_mail(machine: Machine, label: str) -> None:
    """Every case through Postfix: the reply, the mailbox, the verdict line."""
    since = machine.run("date +%s.%N").stdout.strip()
    for case, client, helo, sender, code, _header in CASES:
        got, transcript = swaks(machine, f"{label}-{case}", client, helo, sender)
        assert got == code, f"{label} {case}: {transcript}"
    delivered = [c for c in CASES if c[4] == 250]
    wait_until(
        machine,
        f"test $(grep -c '^Subject: case-{label}-' {MAILBOX}) -eq {len(delivered)}",
        60,
        "delivery of the accepted messages",
    )
    mailbox = machine.run(f"cat {MAILBOX}").stdout
    for case, *_, header in delivered:
        message = mailbox[: mailbox.index(f"Subject: case-{label}-{case}\n")]
        # mbox: each message starts with a "From " line.
        message = message[message.rfind("\nFrom ") + 1 :]
        results = re.findall(r"^Received-SPF: (\w+)", message, re.MULTILINE)
        assert results == [header], f"{label} {case}: {message}"
    journal = machine.run(f"journalctl -u spfmilter -o cat --since @{since}").stdout
    for expected in ("result=pass", "result=fail", "result=softfail", "result=temperror"):
        assert expected in journal, journal
    assert "identity=helo" in journal, journal


# Seconds of mail between two restarts: with the unit's start limit (five
# starts a minute) a sixth restart within a minute would be refused.
GAP = 12


def restart_under_load(machine: Machine, command: str, times: int) -> dict[str, object]:
    """benchmarks.restart_load in the machine: mail flows while `command` runs."""
    done = machine.run(
        f"python3 -m benchmarks.restart_load --times {times} --gap {GAP}"
        f" -- bash -euc {shlex.quote(command)}",
        check=False,
        cwd=CLONE,
        timeout=900,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"under load: {json.dumps(result)}")
    return result


class Phases:
    """Seconds each phase of the path took."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = now - self._mark
        self._mark = now


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(usable() is not None, reason=f"machines cannot be made here: {usable()}")
def test_the_admin_path_from_the_readme() -> None:
    steps = readme_steps(README.read_text())
    phases = Phases()
    work = Path(tempfile.mkdtemp(prefix="spfmilter-admin-", dir="/var/tmp"))
    try:
        with Machine(work / "mx", "mx.example.net") as machine:
            run_the_path(machine, steps, phases)
    finally:
        work.rmdir()
        seconds = {name: round(value) for name, value in phases.seconds.items()}
        print(f"admin path, seconds: {json.dumps(seconds)}, total {sum(seconds.values())}")


def run_the_path(machine: Machine, steps: dict[str, str], phases: Phases) -> None:
    # Everything the offline machine's apt will be asked for.
    machine.prepare(REPO, ["postfix", "dpkg-dev", "procps", "python3-milter", "python3-spf"])
    # The administrator's "yes" to apt's questions; debconf takes its
    # defaults (DEBIAN_FRONTEND=noninteractive), as Enter would.
    (machine.root / "etc/apt/apt.conf.d/90assume-yes").write_text('APT::Get::Assume-Yes "true";\n')
    units = machine.root / "etc/systemd/system"
    (units / "testdns.service").write_text(DNS_UNIT)
    (units / "multi-user.target.wants").mkdir(exist_ok=True)
    (units / "multi-user.target.wants/testdns.service").symlink_to("../testdns.service")
    phases.done("prepare")
    machine.boot()
    wait_until(
        machine,
        "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 53), 1)'",
        30,
        "the test DNS server",
    )
    phases.done("boot")

    machine.run(steps["postfix-install"])
    assert machine.run("postconf -h mydestination").stdout.strip(), "Postfix is not configured"
    assert machine.run("postconf -M smtp/inet").stdout.split()[4] == "y", "smtpd not chrooted"
    machine.run(steps["install"], cwd=CLONE, timeout=900)
    assert machine.run("git status --porcelain --ignored", cwd=CLONE).stdout == ""
    phases.done("install")
    # Test instrumentation: outside clients posed from loopback, a mailbox.
    machine.run("postconf -e 'smtpd_authorized_xclient_hosts = 127.0.0.0/8' && useradd -m user")
    machine.run(steps["postfix"])
    machine.run(steps["check"])
    check_mail(machine, "first")
    # Postfix's smtpd is chrooted and the socket is systemd's, in the chroot.
    assert machine.run("stat -c '%U %G %a' /var/spool/postfix/spfmilter/spfmilter.sock").stdout == (
        "spfmilter postfix 660\n"
    )
    # The temperror case's SERVFAIL is the one warning expected.
    warnings = machine.run("journalctl -q -u spfmilter -p warning -o cat").stdout.splitlines()
    problems = [line for line in warnings if "spf-servfail.example.org" not in line]
    assert problems == [], problems
    phases.done("mail")

    machine.run(steps["reload"])
    pid = machine.run("systemctl show -P MainPID spfmilter").stdout
    machine.run(f"sed -i 's/^helo_reject = /helo_rejekt = /' {CONFIG}")
    refused = machine.run(steps["reload"], check=False)
    assert refused.returncode != 0, refused
    assert machine.run("systemctl show -P MainPID spfmilter").stdout == pid
    errors = machine.run("journalctl -u spfmilter -p err -o cat").stdout
    assert "helo_rejekt" in errors and "fatal" not in errors, errors
    machine.run(f"sed -i 's/^helo_rejekt = /helo_reject = /' {CONFIG}")
    machine.run(steps["reload"])
    phases.done("reload")

    # A daemon that cannot serve (no port below 1024 for user spfmilter):
    # the restart fails, and systemd stops restarting it.
    machine.run(f"sed -i 's/^listen =$/listen = 127.0.0.1:80/' {CONFIG}")
    assert machine.run(steps["restart"], check=False).returncode != 0
    # At the start limit systemd refuses the next start, and the socket,
    # whose connections would start the service again, fails with it.
    wait_until(
        machine,
        "systemctl is-failed spfmilter"
        " && test $(systemctl show -P Result spfmilter.socket) = service-start-limit-hit",
        90,
        "systemd to give up at the start limit",
    )
    restarted = int(machine.run("systemctl show -P NRestarts spfmilter").stdout)
    assert restarted <= 5, restarted
    machine.run(f"sed -i 's/^listen = 127.0.0.1:80$/listen =/' {CONFIG}")
    machine.run(
        "systemctl reset-failed spfmilter.socket spfmilter"
        " && systemctl start spfmilter.socket spfmilter"
    )
    phases.done("failed start")

    restarts = restart_under_load(machine, steps["restart"], 10)
    assert (restarts["deferred"], restarts["rejected"], restarts["command_failures"]) == (0, 0, [])
    phases.done("restarts")

    machine.reboot()
    machine.run("systemctl is-active spfmilter.socket spfmilter")
    check_mail(machine, "reboot")
    phases.done("reboot")

    # A newer version, built as README says, installed under mail.
    machine.run(
        "rm -rf /root/upgrade && mkdir /root/upgrade && git clone -q . /root/upgrade/spfmilter"
        " && cd /root/upgrade/spfmilter && version=$(dpkg-parsechangelog -S Version)"
        " && { printf 'spfmilter (%s+1) bookworm; urgency=medium\\n\\n  * Upgrade test.\\n\\n"
        ' -- Test <test@example.org>  %s\\n\\n\' "$version" "$(date -R)"; cat debian/changelog; }'
        " > changelog.new && mv changelog.new debian/changelog"
        " && dpkg-buildpackage -us -uc -b --post-clean > /root/upgrade/build.log 2>&1",
        cwd=CLONE,
        timeout=900,
    )
    upgrade = restart_under_load(machine, "apt-get install /root/upgrade/spfmilter_*_all.deb", 1)
    assert (upgrade["deferred"], upgrade["rejected"], upgrade["command_failures"]) == (0, 0, [])
    assert "+1" in machine.run("dpkg-query -W -f '${Version}' spfmilter").stdout
    phases.done("upgrade")

    machine.run(steps["remove"])
    machine.run(
        "! systemctl is-active spfmilter.socket spfmilter && ! test -e /etc/spfmilter"
        " && ! test -e /var/spool/postfix/spfmilter"
    )
    got, transcript = swaks(machine, "removed", *CASES[0][1:4])
    assert got == 250, transcript
    phases.done("remove")

    machine.run(steps["install"], cwd=CLONE, timeout=900)
    machine.run(steps["postfix"])
    check_mail(machine, "again")
    phases.done("reinstall")
    print(f"restarts: {json.dumps(restarts)}\nupgrade: {json.dumps(upgrade)}")
