"""Robustness under load: many concurrent connections, many transactions.

This module owns the overload and memory tests of the real daemon, driven
over the milter protocol by client threads (testkit/milterclient.py)
against a DNS server of their own (testkit/dnsserver.py in a child
process, so the client threads cannot slow its answers) that answers a
wildcard zone: most transactions ask about names nobody asked about before,
and the daemon's cache cannot absorb the load.  Every transaction's reply and header are
checked against what its own client, HELO and sender must get; each one
must finish within the daemon's DNS budget; the daemon's RSS and open
descriptors must stay flat.  The long versions are marked slow; short ones
run by default, among them the leak check, which counts the memory the
daemon's allocators have handed out (tests/support/leakprobe, loaded into
the daemon) across a few thousand transactions, and shows on each run that
it still finds a leak of 200 bytes a transaction planted in the daemon.

Protocol abuse and crash safety live in test_robustness.py.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from testkit.daemon import REPO, Daemon, ProcessStats, wait_for
from testkit.milterclient import MilterClient, MilterError, TransactionResult
from tests.conftest import MakeDaemon
from tests.support.leakprobe.sitecustomize import PLANT, PROBE

# Two wildcard names: below pass.load.example only 198.51.100.0/24 may send;
# below any.load.example everybody may (HELO names of strangers that pass,
# so that their MAIL FROM is evaluated and fails).
LOAD_ZONE: dict[str, list[object]] = {
    "*.pass.load.example": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}],
    "*.any.load.example": [{"TXT": "v=spf1 +all"}],
}
LOOKUP_TIME = 5.0  # [dns] lookup_time: the bound on each transaction
# A small cache fills up during the warm-up, so what grows after it is not
# the cache legitimately filling (the 16M default would still be filling
# after 200,000 transactions with fresh names).
DNS_SECTIONS = {
    "dns": {"timeout": "2", "lookup_time": f"{LOOKUP_TIME:g}", "cache_size": "256K"},
}
TRANSACTIONS_PER_CONNECTION = 2
FD_SLACK = 2
THREAD_SLACK = 1
KIB = 1024
MIB = 1024 * KIB


@contextmanager
def load_dns(workdir: Path, delay: float) -> Iterator[str]:
    """LOAD_ZONE served with `delay` by testkit.dnsserver in a child
    process, so that the client threads of this process cannot slow its
    answers down; yields its HOST:PORT.  Stops that process by PID."""
    zone = workdir / "load-zone.yaml"
    zone.write_text(yaml.safe_dump(LOAD_ZONE))
    command = [sys.executable, "-m", "testkit.dnsserver", str(zone), "--delay", f"{delay}"]
    with (workdir / "dnsserver.log").open("wb") as log:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=REPO)
    try:
        assert server.stdout is not None
        # The server prints "listening on HOST:PORT" once it is bound.
        ready, _, _ = select.select([server.stdout], [], [], 20)
        line = server.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"test DNS server did not start: {line!r}")
        yield line.split()[-1]
    finally:
        server.send_signal(signal.SIGINT)  # how its CLI ends
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


# ---------------------------------------------------------------- one client


@dataclass
class Tally:
    """What all client threads saw, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: int = 0
    errors: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def record(self, seconds: float, error: str | None) -> None:
        with self.lock:
            self.done += 1
            self.slowest = max(self.slowest, seconds)
            if error is not None and len(self.errors) < 100:
                self.errors.append(error)

    def fail(self, error: str) -> None:
        with self.lock:
            if len(self.errors) < 100:
                self.errors.append(error)


class Names:
    """Client addresses, HELO names and senders; most never seen before.

    One connection in four comes from a stranger (203.0.113.0/24) whose MAIL
    FROM fails; one name in four is reused, so the cache answers some too.
    """

    def __init__(self) -> None:
        self._ids = itertools.count()

    def fresh(self) -> int:
        return next(self._ids)

    def connection(self) -> tuple[str, str, bool]:
        """(client IP, HELO, whether this client may send for pass.load.example)."""
        n = self.fresh()
        ours = n % 4 != 3
        ip = f"198.51.100.{n % 254 + 1}" if ours else f"203.0.113.{n % 254 + 1}"
        label = "warm" if n % 4 == 1 else f"h{n}"
        return ip, f"{label}.{'pass' if ours else 'any'}.load.example", ours

    def sender(self) -> str:
        n = self.fresh()
        return "warm@warm.pass.load.example" if n % 4 == 2 else f"u{n}@s{n}.pass.load.example"


def check(result: TransactionResult, ip: str, helo: str, sender: str, ours: bool) -> str | None:
    """None if the transaction got exactly what its own facts call for."""
    domain = sender.split("@")[1]
    if not ours:
        expected = f"550 5.7.23 SPF MAIL FROM check for {sender}: fail"
        text = result.final.text or ""
        if result.final.kind == "replycode" and text.startswith(expected):
            return None
        return f"{sender} from {ip}: expected {expected!r}, got {result.final}"
    if result.final.kind != "continue" or result.eom is None:
        return f"{sender} from {ip}: expected acceptance, got {result.final}"
    headers = [m.value or "" for m in result.eom.modifications if m.name == "Received-SPF"]
    wanted = (
        f"pass ({domain}: {ip} is authorized",
        f'envelope-from="{sender}"',
        f"helo={helo};",
        f"client-ip={ip}",
    )
    if len(headers) != 1 or not headers[0].startswith(wanted[0]):
        return f"{sender} from {ip}: expected one pass header, got {headers}"
    flat = " ".join(headers[0].split())
    missing = [w for w in wanted[1:] if w not in flat]
    return f"{sender} from {ip}: header lacks {missing}: {flat}" if missing else None


def client_loop(daemon: Daemon, names: Names, tally: Tally, more: threading.Event) -> None:
    """Connections of TRANSACTIONS_PER_CONNECTION transactions while `more` is set."""
    failures = 0
    while more.is_set() and failures < 10:
        ip, helo, ours = names.connection()
        try:
            with MilterClient(daemon.socket, timeout=LOOKUP_TIME + 10) as client:
                client.negotiate()
                client.connect("client.example", ip)
                client.helo(helo)
                for _ in range(TRANSACTIONS_PER_CONNECTION):
                    sender = names.sender()
                    started = time.monotonic()
                    result = client.transaction(f"<{sender}>", ["<user@example.net>"])
                    tally.record(time.monotonic() - started, check(result, ip, helo, sender, ours))
        except MilterError as error:
            failures += 1
            tally.fail(f"connection from {ip}: {error}")


# ---------------------------------------------------------------- the daemon over time


@dataclass(frozen=True)
class Sample:
    elapsed: float
    done: int
    stats: ProcessStats


def sample_until(
    daemon: Daemon, tally: Tally, stop: threading.Event, into: list[Sample], period: float
) -> None:
    started = time.monotonic()
    while not stop.wait(period):
        into.append(Sample(time.monotonic() - started, tally.done, daemon.stats()))


def idle_baseline(daemon: Daemon) -> ProcessStats:
    """Stats of the idle daemon once it has served one connection."""
    with MilterClient(daemon.socket) as client:
        client.negotiate()
    return daemon.steady_stats()


@dataclass
class Run:
    tally: Tally
    samples: list[Sample]
    seconds: float


def drive(
    daemon: Daemon, clients: int, enough: Callable[[Tally], bool], limit: float, period: float
) -> Run:
    """Run `clients` client threads until `enough` says so (at most `limit`
    seconds), sampling the daemon every `period` seconds."""
    names, tally = Names(), Tally()
    more, sampled = threading.Event(), threading.Event()
    more.set()
    samples: list[Sample] = []
    sampler = threading.Thread(target=sample_until, args=(daemon, tally, sampled, samples, period))
    threads = [
        threading.Thread(target=client_loop, args=(daemon, names, tally, more), daemon=True)
        for _ in range(clients)
    ]
    started = time.monotonic()
    sampler.start()
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: enough(tally), limit, "the load run to be complete")
    finally:
        more.clear()
        for thread in threads:
            thread.join(LOOKUP_TIME + 30)
        sampled.set()
        sampler.join(10)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    return Run(tally, samples, time.monotonic() - started)


def load_sections(nameserver: str) -> dict[str, dict[str, str]]:
    return {"dns": {**DNS_SECTIONS["dns"], "nameservers": nameserver}}


# ---------------------------------------------------------------- overload

CONCURRENT = 256
DNS_DELAY = 0.02
# Flatness tolerances: generous against allocator noise and against the
# legitimate swing in open descriptors (each client holds a connection, and
# each callback waiting on DNS a UDP socket), yet one leaked descriptor or
# ~100 KB per transaction over the transactions between the two windows
# exceeds them several times (checked below, so a run too slow to tell
# fails instead of passing blind).
RSS_TOLERANCE = 16 * MIB
FD_TOLERANCE = CONCURRENT
LEAK_PER_TRANSACTION = 100 * 1000
# At no time more descriptors than: a connection and a DNS socket per
# client, plus connections a client has closed and the daemon not yet.
FD_CEILING = 3 * CONCURRENT


@pytest.mark.parametrize(
    "seconds", [10, pytest.param(60, marks=pytest.mark.slow)], ids=["10s", "60s"]
)
def test_overload_256_connections_with_slow_dns(
    make_daemon: MakeDaemon, tmp_path: Path, seconds: int
) -> None:
    with load_dns(tmp_path, DNS_DELAY) as dns:
        daemon = make_daemon(load_sections(dns))
        pid, baseline = daemon.pid, idle_baseline(daemon)
        end = time.monotonic() + seconds
        run = drive(daemon, CONCURRENT, lambda _: time.monotonic() >= end, seconds + 5, 0.2)
        after = daemon.stats_back_to(baseline, FD_SLACK, THREAD_SLACK)

    tally = run.tally
    assert tally.errors == [], f"{len(tally.errors)} errors, first: {tally.errors[:5]}"
    # Enough work happened for the checks below to mean something.
    assert tally.done >= 4 * CONCURRENT, tally.done
    assert tally.slowest < LOOKUP_TIME, f"slowest MAIL..EOM took {tally.slowest:.2f} s"

    first = [s for s in run.samples if 0.2 * seconds <= s.elapsed <= 0.3 * seconds]
    last = [s for s in run.samples if 0.85 * seconds <= s.elapsed <= 0.95 * seconds]
    assert first and last, run.samples
    between = last[0].done - first[-1].done
    assert between * LEAK_PER_TRANSACTION > 4 * RSS_TOLERANCE, between
    assert between > 4 * FD_TOLERANCE, between
    rss_first = statistics.median(s.stats.rss_kib for s in first) * KIB
    rss_last = statistics.median(s.stats.rss_kib for s in last) * KIB
    fds_first = statistics.median(s.stats.fds for s in first)
    fds_last = statistics.median(s.stats.fds for s in last)
    fds_most = max(s.stats.fds for s in run.samples)
    print(
        f"\noverload {seconds}s: {tally.done} transactions, slowest {tally.slowest:.3f} s; "
        f"RSS {rss_first / MIB:.1f} -> {rss_last / MIB:.1f} MiB; "
        f"fds {fds_first:.0f} -> {fds_last:.0f}, at most {fds_most} "
        f"(idle {baseline.fds} -> {after.fds}); "
        f"threads idle {baseline.threads} -> {after.threads}"
    )
    assert rss_last - rss_first <= RSS_TOLERANCE, (rss_first, rss_last)
    assert fds_last - fds_first <= FD_TOLERANCE, (fds_first, fds_last)
    assert fds_most <= baseline.fds + FD_CEILING, (baseline, fds_most)
    # Once every client has gone, the connections' resources are given back.
    assert daemon.pid == pid and daemon.process is not None and daemon.process.poll() is None
    assert after.fds <= baseline.fds + FD_SLACK, (baseline, after)
    assert after.threads <= baseline.threads + THREAD_SLACK, (baseline, after)


# ---------------------------------------------------------------- memory

MEMORY_CLIENTS = 16


@pytest.mark.parametrize(
    ("total", "warm_up", "tolerance"),
    [
        # 4 MiB over the 4,000 transactions after the warm-up: a leak of
        # 1 KiB per transaction fails.
        (5_000, 1_000, 4 * MIB),
        pytest.param(
            200_000,
            20_000,
            16 * MIB,
            marks=[pytest.mark.slow, pytest.mark.timeout(1800)],
        ),
    ],
    ids=["5k", "200k"],
)
def test_memory_stays_bounded(
    make_daemon: MakeDaemon, tmp_path: Path, total: int, warm_up: int, tolerance: int
) -> None:
    with load_dns(tmp_path, 0.0) as dns:
        daemon = make_daemon(load_sections(dns))
        pid, baseline = daemon.pid, idle_baseline(daemon)
        # The limit asks for no more than 200 transactions a second.
        run = drive(daemon, MEMORY_CLIENTS, lambda t: t.done >= total, total / 200 + 60, 0.5)
        after = daemon.stats_back_to(baseline, FD_SLACK, THREAD_SLACK)

    tally = run.tally
    assert tally.errors == [], f"{len(tally.errors)} errors, first: {tally.errors[:5]}"
    assert tally.done >= total
    assert tally.slowest < LOOKUP_TIME, f"slowest MAIL..EOM took {tally.slowest:.2f} s"
    at_warm_up = next(s for s in run.samples if s.done >= warm_up)
    rss_warm = at_warm_up.stats.rss_kib * KIB
    rss_end = after.rss_kib * KIB
    print(
        f"\nmemory {total}: RSS idle {baseline.rss_kib / 1024:.1f} MiB, after "
        f"{at_warm_up.done} {rss_warm / MIB:.1f} MiB, after {tally.done} {rss_end / MIB:.1f} MiB "
        f"(+{(rss_end - rss_warm) / MIB:.2f} MiB); fds idle {baseline.fds} -> {after.fds}; "
        f"{tally.done / run.seconds:.0f} transactions/s"
    )
    assert rss_end - rss_warm <= tolerance, (rss_warm, rss_end)
    assert daemon.pid == pid and daemon.process is not None and daemon.process.poll() is None
    assert after.fds <= baseline.fds + FD_SLACK, (baseline, after)
    assert after.threads <= baseline.threads + THREAD_SLACK, (baseline, after)


# ---------------------------------------------------------------- leaks

# tests/support/leakprobe: a sitecustomize that reports the daemon's memory
# in use on a socket of the test's, and plants a leak.
PROBE_PATH = REPO / "tests" / "support" / "leakprobe"
LEAK_WARM_UP = 1_000
LEAK_TRANSACTIONS = 2_000
# What a transaction may leave behind, on average, once the daemon is warm:
# a quarter of a small object (so one object of any size up to 512 bytes
# per transaction fails), and 100 bytes of malloc's (C code, larger objects).
BLOCKS_LIMIT = 0.25
MALLOC_LIMIT = 100
PLANTED = 200


def memory_in_use(probe: Path) -> dict[str, int]:
    """The probe's figures of the daemon, after a full collection."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(30)
        connection.connect(str(probe))
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    figures: dict[str, int] = json.loads(received)
    return figures


@pytest.mark.parametrize(
    "planted",
    ["", f"object:{PLANTED}", f"malloc:{PLANTED}"],
    ids=["as-is", f"planted-object-{PLANTED}B", f"planted-malloc-{PLANTED}B"],
)
def test_transactions_leave_no_memory_behind(
    make_daemon: MakeDaemon, tmp_path: Path, planted: str
) -> None:
    # RSS cannot tell 100 bytes a transaction from the allocator's own
    # swings in CI time; the probe counts what Python's and C's allocators
    # have handed out.  One process (workers = 1) serves every transaction,
    # and no cache grows: once warm, whatever a transaction keeps is a leak.
    probe = tmp_path / "probe.sock"
    with load_dns(tmp_path, 0.0) as dns:
        sections = {"dns": {**load_sections(dns)["dns"], "cache_size": "0"}}
        daemon = make_daemon({**sections, "milter": {"workers": "1"}}, start=False)
        daemon.env["PYTHONPATH"] = os.pathsep.join(
            [str(PROBE_PATH), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        daemon.env[PROBE] = str(probe)
        if planted:
            daemon.env[PLANT] = planted
        daemon.start()
        warm = drive(daemon, MEMORY_CLIENTS, lambda t: t.done >= LEAK_WARM_UP, 120, 1.0)
        before = memory_in_use(probe)
        run = drive(daemon, MEMORY_CLIENTS, lambda t: t.done >= LEAK_TRANSACTIONS, 300, 1.0)
        after = memory_in_use(probe)

    for tally in (warm.tally, run.tally):
        assert tally.errors == [], f"{len(tally.errors)} errors, first: {tally.errors[:5]}"
    growth = {name: (after[name] - before[name]) / run.tally.done for name in after}
    print(
        f"\nleak check, planted {planted or 'nothing'}: per transaction over {run.tally.done} "
        f"after {warm.tally.done}: {growth['blocks']:+.3f} blocks, "
        f"{growth['objects']:+.3f} objects, {growth['malloc']:+.1f} B of malloc "
        f"({run.tally.done / run.seconds:.0f} transactions/s)"
    )
    leaked = growth["blocks"] > BLOCKS_LIMIT or growth["malloc"] > MALLOC_LIMIT
    if planted:
        assert leaked, f"the check no longer finds a planted leak: {growth} a transaction"
    else:
        assert not leaked, f"transactions leave memory behind: {growth} a transaction"


# ---------------------------------------------------------------- malloc arenas

# glibc's HEAP_MAX_SIZE on 64-bit: each heap of a thread's malloc arena is a
# mapping reserved at this size and alignment, used from its start.
ARENA_HEAP = 64 * MIB
ARENA_CLIENTS = 32


def malloc_heaps(pid: int) -> int:
    """How many thread-arena heaps `pid` has: anonymous mappings that start
    on an ARENA_HEAP boundary and, with the inaccessible rest after them,
    cover exactly ARENA_HEAP bytes."""
    rows = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        rows.append((start, end, fields[1], len(fields) > 5))
    heaps = 0
    for index, (start, end, perms, named) in enumerate(rows):
        if named or start % ARENA_HEAP or not perms.startswith("rw"):
            continue
        reach = end
        for following in rows[index + 1 :]:
            if following[0] != reach or following[3] or reach == start + ARENA_HEAP:
                break
            reach = following[1]
        heaps += reach == start + ARENA_HEAP
    return heaps


def test_connection_threads_share_two_malloc_arenas(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    # libmilter runs each connection on a thread of its own, and glibc gives
    # threads arenas of their own (up to 8 per CPU) that do not reuse each
    # other's free memory: a worker's RSS crept up with every transaction
    # (52 -> 59 MiB from 100,000 to 200,000 with full caches).  The daemon
    # holds every process to the main arena and one more.
    with load_dns(tmp_path, 0.0) as dns:
        daemon = make_daemon({**load_sections(dns), "milter": {"workers": "2"}})
        run = drive(daemon, ARENA_CLIENTS, lambda t: t.done >= 1000, 60, 0.5)
        heaps = {pid: malloc_heaps(pid) for pid in daemon.pids()}
    assert run.tally.errors == [], run.tally.errors[:5]
    assert len(heaps) == 3 and all(count <= 1 for count in heaps.values()), heaps
