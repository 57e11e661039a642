"""The daemon where users run it: an installation the unprivileged user cannot read.

On a fresh Debian the clone and its virtual environment live under /root
(mode 0700).  Started as root, the daemon drops to its user; from then on
nothing it needs may be read from the installation.  These tests run it from
copies of its code and libraries in a directory only root can read, and send
transactions that take every lazily loaded path (TXT, MX, A, AAAA and PTR
answers, a U-label sender, an explanation, an IPv6 client).  One runs the
Python installation itself from behind such a directory too, as a Python
built under /root (pyenv) is, with workers and the nameservers of
/etc/resolv.conf: everything a worker does at its start.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from testkit import dkimkit
from testkit.daemon import Daemon, Sections, children, config_text
from testkit.dnsserver import ZONES, DNSTestServer, load_zone_file
from testkit.milterclient import MilterClient, TransactionResult, one_transaction
from tests.conftest import MakeDaemon
from tests.support.consumers import private_resolver_command, start_port53_dns, write_resolver_files

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")

# What the daemon imports from outside the standard library.
LIBRARIES = ("spfmilter", "Milter", "milter", "spf", "dns", "dkim", "nacl", "_cffi_backend", "cffi")


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


def sealed_daemon(
    make_daemon: MakeDaemon,
    lib: Path,
    socket_dir: Path,
    sections: Sections | None = None,
    python: Sequence[str] = (sys.executable,),
) -> Daemon:
    """A daemon, not started yet, that runs `python` on spfmilter and its
    libraries from `lib` only and drops to nobody; `sections` add to its
    configuration."""
    base = {
        "milter": {"user": "nobody", "socket_group": "postfix"},
        "headers": {"authserv_id": "mx.test.example"},
    }
    extra = sections or {}
    daemon = make_daemon(
        {name: {**base.get(name, {}), **extra.get(name, {})} for name in {*base, *extra}},
        socket=f"unix:{socket_dir / 'run' / 'spfmilter.sock'}",
        start=False,
    )
    # No site-packages (-S): spfmilter and its libraries come from `lib` only.
    boot = f"import sys; sys.path.insert(0, {str(lib)!r}); from spfmilter.cli import main; "
    daemon.command = [*python, "-S", "-c", boot + "sys.exit(main(sys.argv[1:]))"]
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
    daemon.start()
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
    daemon.start()
    result = transaction(daemon, "198.51.100.7", "helo-pass.example.org", "m@spf-fail.example.org")
    assert result.final.code == "550", result
    assert "198.51.100.7 is not one of our servers" in (result.final.text or "")


def test_workers_start_from_an_unreadable_python_on_the_system_resolver(
    make_daemon: MakeDaemon, sealed_lib: Path, open_dir: Path, tmp_path: Path
) -> None:
    """[dns] nameservers empty: the nameservers of /etc/resolv.conf.  Here
    the Python installation, its standard library included, is unreadable
    to the daemon's user too, as a Python built under /root (pyenv) is: what
    a worker's start reads from it after the drop kills the worker, and a
    module imported late in any worker is reported by ImportWatch.  The
    rescue is on, so its warm-up and the Public Suffix List are in the
    start too."""
    # The installation is bind-mounted below the sealed 0700 directory in
    # the daemon's own mount namespace, whose /etc/resolv.conf names a test
    # DNS server on loopback port 53: no query leaves 127.0.0.0/8.
    sealed = sealed_lib.parent
    assert sealed.stat().st_uid == 0 and stat.S_IMODE(sealed.stat().st_mode) == 0o700
    python = sealed / "python"
    python.mkdir()
    dns = start_port53_dns(load_zone_file(ZONES / "core.yaml"))
    try:
        write_resolver_files(tmp_path / "etc", dns.host)
        daemon = sealed_daemon(
            make_daemon,
            sealed_lib,
            open_dir,
            # The rescue on: its warm-up runs before the drop too.
            {
                "milter": {"workers": "2"},
                "dns": {"nameservers": ""},
                "rescue": {"dkim": "yes", "arc_trusted_sealers": "lists.test"},
            },
            ["env", f"PYTHONHOME={python}", os.path.realpath(sys.executable)],
        )
        daemon.wrap = lambda argv: private_resolver_command(
            argv, tmp_path / "etc", binds=[(Path(sys.base_prefix), python)]
        )
        daemon.start()
        assert "uid=65534" in daemon.log_text()
        workers = children(daemon.pid)
        assert len(workers) == 2
        for pid in workers:
            # Its standard library's compiled modules come through the seal.
            libraries = {
                line.split()[-1]
                for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if "/lib-dynload/" in line
            }
            # In a chroot, /proc shows the paths from the machine's own root.
            assert libraries and all(f"{python}/" in lib for lib in libraries)
        header = received_spf(
            transaction(daemon, "198.51.100.7", "helo-pass.example.org", "a@spf-pass.example.org")
        )
        assert header.startswith("pass "), header
        assert any(query[0] == "spf-pass.example.org" for query in dns.queries)
        assert "imported after start-up" not in daemon.log_text()
        assert children(daemon.pid) == workers
    finally:
        dns.stop()


def test_the_rescue_works_from_an_unreadable_installation(
    make_daemon: MakeDaemon, sealed_lib: Path, open_dir: Path, tmp_path: Path
) -> None:
    """DKIM (RSA and Ed25519) and ARC verification after the drop: the
    rescue's warm-up loaded everything before it, and nothing is imported
    late."""
    rsa, ed25519 = dkimkit.rsa_key(2048, tmp_path), dkimkit.ed25519_key()
    zone = load_zone_file(ZONES / "core.yaml")
    zone["rsa._domainkey.spf-fail.example.org"] = [{"TXT": rsa.record.decode()}]
    zone["ed._domainkey.spf-fail.example.org"] = [{"TXT": ed25519.record.decode()}]
    zone["arc._domainkey.lists.test"] = [{"TXT": rsa.record.decode()}]
    sections: Sections = {"rescue": {"dkim": "yes", "arc_trusted_sealers": "lists.test"}}
    with DNSTestServer(zone, ttl=60) as dns:
        daemon = sealed_daemon(make_daemon, sealed_lib, open_dir, sections)
        # The same file, with the test DNS server that holds the keys.
        own = {
            **sections,
            "milter": {"user": "nobody", "socket_group": "postfix"},
            "headers": {"authserv_id": "mx.test.example"},
        }
        daemon.config_path.write_text(config_text(dns, own))
        daemon.start()
        assert "uid=65534" in daemon.log_text()
        text = dkimkit.MESSAGE.replace(b"example.com", b"spf-fail.example.org")
        messages = [
            dkimkit.sign(text, rsa, "spf-fail.example.org", "rsa"),
            dkimkit.sign(text, ed25519, "spf-fail.example.org", "ed"),
            dkimkit.seal(text, rsa, "lists.test", "spf=pass smtp.mailfrom=spf-fail.example.org"),
        ]
        for message in messages:
            head, _, body = message.partition(b"\r\n\r\n")
            fields = [
                (name.decode(), value.decode().replace("\r\n", "\n"))
                for name, _, value in (
                    field.partition(b":") for field in re.split(rb"\r\n(?![ \t])", head)
                )
            ]
            with MilterClient(daemon.socket) as client:
                client.negotiate()
                client.connect("forwarder.example", "198.51.100.7")
                client.helo("helo-none.example.org")
                result = client.transaction(
                    "<m@spf-fail.example.org>", ["<u@example.net>"], fields, body
                )
            assert result.final.kind == "continue", result
        lines = daemon.verdicts()
        assert [line.split(" rescue=", 1)[1].split()[0] for line in lines] == [
            "dkim",
            "dkim",
            "arc",
        ], lines
        assert "imported after start-up" not in daemon.log_text()
