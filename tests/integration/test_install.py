"""The daemon where users run it: an installation the unprivileged user cannot read.

On a fresh Debian the clone and its virtual environment live under /root
(mode 0700).  Started as root, the daemon drops to its user; from then on
nothing it needs may be read from the installation.  These tests run it from
copies of its code and libraries in a directory only root can read, and send
transactions that take every lazily loaded path (TXT, MX, A, AAAA and PTR
answers, a U-label sender, an explanation, an IPv6 client).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MakeDaemon
from tests.support.daemon import Daemon
from tests.support.milterclient import TransactionResult, one_transaction

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")

# What the daemon imports from outside the standard library.
LIBRARIES = ("spfmilter", "Milter", "milter", "spf", "dns")


@pytest.fixture
def sealed_lib() -> Iterator[Path]:
    """Copies of spfmilter and its libraries in a directory only root can read."""
    root = Path(tempfile.mkdtemp(prefix="spfmilter-sealed-"))
    root.chmod(0o700)
    lib = root / "lib"
    lib.mkdir()
    for name in LIBRARIES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, lib / name)
        else:
            shutil.copy2(origin, lib / origin.name)
    yield lib
    shutil.rmtree(root)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can search, for the socket."""
    path = Path(tempfile.mkdtemp(prefix="spfmilter-install-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def sealed_daemon(make_daemon: MakeDaemon, lib: Path, socket_dir: Path, **milter: str) -> Daemon:
    daemon = make_daemon(
        {
            "milter": {"user": "nobody", "socket_group": "postfix", **milter},
            "headers": {"authserv_id": "mx.test.example"},
        },
        socket=f"unix:{socket_dir / 'run' / 'spfmilter.sock'}",
        start=False,
    )
    # No site-packages (-S): spfmilter and its libraries come from `lib` only.
    boot = f"import sys; sys.path.insert(0, {str(lib)!r}); from spfmilter.cli import main; "
    daemon.command = [sys.executable, "-S", "-c", boot + "sys.exit(main(sys.argv[1:]))"]
    daemon.start()
    return daemon


def transaction(daemon: Daemon, ip: str, helo: str, sender: str) -> TransactionResult:
    return one_transaction(daemon.socket, ip, helo, sender)


def received_spf(result: TransactionResult) -> str:
    assert result.eom is not None, result
    (header,) = [m.value or "" for m in result.eom.modifications if m.name == "Received-SPF"]
    return " ".join(header.split())


def test_every_lookup_kind_works_from_an_unreadable_installation(
    make_daemon: MakeDaemon, sealed_lib: Path, open_dir: Path
) -> None:
    daemon = sealed_daemon(make_daemon, sealed_lib, open_dir)
    assert "uid=65534" in daemon.log_text()
    # TXT (the record type whose parser dnspython loaded lazily), A, MX.
    for ip, sender in (
        ("198.51.100.7", "a@spf-pass.example.org"),
        ("198.51.100.20", "a@spf-a.example.org"),
        ("198.51.100.30", "a@spf-mx.example.org"),
        ("198.51.100.8", "a@spf-include.example.org"),
    ):
        header = received_spf(transaction(daemon, ip, "helo-none.example.org", sender))
        assert header.startswith("pass "), header
    # An IPv6 client (AAAA-side code paths) and an address-literal HELO.
    header = received_spf(
        transaction(daemon, "2001:db8:1::7", "[2001:db8:1::7]", "a@spf-pass.example.org")
    )
    assert header.startswith("pass ")
    # A U-label sender domain: the IDNA and punycode codecs.
    header = received_spf(
        transaction(daemon, "198.51.100.30", "helo-none.example.org", "alice@bücher.example.org")
    )
    assert header.startswith("pass "), header


def test_reject_with_explanation_from_an_unreadable_installation(
    make_daemon: MakeDaemon, sealed_lib: Path, open_dir: Path
) -> None:
    daemon = sealed_daemon(make_daemon, sealed_lib, open_dir)
    result = transaction(daemon, "198.51.100.7", "helo-pass.example.org", "m@spf-fail.example.org")
    assert result.final.code == "550", result
    assert "198.51.100.7 is not one of our servers" in (result.final.text or "")
