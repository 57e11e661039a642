"""A hostile local user: the daemon started as root must hand nothing over.

Only a directory the daemon makes itself gets an owner and a mode; an
existing one (a sticky /tmp-like directory, a directory of root's or of
Postfix's) is never changed, and a symlink planted by another user is not
followed.  A configuration file that another user could have written is
refused: whoever writes it chooses the user and the socket of the next start.
The other user here is the system account "daemon".
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.daemon import REPO, config_text
from testkit.dnsserver import DNSTestServer
from tests.conftest import MakeDaemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the daemon starts as root")

OTHER = pwd.getpwnam("daemon")
ALLOWED = (r"Postfix \(user postfix\) will not be able to connect",)


@pytest.fixture
def base() -> Iterator[Path]:
    """A root-owned directory every user can search."""
    path = Path(tempfile.mkdtemp(prefix="spfmilter-local-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def shape(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def start(config: Path, socket: str) -> subprocess.CompletedProcess[str]:
    """Start the daemon expecting it to refuse; it must exit on its own."""
    argv = [sys.executable, "-m", "spfmilter", "--config", str(config), "--socket", socket]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)


def config_file(base: Path, dns_server: DNSTestServer, user: str = "nobody") -> Path:
    path = base / "spfmilter.cfg"
    path.write_text(config_text(dns_server, {"milter": {"user": user}}))
    return path


def test_existing_sticky_directory_is_left_alone(make_daemon: MakeDaemon, base: Path) -> None:
    shared = base / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    before = shape(shared)
    daemon = make_daemon(
        {"milter": {"user": "nobody", "socket_mode": "0666"}},
        socket=f"unix:{shared / 'spfmilter.sock'}",
        allowed=ALLOWED,
    )
    assert daemon.process is not None and daemon.process.poll() is None
    assert shape(shared) == before


def test_symlink_planted_by_another_user_is_not_followed(
    base: Path, dns_server: DNSTestServer
) -> None:
    shared = base / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    target = base / "precious"
    target.mkdir()
    before = shape(target)
    link = shared / "run"
    link.symlink_to(target)
    os.lchown(link, OTHER.pw_uid, OTHER.pw_gid)
    done = start(config_file(base, dns_server), f"unix:{link / 'spfmilter.sock'}")
    assert done.returncode == 78, done.stderr
    assert f"{link} belongs to daemon, who could replace the socket" in done.stderr
    assert shape(target) == before


def test_symlink_of_roots_to_an_existing_directory_changes_nothing(
    base: Path, dns_server: DNSTestServer
) -> None:
    target = base / "etc"
    target.mkdir()
    before = shape(target)
    link = base / "run"
    link.symlink_to(target)
    done = start(config_file(base, dns_server), f"unix:{link / 'spfmilter.sock'}")
    # nobody may not write into root's directory: the daemon says so and stops.
    assert done.returncode == 78, done.stderr
    assert f"nobody cannot create the socket in {link}" in done.stderr
    assert shape(target) == before


def test_existing_directory_of_another_account_is_refused(
    base: Path, dns_server: DNSTestServer
) -> None:
    # Like /var/spool/postfix/private: the MTA's own directory.
    private = base / "private"
    private.mkdir(mode=0o700)
    os.chown(private, OTHER.pw_uid, OTHER.pw_gid)
    before = shape(private)
    done = start(config_file(base, dns_server), f"unix:{private / 'spfmilter.sock'}")
    assert done.returncode == 78, done.stderr
    assert f"{private} belongs to daemon" in done.stderr
    assert shape(private) == before


def test_new_directory_gets_owner_group_and_setgid(make_daemon: MakeDaemon, base: Path) -> None:
    made = base / "new" / "run"
    nobody = pwd.getpwnam("nobody")
    make_daemon(
        {"milter": {"user": "nobody", "socket_mode": "0666"}},
        socket=f"unix:{made / 'spfmilter.sock'}",
        allowed=ALLOWED,
    )
    assert shape(made) == (nobody.pw_uid, nobody.pw_gid, 0o2755)
    assert shape(made.parent)[:2] == (0, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("owner", "belongs to daemon, who could choose the user and socket"),
        ("mode", "is writable by everyone (mode 0666)"),
        ("directory", "is writable by everyone (mode 0777)"),
    ],
)
def test_config_others_could_write_is_refused(
    base: Path, dns_server: DNSTestServer, change: str, message: str
) -> None:
    config = config_file(base, dns_server)
    if change == "owner":
        os.chown(config, OTHER.pw_uid, OTHER.pw_gid)
    elif change == "mode":
        config.chmod(0o666)
    else:
        base.chmod(0o777)
    sock = base / "sock" / "spfmilter.sock"
    done = start(config, f"unix:{sock}")
    assert done.returncode == 78, done.stderr
    assert message in done.stderr
    assert not sock.parent.exists()  # refused before touching anything


def test_config_of_the_daemons_own_user_is_accepted(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon({"milter": {"user": "daemon"}}, start=False)
    os.chown(daemon.config_path, OTHER.pw_uid, OTHER.pw_gid)
    daemon.start()
    assert f"uid={OTHER.pw_uid}" in daemon.log_text()


def test_other_users_cannot_reach_the_default_socket(make_daemon: MakeDaemon, base: Path) -> None:
    # Whoever can connect may hold libmilter's workers (a packet left
    # unfinished) or pose as the MTA: the socket made the default way is
    # reachable by its user and group only.
    sock = base / "run" / "spfmilter.sock"
    make_daemon(
        {"milter": {"user": "nobody", "socket_group": "postfix"}},
        socket=f"unix:{sock}",
    )
    # Debian's own interpreter: the test's may live where those users cannot
    # read (a virtual environment under /root).
    attempt = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.errno)\n"
        "else:\n    print('connected')\n"
    )
    other = subprocess.run(
        ["/usr/bin/python3", "-S", "-c", attempt, str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
        user=OTHER.pw_uid,
        group=OTHER.pw_gid,
        extra_groups=[],
    )
    assert other.stdout.strip() == "13", other  # EACCES
    postfix = subprocess.run(
        ["/usr/bin/python3", "-S", "-c", attempt, str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
        user="postfix",
        group="postfix",
        extra_groups=[],
    )
    assert postfix.stdout.strip() == "connected", postfix
