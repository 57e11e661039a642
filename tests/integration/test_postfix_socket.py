"""docs/development.md's "Postfix without systemd's socket", step by step,
against a private Postfix whose smtpd runs chrooted in its queue directory
as Debian's does.

The daemon is started as root with the two [milter] lines it gives (a
socket below the queue directory, socket_group = postfix); Postfix names the
socket relative to its chroot.  Without the group, the daemon must say at
start that Postfix will not get in, and Postfix indeed does not.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.daemon import Daemon, config_text
from testkit.dnsserver import DNSTestServer
from tests.support.environment import unavailable
from tests.support.postfix import PrivatePostfix
from tests.support.stack import PASS_IP, Stack, send

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as this set-up does")

# What docs/development.md tells the administrator to write.
README_MILTER = {"socket": "unix:/var/spool/postfix/spfmilter/spfmilter.sock"}
README_GROUP = {"socket_group": "postfix"}
README_SMTPD_MILTERS = "unix:spfmilter/spfmilter.sock"
# The test host may lack the spfmilter account the quick start makes.
NO_ACCOUNT = (r"no account 'spfmilter': running as 'nobody'",)


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="spfmilter-readme-"))
    path.chmod(0o755)  # Postfix's delivery agent must reach the Maildir
    yield path
    shutil.rmtree(path)


def readme_stack(
    work: Path, dns_server: DNSTestServer, milter: dict[str, str], allowed: tuple[str, ...]
) -> tuple[Daemon, PrivatePostfix]:
    postfix = PrivatePostfix(work / "postfix", README_SMTPD_MILTERS, chroot_smtpd=True)
    postfix.start()
    # The documented path, moved below this Postfix's queue directory.
    path = README_MILTER["socket"].replace("/var/spool/postfix", str(postfix.queue_dir))
    # "user =" empty: the default account, as documented.
    config = config_text(dns_server, {"milter": {"user": "", **milter}})
    daemon = Daemon(work / "milter", config, path)
    daemon.start()
    return daemon, postfix


def test_readme_postfix_setup_works_as_written(work: Path, dns_server: DNSTestServer) -> None:
    daemon, postfix = readme_stack(work, dns_server, README_GROUP, NO_ACCOUNT)
    try:
        stack = Stack(daemon, postfix)
        passing = send(stack, PASS_IP, "helo-pass.example.org", "a@spf-pass.example.org")
        failing = send(stack, PASS_IP, "helo-pass.example.org", "a@spf-fail.example.org")
    finally:
        postfix.stop()
        daemon.stop()
    assert passing.received_spf()[0].startswith("pass ")
    assert failing.rcpts[0][0] == 550
    assert [w for w in postfix.warnings() if "milter" in w] == []
    assert daemon.unexpected(NO_ACCOUNT) == [], daemon.log_text()
    sock = Path(daemon.socket.partition(":")[2])
    assert sock.parent.stat().st_mode & 0o2000  # setgid: the socket gets the group


def test_without_the_group_the_daemon_says_postfix_cannot_connect(
    work: Path, dns_server: DNSTestServer
) -> None:
    daemon, postfix = readme_stack(work, dns_server, {}, NO_ACCOUNT)
    try:
        sent = send(
            Stack(daemon, postfix), PASS_IP, "helo-pass.example.org", "a@spf-pass.example.org"
        )
    finally:
        postfix.stop()
        daemon.stop()
    (warning,) = daemon.unexpected(NO_ACCOUNT)
    assert "Postfix (user postfix) will not be able to connect to" in warning
    assert "set [milter] socket_group = postfix" in warning
    # And it was right: Postfix could not reach the milter.
    assert sent.mail[0] == 451 or sent.rcpts[0][0] == 451
    assert any("Permission denied" in w for w in postfix.warnings())


def test_no_warning_where_the_daemon_cannot_see_the_group() -> None:
    # Under systemd's PrivateUsers=yes only root and the service's own ids
    # exist: a directory of group postfix shows as nogroup (65534), and the
    # daemon must not claim that Postfix cannot enter it.  Here a user
    # namespace mapping root alone does the same.
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        # unshare(2): a process in a chroot (as some test sandboxes are) may
        # not make a user namespace.  CI runs on a machine of its own.
        unavailable(f"cannot make a user namespace here: {probe.stderr.strip()}")
    postfix_gid = grp.getgrnam("postfix").gr_gid
    with tempfile.TemporaryDirectory(dir="/var/tmp") as top:
        os.chmod(top, 0o755)
        directory = Path(top) / "spfmilter"
        directory.mkdir()
        os.chown(directory, 0, postfix_gid)
        directory.chmod(0o2750)  # setgid: the socket gets group postfix
        check = (
            "from spfmilter.process import privileges; "
            "from spfmilter.config.schema import MilterConfig; "
            "print(privileges.prepare_socket("
            f"MilterConfig(socket='unix:{directory}/s.sock'), None))"
        )
        for namespace in ([], ["unshare", "--user", "--map-root-user"]):
            done = subprocess.run(
                [*namespace, sys.executable, "-c", check],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert done.stdout == "[]\n", (namespace, done.stdout)
