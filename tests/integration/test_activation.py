"""The daemon under a service manager's protocols, and stops that lose no mail.

The test plays systemd's part with real sockets: it holds a listening unix
socket and passes it as descriptor 3 with LISTEN_PID and LISTEN_FDS
(sd_listen_fds(3)), and reads the daemon's readiness datagrams on a
NOTIFY_SOCKET of its own (sd_notify(3)).  A connection made while no daemon
runs must wait in that socket's backlog and be served by the next daemon,
which is what makes a restart invisible to the MTA.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.daemon import Daemon, config_text, wait_for
from testkit.dnsserver import DNSTestServer
from testkit.milterclient import MilterClient, TransactionResult

# Runs the daemon as systemd does: the passed socket on descriptor 3, and
# LISTEN_PID naming the daemon's own process (exec keeps the PID).
ACTIVATE = (
    "import os, sys; "
    "os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
    "os.execv(sys.executable, [sys.executable, '-m', 'spfmilter', *sys.argv[2:]])"
)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """The service manager's end of sd_notify: a datagram socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(20)
        yield sock


@pytest.fixture
def held_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """The listening socket the service manager holds across restarts."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tmp_path / "held.sock"))
        sock.listen(64)
        yield sock


Activated = Callable[[str], Daemon]


@pytest.fixture
def activated(
    tmp_path: Path, dns_server: DNSTestServer, held_socket: socket.socket
) -> Iterator[Activated]:
    """Daemons, not yet started, that get the held socket as systemd passes
    it; their own --socket names another path, which they must not create.
    Any still running at teardown (a failed test) is killed, by PID."""
    made: list[Daemon] = []

    def make(name: str) -> Daemon:
        daemon = Daemon(tmp_path / name, config_text(dns_server), f"unix:{tmp_path / name}.sock")
        daemon.command = [sys.executable, "-c", ACTIVATE, str(held_socket.fileno())]
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()


def start(daemon: Daemon, held: socket.socket, notify: socket.socket) -> None:
    """Start `daemon` on `held` and wait for its readiness datagram."""
    own = daemon.socket
    # Readiness is the datagram, and the probe goes to the held socket.
    daemon.socket = f"unix:{held.getsockname()}"
    daemon.env["NOTIFY_SOCKET"] = notify.getsockname()
    daemon.pass_fds = (held.fileno(),)
    daemon.start()
    message = notify.recv(4096).decode()
    assert "READY=1" in message.splitlines(), message
    assert f"MAINPID={daemon.pid}" in message.splitlines(), message
    assert not Path(own.removeprefix("unix:")).exists()


def stop(daemon: Daemon, held: socket.socket) -> int:
    """SIGTERM and the exit status.  Daemon.stop() would probe the held
    socket until the daemon is gone, and the probes would pile up in its
    backlog: one connection wakes libmilter's listener instead."""
    assert daemon.process is not None
    daemon.signal(signal.SIGTERM)
    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(held.getsockname())
    return daemon.process.wait(30)


def checked(client: MilterClient, sender: str) -> TransactionResult:
    client.negotiate()
    client.macros("C", {"j": "mx.test.example"})
    client.connect("client.example", "198.51.100.7")
    client.helo("helo-pass.example.org")
    return client.transaction(f"<{sender}>", ["<user@example.net>"])


def received_spf(result: TransactionResult) -> str:
    assert result.eom is not None, result
    (header,) = (m.value for m in result.eom.modifications if m.name == "Received-SPF")
    assert header is not None
    return header.split()[0]


def test_a_connection_waits_in_the_passed_socket_while_no_daemon_runs(
    activated: Activated, held_socket: socket.socket, notify_socket: socket.socket
) -> None:
    first = activated("first")
    start(first, held_socket, notify_socket)
    with MilterClient(first.socket, timeout=10) as client:
        assert received_spf(checked(client, "alice@spf-pass.example.org")) == "pass"
    assert "(passed by the service manager)" in first.log_text()
    assert stop(first, held_socket) == 0
    assert notify_socket.recv(4096) == b"STOPPING=1"
    assert Path(held_socket.getsockname()).exists()

    # The MTA connects between the two daemons, as during a restart.
    second = activated("second")
    try:
        with MilterClient(first.socket, timeout=10) as waiting:
            start(second, held_socket, notify_socket)
            assert received_spf(checked(waiting, "bob@spf-softfail.example.org")) == "softfail"
    finally:
        assert stop(second, held_socket) == 0
    for daemon in (first, second):
        assert daemon.unexpected() == [], daemon.log_text()


def test_a_restart_finishes_open_sessions_and_queues_new_ones(
    activated: Activated, held_socket: socket.socket, notify_socket: socket.socket
) -> None:
    first = activated("first")
    start(first, held_socket, notify_socket)
    second = activated("second")
    with MilterClient(first.socket, timeout=10) as open_session:
        open_session.negotiate()
        open_session.macros("C", {"j": "mx.test.example"})
        open_session.connect("client.example", "198.51.100.7")
        open_session.helo("helo-pass.example.org")
        first.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in first.log_text(), 15, "the daemon to drain")
        with MilterClient(first.socket, timeout=10) as waiting:
            # The session that was open goes on: its next message is checked.
            result = open_session.transaction(
                "<alice@spf-pass.example.org>", ["<user@example.net>"]
            )
            assert received_spf(result) == "pass"
            open_session.quit()
            assert first.process is not None and first.process.wait(15) == 0
            assert notify_socket.recv(4096) == b"STOPPING=1"
            # The connection made during the stop is the next daemon's.
            try:
                start(second, held_socket, notify_socket)
                assert received_spf(checked(waiting, "bob@spf-softfail.example.org")) == (
                    "softfail"
                )
            finally:
                waiting.close()
                assert stop(second, held_socket) == 0
    for daemon in (first, second):
        assert daemon.unexpected() == [], daemon.log_text()
