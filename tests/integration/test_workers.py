"""[milter] workers: forked processes on one socket, through the real daemon.

Which worker accepts a connection is the kernel's choice, so the tests that
must know stop (SIGSTOP) every worker but one: a stopped process cannot
accept, and the connection waits in the socket's backlog for the other.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testkit.daemon import Daemon, children, free_port, sockets_of, wait_for
from testkit.milterclient import MilterClient, TransactionResult, one_transaction
from tests.conftest import MakeDaemon

PASS = ("198.51.100.7", "helo-pass.example.org", "a@spf-pass.example.org")
FAIL = ("203.0.113.5", "helo-none.example.org", "m@spf-fail-noexp.example.org")


@contextmanager
def only(daemon: Daemon, worker: int) -> Iterator[None]:
    """Every worker but `worker` (a pid) stopped while the block runs."""
    others = [pid for pid in children(daemon.pid) if pid != worker]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    # kill() returns before the stop has reached every thread: until then a
    # listener woken by a connection could still accept it.
    wait_for(lambda: all(map(stopped, others)), 10, "the other workers to stop")
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def stopped(pid: int) -> bool:
    """Every thread of process `pid` is stopped."""
    return all(state(task / "stat") in ("T", None) for task in Path(f"/proc/{pid}/task").iterdir())


def state(stat: Path) -> str | None:
    """The state letter (R, S, T, Z...) in a /proc stat file; None once the
    process or thread is gone."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def header(result: TransactionResult) -> str:
    assert result.eom is not None, result
    (value,) = [m.value or "" for m in result.eom.modifications if m.name == "Received-SPF"]
    return value.split()[0]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def sample(text: str, line: str) -> float:
    found = re.search(rf"^{re.escape(line)} (\S+)$", text, re.M)
    assert found, f"{line} not in metrics"
    return float(found.group(1))


def test_every_worker_serves_and_reloads(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon({"milter": {"workers": "2"}})
    workers = children(daemon.pid)
    assert len(workers) == 2 and daemon.workers == 2
    started = re.findall(r"worker \d started: pid=(\d+)", daemon.log_text())
    assert sorted(int(pid) for pid in started) == sorted(workers)
    for pid in workers:
        with only(daemon, pid):
            result = one_transaction(daemon.socket, *PASS)
            assert header(result) == "pass"
            assert "receiver=" in str(result.eom)
            refused = one_transaction(daemon.socket, *FAIL)
            assert (refused.final.text or "").startswith("550 5.7.23"), refused
    # Each worker must have re-read the file, not only the supervisor.
    daemon.config_path.write_text(
        daemon.config_path.read_text() + "[headers]\nhide_receiver = yes\n"
    )
    assert "configuration reloaded" in daemon.reload()
    for pid in workers:
        with only(daemon, pid):
            result = one_transaction(daemon.socket, *PASS)
            assert header(result) == "pass"
            assert "receiver=" not in str(result.eom)
    log = daemon.log_text()
    assert log.count("INFO spfmilter.daemon: configuration reloaded from") == 1
    assert sorted(re.findall(r"worker (\d): configuration reloaded from", log)) == ["0", "1"]
    assert children(daemon.pid) == workers


def test_a_dead_worker_is_replaced_and_its_counts_stay(make_daemon: MakeDaemon) -> None:
    port = free_port()
    daemon = make_daemon(
        {"milter": {"workers": "2"}, "metrics": {"listen": f"127.0.0.1:{port}"}},
        allowed=(r"^ERROR spfmilter.workers: worker 0 \(pid \d+\) ended: killed by signal 9",),
    )
    first, second = children(daemon.pid)
    with only(daemon, first):
        assert header(one_transaction(daemon.socket, *PASS)) == "pass"
        # A connection open in the worker that dies: its gauge must not stay.
        client = MilterClient(daemon.socket)
        client.open()
        client.negotiate()
        client.connect("client.example", PASS[0])
        wait_for(
            lambda: sample(scrape(port), "spfmilter_connections_in_flight") == 1,
            10,
            "the open connection to count",
        )
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(set(children(daemon.pid)) - {first, second}) == 1, 10, "a new worker")
    client.close()
    (replacement,) = set(children(daemon.pid)) - {second}
    text = scrape(port)
    assert sample(text, "spfmilter_connections_in_flight") == 0
    for pid in (replacement, second):
        with only(daemon, pid):
            assert header(one_transaction(daemon.socket, *PASS)) == "pass"
    passes = 'spfmilter_verdicts_total{action="accept",identity="mailfrom",result="pass"}'
    assert sample(scrape(port), passes) == 3  # the dead worker's one is kept
    assert re.search(
        rf"worker 0 \(pid {first}\) ended: killed by signal 9; replacing it", daemon.log_text()
    )
    assert f"worker 0 started: pid={replacement}" in daemon.log_text()


def test_workers_dying_in_a_row_stop_the_daemon(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(
        {"milter": {"workers": "2"}},
        allowed=(r"^ERROR spfmilter.workers: worker \d \(pid \d+\) ended: killed by signal 9",),
    )
    assert daemon.process is not None
    for _ in range(5):
        victim = children(daemon.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda gone=victim: (
                gone not in children(daemon.pid) or daemon.process.poll() is not None
            ),
            10,
            "the worker to be reaped",
        )
    assert daemon.process.wait(30) == 1
    assert "too many in a row, stopping" in daemon.log_text()
    started = [int(p) for p in re.findall(r"started: pid=(\d+)", daemon.log_text())]
    assert len(started) == 6  # two, then four replacements
    assert [pid for pid in started if alive(pid)] == []


def alive(pid: int) -> bool:
    """`pid` runs (a zombie does not count)."""
    return state(Path(f"/proc/{pid}/stat")) not in ("Z", None)


def test_workers_end_with_a_killed_supervisor(make_daemon: MakeDaemon) -> None:
    """No orphans: they would keep the socket, and nobody would replace
    them or pass a reload on."""
    daemon = make_daemon({"milter": {"workers": "2"}})
    workers = children(daemon.pid)
    daemon.kill()
    wait_for(lambda: not any(alive(pid) for pid in workers), 10, "the workers to end")
    daemon.start()  # the same inet port is free again
    assert header(one_transaction(daemon.socket, *PASS)) == "pass"


def test_workers_share_a_listening_socket_that_does_not_block(make_daemon: MakeDaemon) -> None:
    """A connection wakes every worker polling the shared socket; accept()
    must not block in those that lose the race (they would not see a stop
    until the next connection), while the connection itself stays blocking,
    as libmilter reads and writes it."""
    daemon = make_daemon({"milter": {"workers": "2"}})
    with MilterClient(daemon.socket) as client:
        client.negotiate()
        held = [sock for pid in children(daemon.pid) for sock in sockets_of(pid, daemon.port)]
        try:
            listening = [s for s in held if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
            accepted = [s for s in held if s not in listening]
            # The client's connection, and readiness probes not yet closed.
            assert len(listening) == 2 and accepted
            assert not any(os.get_blocking(s.fileno()) for s in listening)
            assert all(os.get_blocking(s.fileno()) for s in accepted)
        finally:
            for sock in held:
                sock.close()
