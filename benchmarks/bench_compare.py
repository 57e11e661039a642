"""spfmilter against a bare pymilter baseline and Debian's pyspf-milter, in one run.

This module owns the comparison benchmark: starting the three milters side by
side, serving them the same DNS, driving the same workloads at them in
interleaved rounds, checking every reply and header, and reporting tx/s,
latency, CPU and memory per target with ratios from the same run.  It also
owns two opt-in extras: an RSS series over many transactions, and the CPU
cost per uncached DNS query of candidate DNS client libraries.

Targets, each started as a process of its own (unix socket; a second
instance on inet:PORT@127.0.0.1 for the inet workload):

- spfmilter: ``python -m spfmilter --config FILE --socket SPEC`` (via
  tests/support/daemon.py), ``[dns] nameservers = 127.0.0.1:PORT``;
- baseline: the bare pymilter daemon of benchmarks/milterproc.py, which does
  the protocol work and adds one header, without SPF;
- pyspf-milter: Debian's package (``apt-get install pyspf-milter``), run as
  ``/usr/bin/pyspf-milter CONFIG`` in the foreground with a config file of
  our own.  It resolves through the system resolver (port 53 from
  /etc/resolv.conf), so it runs in a private mount namespace (``unshare
  --mount``) in which a private resolv.conf is bind-mounted over
  /etc/resolv.conf, naming a loopback address (127.0.0.154 by default) where
  the benchmark's DNS also answers on port 53.  It takes the HELO identity
  from the connect step's hostname, not from HELO, so every transaction
  connects with hostname = HELO name.

CPU is counted for each daemon's whole process tree (the PID started and
all its descendants, from /proc), so a daemon that forks workers is measured
whole.  DNS is tests/support/dnsserver.py, in this process, optionally
holding every answer back (``delay``).

Workloads, each transaction one milter connection as an MTA makes it for
one SMTP session with one message (negotiate, macro j, connect, HELO, MAIL,
RCPT, DATA, one header, EOH, body, EOM, QUIT):

- warm: a mix of 10 passing (HELO, sender) pairs, records of several shapes
  (ip4, a, mx, include, redirect), DNS 0 ms, 8 concurrent connections;
- cold: every transaction a new HELO name and a new sender domain, both
  ``v=spf1 a -all`` (2 TXT + 2 A queries for an evaluator that checks both),
  DNS 20 ms per answer, 64 concurrent connections;
- inet: the warm mix over TCP, one connection at a time, from a client
  that behaves as Postfix's does (MtaLikeTcpClient: Nagle and delayed ACKs
  on, one write per round trip), to show the delayed-ACK stall.

Each workload runs a warm-up per target, then 3 rounds over the targets in
turn (A B C A B C A B C); the report gives the medians of the rounds.  Every
reply must be CONTINUE and every message must get exactly one header, the
expected one, saying pass for this transaction's sender; anything else is an
error, and a run with errors is reported as failed (exit status 1).

Client connections run in spawned worker processes, so that neither the
GIL of this process (which serves DNS) nor one client process limits the
rate.  Run from the repository root, as root (mount namespace, port 53)::

    .venv/bin/python -m benchmarks.bench_compare            # quick, ~2 minutes
    .venv/bin/python -m benchmarks.bench_compare --full     # ~8 minutes
    .venv/bin/python -m benchmarks.bench_compare --json
    .venv/bin/python -m benchmarks.bench_compare --only-dns-clients
    .venv/bin/python -m benchmarks.bench_compare --workloads "" --rss-series 200000
    .venv/bin/python -m benchmarks.bench_compare --spfmilter-option milter.workers=2

``--dns-clients`` adds the DNS client measurement to a run; the RSS series
runs after the workloads (about 7 minutes per 200,000 transactions here).

Everything listens on unix sockets in a temporary directory or on
127.0.0.0/8; every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import ipaddress
import itertools
import json
import math
import multiprocessing
import os
import platform
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from benchmarks.milterproc import (
    BASELINE_HEADER,
    BaselineDaemon,
    Memory,
    MilterProcess,
    percentile,
    tree_cpu_seconds,
    tree_memory,
)
from tests.support.daemon import REPO, Daemon, free_port, wait_for
from tests.support.dnsserver import DNSTestServer, ZoneData
from tests.support.milterclient import (
    SMFIC_QUIT,
    MilterClient,
    MilterError,
    Response,
    TransactionResult,
)

# The client every transaction poses as, authorised by every record below.
CLIENT_IP = "198.51.100.7"
CLIENT_NET = "198.51.100.0/24"
RCPT = "<user@example.net>"
# Sent as macro j, as an MTA does; spfmilter takes the receiver from it and
# pyspf-milter needs it (it reads j unconditionally).
RECEIVER = "mx.bench.example"
# Long enough that no cached answer expires during a run.
DNS_TTL = 3600
# A reply slower than this means something is broken, not slow.
CLIENT_TIMEOUT = 60.0
ROUNDS = 3
# A loopback address for the DNS server that pyspf-milter's private
# resolv.conf names (port 53): not 127.0.0.53/54, which systemd-resolved uses.
SYSTEM_DNS_ADDRESS = "127.0.0.154"
PYSPF_MILTER = Path("/usr/bin/pyspf-milter")
ERROR_SAMPLES = 5  # error messages kept per run
# Growth over the second half of an RSS series still called flat.
RSS_FLAT_MIB = 2.0

SPFMILTER = "spfmilter"
BASELINE = "baseline"
PYSPF = "pyspf-milter"
TARGETS = (SPFMILTER, BASELINE, PYSPF)
TARGET_TITLES = {
    SPFMILTER: "spfmilter",
    BASELINE: "bare pymilter (adds one header)",
    PYSPF: "Debian pyspf-milter",
}


# ---------------------------------------------------------------- DNS data

# The warm mix: 10 sender domains whose records take the usual shapes, each
# with its own HELO name (``a`` pointing at the client).  An evaluator
# without a cache needs 3.6 queries per transaction on average: 2 for the
# HELO name, 1 to 3 for the sender.
_SHARED_POLICY = "_spf.warm.example"
_WARM_SENDER_RECORDS: tuple[str, ...] = (
    f"v=spf1 ip4:{CLIENT_NET} -all",
    f"v=spf1 ip4:{CLIENT_NET} -all",
    f"v=spf1 ip4:192.0.2.0/24 ip4:{CLIENT_NET} ip6:2001:db8::/32 -all",
    f"v=spf1 ip4:{CLIENT_NET} ~all",
    "v=spf1 a -all",
    "v=spf1 mx -all",
    f"v=spf1 include:{_SHARED_POLICY} -all",
    f"v=spf1 ip4:192.0.2.0/24 include:{_SHARED_POLICY} ~all",
    f"v=spf1 redirect={_SHARED_POLICY}",
    f"v=spf1 ip4:{CLIENT_NET} ip4:203.0.113.0/24 -all",
)
WARM_MIX: tuple[tuple[str, str], ...] = tuple(
    (f"mx{i}.warm.example", f"d{i}.warm.example") for i in range(len(_WARM_SENDER_RECORDS))
)
_HELO_RECORD = "v=spf1 a -all"


def warm_zone() -> dict[str, list[object]]:
    zone: dict[str, list[object]] = {_SHARED_POLICY: [{"TXT": f"v=spf1 ip4:{CLIENT_NET} -all"}]}
    for (helo, domain), record in zip(WARM_MIX, _WARM_SENDER_RECORDS, strict=True):
        zone[helo] = [{"TXT": _HELO_RECORD}, {"A": CLIENT_IP}]
        entries: list[object] = [{"TXT": record}, {"A": CLIENT_IP}]
        if " mx " in record:
            entries.append({"MX": [10, f"mx.{domain}"]})
            zone[f"mx.{domain}"] = [{"A": CLIENT_IP}]
        zone[domain] = entries
    return zone


def cold_identity(n: int) -> tuple[str, str]:
    """The n-th new (HELO name, sender domain) pair of the cold workload."""
    return f"h{n}.cold.example", f"s{n}.cold.example"


def cold_zone(start: int, stop: int) -> dict[str, list[object]]:
    """Records for cold identities start..stop-1: both ``v=spf1 a -all``."""
    zone: dict[str, list[object]] = {}
    for n in range(start, stop):
        for name in cold_identity(n):
            zone[name] = [{"TXT": _HELO_RECORD}, {"A": CLIENT_IP}]
    return zone


class BenchDNS:
    """One zone served twice: 127.0.0.1:PORT for spfmilter's [dns]
    nameservers, and SYSTEM_ADDRESS:53 for pyspf-milter's private resolv.conf."""

    def __init__(self, zone: ZoneData, port: int, system_address: str) -> None:
        self.servers = [
            DNSTestServer(zone, host="127.0.0.1", port=port, ttl=DNS_TTL),
            DNSTestServer(zone, host=system_address, port=53, ttl=DNS_TTL),
        ]
        self.base_zone = dict(zone)

    @property
    def nameserver(self) -> str:
        return self.servers[0].nameserver

    @property
    def system_address(self) -> str:
        return self.servers[1].host

    def start(self) -> None:
        for server in self.servers:
            try:
                server.start()
            except OSError as exc:
                self.stop()
                raise SystemExit(f"cannot serve DNS on {server.host}:{server.port}: {exc}") from exc

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def set_delay(self, seconds: float) -> None:
        for server in self.servers:
            server.delay = seconds

    def set_extra_zone(self, extra: ZoneData) -> None:
        """Serve the base zone plus extra (which replaces the previous extra)."""
        zone = {**self.base_zone, **extra}
        for server in self.servers:
            server.set_zone(zone)

    def clear_queries(self) -> None:
        for server in self.servers:
            server.clear_queries()

    def query_count(self) -> int:
        return sum(len(server.queries) for server in self.servers)


def address_in_use(address: str) -> bool:
    """Whether any TCP or UDP socket on this host is bound to address (any port)."""
    wanted = ipaddress.IPv4Address(address).packed[::-1].hex().upper()
    for table in ("/proc/net/tcp", "/proc/net/udp"):
        with open(table, encoding="ascii") as lines:
            next(lines)  # the header
            if any(line.split()[1].split(":")[0] == wanted for line in lines):
                return True
    return False


# ---------------------------------------------------------------- the client side


class MtaLikeTcpClient(MilterClient):
    """The milter client as an MTA runs it over TCP.

    MilterClient sets TCP_NODELAY and re-arms TCP_QUICKACK so that tests do
    not wait for delayed ACKs, and writes every command at once.  An MTA does
    neither: Postfix (milter8.c) leaves Nagle and delayed ACKs on and buffers
    macros, the command and any unanswered headers in its stream until it
    reads a reply, so each round trip is one write.  This client does the
    same, which leaves exactly the stall an MTA sees: libmilter writes an
    end-of-message modification and the final reply as separate packets, and
    with Nagle on its side the second waits for our delayed ACK of the first.
    """

    def __init__(self, spec: str, timeout: float = 30.0) -> None:
        super().__init__(spec, timeout)
        self._unsent = bytearray()

    def open(self) -> None:
        super().open()
        sock = self._sock
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            self._quickack = False

    def _send(self, command: bytes, payload: bytes, what: str) -> None:
        if self._sock is None:
            raise MilterError(f"{what}: not connected")
        # The wire format: length (command byte and payload), command, payload.
        self._unsent += struct.pack(">I", len(payload) + 1) + command + payload

    def _flush(self, what: str) -> None:
        if self._unsent and self._sock is not None:
            try:
                self._sock.sendall(self._unsent)
            except OSError as exc:
                raise MilterError(f"sending {what}: {exc}") from exc
            self._unsent.clear()

    def _receive(self, what: str) -> tuple[bytes, bytes]:
        self._flush(what)
        return super()._receive(what)

    def quit(self) -> None:
        try:
            self._send(SMFIC_QUIT, b"", "QUIT")
            self._flush("QUIT")
        finally:
            self.close()


@dataclass(frozen=True)
class Expectation:
    """The one header a target must add to every message.

    value_pattern is a regular expression searched in the value with folding
    whitespace collapsed; {helo} and {domain} in it stand for the escaped
    HELO name and sender domain of the transaction.
    """

    header: str
    value_pattern: str

    def check(self, value: str, helo: str, domain: str) -> bool:
        pattern = self.value_pattern.format(helo=re.escape(helo), domain=re.escape(domain))
        return re.search(pattern, " ".join(value.split())) is not None


EXPECTATIONS = {
    # Received-SPF: pass (...) ...; envelope-from="user@DOMAIN"; helo=HELO; ...
    SPFMILTER: Expectation(
        "Received-SPF", r"^pass\b.*envelope-from=\S*@{domain}\b.*\bhelo={helo};"
    ),
    BASELINE: Expectation(BASELINE_HEADER, r"^1$"),
    # Authentication-Results: mx.bench.example; spf=pass (sender SPF authorized)
    #   smtp.mailfrom=DOMAIN (client-ip=...; helo=HELO; envelope-from=...; ...)
    PYSPF: Expectation(
        "Authentication-Results",
        rf"^{re.escape(RECEIVER)}; spf=pass\b.*smtp\.mailfrom={{domain}} \(.*\bhelo={{helo}};",
    ),
}


@dataclass(frozen=True)
class Job:
    """What one client worker process does in one run.

    Transaction i (counted over the job's threads) uses mix[i % len(mix)],
    or, with names = (start, stop), cold identity start + i, failing once
    past stop.  The job ends at duration seconds or after count
    transactions, whichever is set and comes first.
    """

    spec: str
    threads: int
    expect: Expectation
    mta_tcp: bool  # MtaLikeTcpClient rather than MilterClient
    duration: float = 0.0
    count: int = 0
    mix: tuple[tuple[str, str], ...] = ()
    names: tuple[int, int] | None = None


@dataclass(frozen=True)
class ClientResult:
    started: float  # time.monotonic(), comparable across processes
    finished: float
    deadline: float  # math.inf for a count-limited job
    in_time: int  # transactions that completed by the deadline
    latencies: list[float]  # seconds, successful transactions only
    errors: int
    error_samples: list[str]
    cpu: float  # this worker's CPU seconds


class BadReply(Exception):
    """The milter answered, but not as a passing message must be answered."""


class PoolExhausted(Exception):
    """The cold workload ran out of prepared names."""


def _check_reply(what: str, response: Response) -> None:
    if response.kind != "continue":
        raise BadReply(f"{what}: {response.kind} {response.text or ''}".rstrip())


def _check_transaction(
    job: Job, result: TransactionResult, helo: str, domain: str, connect: Response
) -> None:
    _check_reply("connect", connect)
    if result.aborted:
        raise BadReply(f"transaction stopped early: {result.final}")
    steps: list[tuple[str, Response | None]] = [
        ("MAIL", result.mail),
        *(("RCPT", response) for _, response in result.rcpts),
        ("DATA", result.data),
        *(("header", response) for response in result.headers),
        ("EOH", result.eoh),
        *(("body", response) for response in result.body),
        ("EOM", result.eom.response if result.eom else None),
    ]
    for what, response in steps:
        if response is None:
            raise BadReply(f"{what}: no reply")
        _check_reply(what, response)
    assert result.eom is not None
    changes = result.eom.modifications
    if len(changes) != 1:
        raise BadReply(f"{len(changes)} modifications, expected one header: {changes}")
    (change,) = changes
    if (
        change.action not in ("addheader", "insheader")
        or change.name != job.expect.header
        or not job.expect.check(change.value or "", helo, domain)
    ):
        raise BadReply(f"unexpected header for {helo}/{domain}: {change}")


def one_transaction(job: Job, helo: str, domain: str, n: int) -> float:
    """One milter connection for one message; returns its seconds, raises if wrong."""
    client_type = MtaLikeTcpClient if job.mta_tcp else MilterClient
    start = time.perf_counter()
    with client_type(job.spec, timeout=CLIENT_TIMEOUT) as client:
        client.negotiate()
        client.macros("C", {"j": RECEIVER})
        # Hostname = HELO name: pyspf-milter checks the connect hostname as HELO.
        connect = client.connect(helo, CLIENT_IP)
        _check_reply("HELO", client.helo(helo))
        result = client.transaction(f"<user{n}@{domain}>", [RCPT])
    elapsed = time.perf_counter() - start
    _check_transaction(job, result, helo, domain, connect)
    return elapsed


def run_job(job: Job) -> ClientResult:
    """Run job's threads to the end; every failure is counted, never raised."""
    lock = threading.Lock()
    counter = itertools.count()
    latencies: list[float] = []
    samples: list[str] = []
    errors = 0
    in_time = 0
    started = time.monotonic()
    deadline = started + job.duration if job.duration else math.inf

    def next_index() -> int | None:
        with lock:
            if time.monotonic() >= deadline:
                return None
            index = next(counter)
        return None if job.count and index >= job.count else index

    def identity(index: int) -> tuple[str, str]:
        if job.names is None:
            return job.mix[index % len(job.mix)]
        start, stop = job.names
        if start + index >= stop:
            raise PoolExhausted(f"cold names {start}..{stop - 1} used up; raise the pool size")
        return cold_identity(start + index)

    def loop() -> None:
        nonlocal errors, in_time
        while (index := next_index()) is not None:
            try:
                helo, domain = identity(index)
                elapsed = one_transaction(job, helo, domain, index)
            # Every failure, of any kind, is counted and reported as an error.
            except Exception as exc:
                with lock:
                    errors += 1
                    if len(samples) < ERROR_SAMPLES:
                        samples.append(f"{type(exc).__name__}: {exc}")
                if isinstance(exc, PoolExhausted):
                    return
                continue
            finished = time.monotonic()
            with lock:
                latencies.append(elapsed)
                in_time += finished <= deadline

    cpu = time.process_time()
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(job.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ClientResult(
        started=started,
        finished=time.monotonic(),
        deadline=deadline,
        in_time=in_time,
        latencies=latencies,
        errors=errors,
        error_samples=samples,
        cpu=time.process_time() - cpu,
    )


def _client_worker(conn: Connection) -> None:
    """A client worker process: run each Job received, send back its result."""
    while (job := conn.recv()) is not None:
        try:
            conn.send(run_job(job))
        except Exception:  # reported to the parent, which fails the run
            conn.send(traceback.format_exc())


class ClientPool:
    """Spawned client worker processes; run() gives each one job at once."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        for i in range(processes):
            parent, child = context.Pipe()
            worker = context.Process(
                target=_client_worker, args=(child,), name=f"bench-client-{i}", daemon=True
            )
            worker.start()
            child.close()
            self._workers.append((worker, parent))

    @property
    def size(self) -> int:
        return len(self._workers)

    def run(self, jobs: Sequence[Job]) -> list[ClientResult]:
        if len(jobs) > len(self._workers):
            raise ValueError(f"{len(jobs)} jobs for {len(self._workers)} workers")
        for (_, conn), job in zip(self._workers, jobs, strict=False):
            conn.send(job)
        results = []
        for worker, conn in self._workers[: len(jobs)]:
            try:
                result = conn.recv()
            except EOFError:
                raise RuntimeError(f"client worker {worker.pid} died") from None
            if isinstance(result, str):
                raise RuntimeError(f"client worker {worker.pid} failed:\n{result}")
            results.append(result)
        return results

    def close(self) -> None:
        for worker, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(None)
            worker.join(10)
            if worker.is_alive():
                worker.terminate()  # SIGTERM to that worker's PID
                worker.join(5)
            conn.close()
        self._workers = []


def split(total: int, parts: int) -> list[int]:
    """total as parts near-equal non-negative integers, larger ones first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


# ---------------------------------------------------------------- the targets


class Running(Protocol):
    @property
    def pid(self) -> int: ...

    def stop(self) -> object: ...


@dataclass
class Target:
    name: str
    unix: Running
    unix_spec: str
    inet: Running
    inet_spec: str
    log: DaemonLog


class DaemonLog:
    """The output files of a target's daemons, split at the end of start-up.

    What a daemon says while starting is a note (spfmilter warns that it
    runs as root and that Postfix could not reach a socket in our private
    temporary directory); a problem line it logs while measured fails the run.
    """

    def __init__(self, paths: Sequence[Path], problem: str) -> None:
        self.paths = list(paths)
        self.problem = re.compile(problem)
        self.started = {path: path.stat().st_size if path.exists() else 0 for path in self.paths}

    def lines(self, during_runs: bool) -> list[str]:
        found = []
        for path in self.paths:
            data = path.read_bytes() if path.exists() else b""
            start = self.started[path]
            part = (data[start:] if during_runs else data[:start]).decode(errors="replace")
            found += [line for line in part.splitlines() if self.problem.search(line)]
        return found


# spfmilter's own notion of a problem (tests/support/daemon.py Daemon.unexpected).
SPFMILTER_PROBLEM = r"^(WARNING|ERROR|CRITICAL)\b|Traceback"
# The others log tracebacks and errors to their output, if anything.
OTHER_PROBLEM = r"Traceback|\bError\b|\bERROR\b|Exception"


def spfmilter_config(nameserver: str, options: Sequence[tuple[str, str, str]]) -> str:
    sections: dict[str, dict[str, str]] = {
        # As root without a privilege drop: the daemon says so with a warning.
        "milter": {"user": "root"},
        "dns": {"nameservers": nameserver},
    }
    for section, key, value in options:
        sections.setdefault(section, {})[key] = value
    return "".join(
        f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
        for section, values in sections.items()
    )


def pyspf_milter_config(socket_spec: str, pid_file: Path) -> str:
    """A config for Debian's pyspf-milter that passes the benchmark's mail.

    Both identities are checked (HELO, then MAIL FROM) and only fail
    results would reject; errors neither reject nor defer.  It adds one
    Authentication-Results header (the milter front end always uses that
    type) with our authserv-id.  It runs as root rather than its own
    account so that it can create its socket in our temporary directory.
    debugLevel 1 is the packaged default (a syslog line at connect and
    one per verdict; this namespace has no /dev/log, so they go nowhere).
    """
    settings = {
        "debugLevel": "1",
        "TestOnly": "1",
        "HELO_reject": "Fail",
        "Mail_From_reject": "Fail",
        "PermError_reject": "False",
        "TempError_Defer": "False",
        "skip_addresses": "127.0.0.0/8,::ffff:127.0.0.0/104,::1",
        "Authserv_Id": RECEIVER,
        "Socket": socket_spec,
        "PidFile": str(pid_file),
        "UserID": "root",
        "InternalHosts": "127.0.0.1",
    }
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def pyspf_milter_process(
    workdir: Path, name: str, spec: str, resolver: str, env: Mapping[str, str]
) -> MilterProcess:
    """pyspf-milter in a mount namespace whose /etc/resolv.conf names resolver."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.conf"
    config.write_text(pyspf_milter_config(spec, workdir / f"{name}.pid"))
    resolv_conf = workdir / "resolv.conf"
    resolv_conf.write_text(f"nameserver {resolver}\n")
    # unshare and sh exec in turn, so the PID started is pyspf-milter's own.
    script = "\n".join(
        [
            shlex.join(["mount", "--bind", str(resolv_conf), "/etc/resolv.conf"]),
            "exec " + shlex.join([str(PYSPF_MILTER), str(config)]),
        ]
    )
    argv = ["unshare", "--mount", "sh", "-ec", script]
    return MilterProcess(name, argv, spec, workdir / f"{name}.log", env)


def pyspf_milter_env(workdir: Path, dns_module: str) -> dict[str, str]:
    """The environment pyspf-milter runs in.

    "system": as installed.  "dnspython": with this venv's dnspython on
    PYTHONPATH (alone, through a symlink), so that pyspf, which prefers
    dnspython to py3dns, resolves with it: what a machine with Debian's
    python3-dnspython installed does.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if dns_module == "dnspython":
        import dns

        path = workdir / "pyspf-dnspython"
        path.mkdir(parents=True, exist_ok=True)
        (path / "dns").symlink_to(Path(dns.__file__).parent)
        env["PYTHONPATH"] = str(path)
    return env


def foreign_pyspf_milters() -> list[str]:
    """pyspf-milter processes on this machine (we have started none yet)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if any(arg.endswith(b"pyspf-milter") for arg in argv[:2]):
                found.append(f"{entry.name} {b' '.join(argv).decode(errors='replace')}")
    return found


def pyspf_dns_library(env: Mapping[str, str]) -> str:
    """Which DNS module the system's pyspf (and so pyspf-milter) resolves with.

    pyspf takes dnspython if it can import it and falls back to py3dns, so
    the answer depends on which python3 packages happen to be installed.
    """
    probe = "import sys, spf; print('dnspython' if 'dns.resolver' in sys.modules else 'py3dns')"
    proc = subprocess.run(
        ["/usr/bin/python3", "-c", probe], capture_output=True, text=True, check=False, env=env
    )
    return proc.stdout.strip() or f"unknown ({proc.stderr.strip()[-200:]})"


def package_version(package: str) -> str:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else "not installed"


@contextlib.contextmanager
def started_targets(
    workdir: Path,
    dns: BenchDNS,
    spf_options: Sequence[tuple[str, str, str]],
    pyspf_env: Mapping[str, str],
) -> Iterator[dict[str, Target]]:
    with contextlib.ExitStack() as stack:

        def start(process: MilterProcess | Daemon) -> None:
            stack.callback(process.stop)
            process.start()

        config = spfmilter_config(dns.nameserver, spf_options)
        spf_unix = Daemon(workdir / "spfmilter-unix", config, f"unix:{workdir}/spfmilter.sock")
        spf_inet = Daemon(workdir / "spfmilter-inet", config)  # a free port on 127.0.0.1
        base_unix = BaselineDaemon(f"unix:{workdir}/baseline.sock", workdir / "baseline-unix.log")
        base_inet_spec = f"inet:{free_port()}@127.0.0.1"
        base_inet = BaselineDaemon(base_inet_spec, workdir / "baseline-inet.log")
        pyspf_dir = workdir / "pyspf-milter"
        pyspf_unix = pyspf_milter_process(
            pyspf_dir,
            "pyspf-milter-unix",
            f"unix:{workdir}/pyspf.sock",
            dns.system_address,
            pyspf_env,
        )
        pyspf_inet = pyspf_milter_process(
            pyspf_dir,
            "pyspf-milter-inet",
            f"inet:{free_port()}@127.0.0.1",
            dns.system_address,
            pyspf_env,
        )
        for process in (spf_unix, spf_inet, base_unix, base_inet, pyspf_unix, pyspf_inet):
            start(process)
        targets = {
            SPFMILTER: Target(
                SPFMILTER,
                spf_unix,
                spf_unix.socket,
                spf_inet,
                spf_inet.socket,
                DaemonLog([spf_unix.log_path, spf_inet.log_path], SPFMILTER_PROBLEM),
            ),
            BASELINE: Target(
                BASELINE,
                base_unix,
                base_unix.socket,
                base_inet,
                base_inet_spec,
                DaemonLog([base_unix.log_path, base_inet.log_path], OTHER_PROBLEM),
            ),
            PYSPF: Target(
                PYSPF,
                pyspf_unix,
                pyspf_unix.socket,
                pyspf_inet,
                pyspf_inet.socket,
                DaemonLog([pyspf_unix.log_path, pyspf_inet.log_path], OTHER_PROBLEM),
            ),
        }
        yield targets


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    connections: int
    dns_delay: float  # seconds per DNS answer
    inet: bool
    fresh_names: bool


@dataclass(frozen=True)
class RunStats:
    """One measured run of one workload against one target."""

    workload: str
    target: str
    round: int
    transactions: int
    errors: int
    error_samples: list[str]
    seconds: float
    tx_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_tx: float  # the target's whole process tree
    dns_queries_per_tx: float
    # Where the rest of the machine's CPU went, to tell a target-bound run
    # from a client- or DNS-bound one: client workers (sum, % of one core),
    # this process (the DNS server), the whole machine (% of all cores,
    # neighbours included).
    client_cpu_percent: float
    dns_server_cpu_percent: float
    machine_busy_percent: float


@dataclass(frozen=True)
class Summary:
    """Medians over the rounds of one workload for one target."""

    workload: str
    target: str
    rounds: int
    transactions: int
    errors: int
    tx_per_s: float
    tx_per_s_min: float
    tx_per_s_max: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_tx: float
    dns_queries_per_tx: float
    vs_baseline: float  # tx/s ratio to the baseline's median
    vs_pyspf_milter: float


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


class Bench:
    """The running setup: DNS, targets and client workers."""

    def __init__(self, dns: BenchDNS, targets: Mapping[str, Target], pool: ClientPool) -> None:
        self.dns = dns
        self.targets = targets
        self.pool = pool
        self.next_name = 0  # cold identities are never reused
        self.problems: list[str] = []

    def jobs(
        self, workload: Workload, target: str, duration: float = 0.0, count: int = 0
    ) -> list[Job]:
        """Jobs for one run; for fresh names, also serve the names they may use."""
        t = self.targets[target]
        processes = min(self.pool.size, workload.connections)
        threads = split(workload.connections, processes)
        counts = split(count, processes) if count else [0] * processes
        names: list[tuple[int, int] | None] = [None] * processes
        if workload.fresh_names:
            # The baseline asks no DNS: its names need to be new, not served.
            asks_dns = target != BASELINE
            sizes = [
                counts[i] or self._name_pool(threads[i], duration, workload.dns_delay, asks_dns)
                for i in range(processes)
            ]
            start = self.next_name
            for i, size in enumerate(sizes):
                names[i] = (self.next_name, self.next_name + size)
                self.next_name += size
            if asks_dns:
                self.dns.set_extra_zone(cold_zone(start, self.next_name))
        return [
            Job(
                spec=t.inet_spec if workload.inet else t.unix_spec,
                threads=threads[i],
                expect=EXPECTATIONS[target],
                mta_tcp=workload.inet,
                duration=duration,
                count=counts[i],
                mix=WARM_MIX,
                names=names[i],
            )
            for i in range(processes)
        ]

    @staticmethod
    def _name_pool(threads: int, duration: float, delay: float, asks_dns: bool) -> int:
        """More names than one client process can use in duration.

        No evaluator can finish a transaction in less than two sequential
        DNS round trips (HELO and MAIL FROM records asked in parallel), and
        no Python client process makes more than a few thousand milter
        connections a second; names not asked for cost nothing.
        """
        per_connection = 1 / (2 * delay) if delay > 0 and asks_dns else math.inf
        rate = min(threads * per_connection, 3000.0 if asks_dns else 100_000.0)
        return math.ceil(rate * duration * 1.2) + 100

    def run(
        self,
        workload: Workload,
        target: str,
        round_number: int,
        duration: float = 0.0,
        count: int = 0,
    ) -> RunStats:
        jobs = self.jobs(workload, target, duration, count)
        t = self.targets[target]
        pid = t.inet.pid if workload.inet else t.unix.pid
        self.dns.clear_queries()
        cpu_before, own_before = tree_cpu_seconds(pid), time.process_time()
        busy_before, total_before = machine_busy()
        results = self.pool.run(jobs)
        cpu = tree_cpu_seconds(pid) - cpu_before
        own = time.process_time() - own_before
        busy_after, total_after = machine_busy()
        queries = self.dns.query_count()

        latencies = sorted(x for r in results for x in r.latencies)
        done = len(latencies)
        errors = sum(r.errors for r in results)
        wall = max(r.finished for r in results) - min(r.started for r in results)
        if duration:
            # Each worker's rate over its own window; transactions still in
            # flight at the deadline would count a partial window.
            rate = sum(r.in_time / (r.deadline - r.started) for r in results)
        else:
            rate = done / wall
        stats = RunStats(
            workload=workload.name,
            target=target,
            round=round_number,
            transactions=done,
            errors=errors,
            error_samples=[s for r in results for s in r.error_samples][:ERROR_SAMPLES],
            seconds=wall,
            tx_per_s=rate,
            p50_ms=percentile(latencies, 0.50) * 1000 if latencies else math.nan,
            p99_ms=percentile(latencies, 0.99) * 1000 if latencies else math.nan,
            cpu_ms_per_tx=cpu * 1000 / done if done else math.nan,
            dns_queries_per_tx=queries / done if done else math.nan,
            client_cpu_percent=100 * sum(r.cpu for r in results) / wall,
            dns_server_cpu_percent=100 * own / wall,
            machine_busy_percent=100 * (busy_after - busy_before) / (total_after - total_before),
        )
        if errors:
            self.problems.append(
                f"{workload.name}/{target} round {round_number}: {errors} errors, e.g. "
                + "; ".join(stats.error_samples)
            )
        return stats

    def workload(
        self, workload: Workload, duration: float, warmup: float, rounds: int
    ) -> list[RunStats]:
        """A warm-up per target, then rounds over the targets in turn."""
        self.dns.set_delay(workload.dns_delay)
        runs = []
        for target in TARGETS:
            say(f"{workload.name}: warm-up {target}")
            self.run(workload, target, 0, duration=warmup)
        for round_number in range(1, rounds + 1):
            for target in TARGETS:
                stats = self.run(workload, target, round_number, duration=duration)
                say(
                    f"{workload.name} round {round_number} {target}: {stats.tx_per_s:.0f} tx/s, "
                    f"p50 {stats.p50_ms:.2f} ms, {stats.cpu_ms_per_tx:.2f} ms CPU/tx, "
                    f"{stats.errors} errors"
                )
                runs.append(stats)
        self.dns.set_extra_zone({})
        return runs


def summarise(runs: Sequence[RunStats]) -> list[Summary]:
    by_key: dict[tuple[str, str], list[RunStats]] = {}
    for run in runs:
        by_key.setdefault((run.workload, run.target), []).append(run)

    def median(values: Sequence[RunStats], metric: Callable[[RunStats], float]) -> float:
        return statistics.median(metric(v) for v in values)

    rates = {key: median(rs, lambda r: r.tx_per_s) for key, rs in by_key.items()}
    summaries = []
    for (workload, target), rs in by_key.items():
        rate = rates[workload, target]
        summaries.append(
            Summary(
                workload=workload,
                target=target,
                rounds=len(rs),
                transactions=sum(r.transactions for r in rs),
                errors=sum(r.errors for r in rs),
                tx_per_s=rate,
                tx_per_s_min=min(r.tx_per_s for r in rs),
                tx_per_s_max=max(r.tx_per_s for r in rs),
                p50_ms=median(rs, lambda r: r.p50_ms),
                p99_ms=median(rs, lambda r: r.p99_ms),
                cpu_ms_per_tx=median(rs, lambda r: r.cpu_ms_per_tx),
                dns_queries_per_tx=median(rs, lambda r: r.dns_queries_per_tx),
                vs_baseline=rate / rates.get((workload, BASELINE), math.nan),
                vs_pyspf_milter=rate / rates.get((workload, PYSPF), math.nan),
            )
        )
    return summaries


# ---------------------------------------------------------------- RSS series


@dataclass(frozen=True)
class RssSample:
    target: str
    transactions: int  # done so far
    tx_per_s: float  # over the last chunk
    errors: int  # in the last chunk
    processes: list[Memory]


RSS_WORKLOAD = Workload(
    "rss", "new names every transaction, DNS 0 ms, 8 connections", 8, 0.0, False, True
)


def rss_series(bench: Bench, target: str, total: int, every: int) -> list[RssSample]:
    """total transactions in chunks of every, resident sizes after each chunk."""
    bench.dns.set_delay(0.0)
    pid = bench.targets[target].unix.pid
    samples = [RssSample(target, 0, math.nan, 0, tree_memory(pid))]
    done = 0
    while done < total:
        chunk = min(every, total - done)
        stats = bench.run(RSS_WORKLOAD, target, 0, count=chunk)
        done += chunk
        memory = tree_memory(pid)
        samples.append(RssSample(target, done, stats.tx_per_s, stats.errors, memory))
        rss = ", ".join(f"{m.rss_mib:.1f}" for m in memory)
        say(f"rss {target}: {done} transactions, {stats.tx_per_s:.0f} tx/s, RSS MiB {rss}")
    bench.dns.set_extra_zone({})
    return samples


# ---------------------------------------------------------------- DNS clients


@dataclass(frozen=True)
class DnsClientCost:
    """Medians over the rounds; a client whose module is missing has queries 0."""

    client: str
    queries: int  # over all rounds
    cpu_us_per_query: float  # this process (client) only: the server is another process
    cpu_us_min: float  # the rounds' lowest and highest
    cpu_us_max: float
    wall_us_per_query: float


DNS_CLIENT_ROUNDS = 3
DNS_CLIENT_WARMUP = 50


# Each factory takes the server's port and the names that will be asked, and
# returns a function that asks one name for its TXT records.
QueryFactory = Callable[[int, Sequence[str]], Callable[[str], object]]


def _dnspython_resolver(port: int, names: Sequence[str]) -> Callable[[str], object]:
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    return lambda name: resolver.resolve(name, "TXT", lifetime=2.0)


def _dnspython_message(port: int, names: Sequence[str]) -> Callable[[str], object]:
    import dns.message
    import dns.query
    import dns.rdataclass
    import dns.rdatatype

    def query(name: str) -> object:
        response = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1", 2.0, port)
        return response.find_rrset(
            response.answer, response.question[0].name, dns.rdataclass.IN, dns.rdatatype.TXT
        )

    return query


def _pycares(port: int, names: Sequence[str]) -> Callable[[str], object]:
    pycares = importlib.import_module("pycares")
    channel = pycares.Channel(
        servers=["127.0.0.1"], udp_port=port, tcp_port=port, timeout=2.0, tries=1
    )

    def query(name: str) -> object:
        results: list[tuple[object, object]] = []
        channel.query(
            name,
            pycares.QUERY_TYPE_TXT,
            callback=lambda result, error: results.append((result, error)),
        )
        channel.wait(2.0)
        if not results or results[0][1] or results[0][0] is None:
            raise RuntimeError(f"pycares: no answer for {name}: {results}")
        return results[0][0]

    return query


def _pycares_select(port: int, names: Sequence[str]) -> Callable[[str], object]:
    """c-ares driven from this thread (sock_state_cb and select), no event thread."""
    pycares = importlib.import_module("pycares")
    sockets: dict[int, tuple[bool, bool]] = {}

    def state(fd: int, readable: bool, writable: bool) -> None:
        if readable or writable:
            sockets[fd] = (readable, writable)
        else:
            sockets.pop(fd, None)

    channel = pycares.Channel(
        servers=["127.0.0.1"],
        udp_port=port,
        tcp_port=port,
        timeout=2.0,
        tries=1,
        sock_state_cb=state,
    )
    bad = pycares.ARES_SOCKET_BAD

    def query(name: str) -> object:
        results: list[tuple[object, object]] = []
        channel.query(
            name,
            pycares.QUERY_TYPE_TXT,
            callback=lambda result, error: results.append((result, error)),
        )
        while not results:
            readers = [fd for fd, (r, _) in sockets.items() if r]
            writers = [fd for fd, (_, w) in sockets.items() if w]
            readable, writable, _ = select.select(readers, writers, [], 2.0)
            if not (readable or writable):
                raise RuntimeError(f"pycares: no answer for {name}")
            for fd in readable:
                channel.process_fd(fd, bad)
            for fd in writable:
                channel.process_fd(bad, fd)
        if results[0][1] or results[0][0] is None:
            raise RuntimeError(f"pycares: no answer for {name}: {results}")
        return results[0][0]

    return query


def _py3dns(port: int, names: Sequence[str]) -> Callable[[str], object]:
    dns_module = importlib.import_module("DNS")

    def query(name: str) -> object:
        request = dns_module.DnsRequest(
            name, qtype="TXT", server=["127.0.0.1"], port=port, timeout=2, protocol="udp"
        )
        answers = request.req().answers
        if not answers:
            raise RuntimeError(f"py3dns: no answer for {name}")
        return answers

    return query


def _spfmilter_exchange(port: int, names: Sequence[str]) -> Callable[[str], object]:
    """spfmilter's own codec: the query built, sent, the reply checked and parsed."""
    from spfmilter import dnswire

    def query(name: str) -> object:
        return dnswire.exchange(
            ("127.0.0.1", port), dnswire.encode_name(name), dnswire.QTYPES["TXT"],
            time.monotonic() + 2.0,
        )  # fmt: skip

    return query


def _spfmilter_resolver(port: int, names: Sequence[str]) -> Callable[[str], object]:
    """spfmilter's resolver as pyspf calls it, without its cache: the codec,
    the answer kept to the chain, the metrics."""
    from spfmilter.dns import Resolver
    from spfmilter.metrics import Metrics
    from spfmilter.schema import DnsConfig
    from spfmilter.values import Nameserver

    config = DnsConfig(nameservers=(Nameserver("127.0.0.1", port),), timeout=2.0, cache_size=0)
    resolver = Resolver(config, Metrics())

    def query(name: str) -> object:
        return resolver.lookup(name, "TXT")

    return query


def _raw_udp(port: int, names: Sequence[str]) -> Callable[[str], object]:
    """The floor: a query packet made in advance, a plain socket, no parsing."""
    import dns.message

    wires = {name: dns.message.make_query(name, "TXT").to_wire() for name in names}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(2.0)

    def query(name: str) -> object:
        sock.send(wires[name])
        return sock.recv(4096)

    return query


# (label, factory, module that must be installed)
DNS_CLIENTS: tuple[tuple[str, QueryFactory, str], ...] = (
    ("dnspython Resolver.resolve", _dnspython_resolver, ""),
    ("dnspython make_query + query.udp", _dnspython_message, ""),
    ("pycares, event thread + Channel.wait", _pycares, "pycares"),
    ("pycares, sock_state_cb + select in the caller", _pycares_select, "pycares"),
    ("py3dns DnsRequest.req", _py3dns, "DNS"),
    ("spfmilter.dnswire.exchange (own codec)", _spfmilter_exchange, ""),
    ("spfmilter.dns.Resolver.lookup, cache off", _spfmilter_resolver, ""),
    ("raw UDP socket, prebuilt query, no parsing", _raw_udp, ""),
)


def measure_dns_clients(queries: int, workdir: Path) -> list[DnsClientCost]:
    """CPU per uncached TXT query of each DNS client, single-threaded.

    The server runs in a process of its own, so this process's CPU time is
    the client's alone (c-ares's event thread included).  Every query asks
    a name not asked before.  The clients take turns in DNS_CLIENT_ROUNDS
    rounds of `queries` each, after DNS_CLIENT_WARMUP unmeasured ones.
    """
    available = [
        (label, make)
        for label, make, module in DNS_CLIENTS
        if not module or importlib.util.find_spec(module) is not None
    ]
    per_client = DNS_CLIENT_WARMUP + DNS_CLIENT_ROUNDS * queries
    names = {
        label: [f"q{i}.c{index}.dnsbench.example" for i in range(per_client)]
        for index, (label, _) in enumerate(available)
    }
    zone_path = workdir / "dnsbench.yaml"
    with zone_path.open("w") as zone:
        for batch in names.values():
            zone.writelines(f'{n}:\n  - TXT: "v=spf1 ip4:{CLIENT_NET} -all"\n' for n in batch)
    port = free_port()
    log_path = workdir / "dnsbench.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.support.dnsserver", str(zone_path), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_for(lambda: "listening on" in log_path.read_text(), 120, "the DNS server")
        clients = {label: make(port, names[label]) for label, make in available}
        for label, query in clients.items():
            for name in names[label][:DNS_CLIENT_WARMUP]:
                query(name)
        samples: dict[str, list[tuple[float, float]]] = {label: [] for label in clients}
        for round_number in range(DNS_CLIENT_ROUNDS):
            start = DNS_CLIENT_WARMUP + round_number * queries
            for label, query in clients.items():
                samples[label].append(time_queries(query, names[label][start : start + queries]))
        results = []
        for label, *_ in DNS_CLIENTS:
            if label not in samples:
                results.append(DnsClientCost(label, 0, math.nan, math.nan, math.nan, math.nan))
                continue
            cpu = [c for c, _ in samples[label]]
            wall = [w for _, w in samples[label]]
            results.append(
                DnsClientCost(
                    label,
                    queries * DNS_CLIENT_ROUNDS,
                    statistics.median(cpu),
                    min(cpu),
                    max(cpu),
                    statistics.median(wall),
                )
            )
            say(f"dns client {label}: {results[-1].cpu_us_per_query:.0f} µs CPU per query")
        return results
    finally:
        server.send_signal(signal.SIGINT)  # its CLI ends on KeyboardInterrupt
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def time_queries(query: Callable[[str], object], names: Sequence[str]) -> tuple[float, float]:
    """(µs CPU, µs wall) per query over names."""
    cpu, wall = time.process_time(), time.perf_counter()
    for name in names:
        query(name)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu * 1e6 / len(names), wall * 1e6 / len(names)


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class ProcessMemory:
    target: str
    instance: str  # "unix" (warm, cold) or "inet"
    pid: int
    rss_mib: float
    peak_mib: float


@dataclass(frozen=True)
class Goal:
    goal: str
    value: str
    met: bool


@dataclass
class Report:
    duration: float
    warmup: float
    rounds: int
    client_processes: int
    python: str
    cpus: int
    pyspf_milter_version: str
    pyspf_milter_dns: str
    spfmilter_options: list[str]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    workloads: list[Workload] = field(default_factory=list)
    runs: list[RunStats] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)
    memory: list[ProcessMemory] = field(default_factory=list)
    rss_series: list[RssSample] = field(default_factory=list)
    dns_clients: list[DnsClientCost] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.problems)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def goals(report: Report) -> list[Goal]:
    """The performance issue's targets, judged from this run's medians."""
    s = {(x.workload, x.target): x for x in report.summaries}
    found: list[Goal] = []
    warm, cold, inet = (s.get((w, SPFMILTER)) for w in ("warm", "cold", "inet"))
    if warm is not None:
        found += [
            Goal(
                ">= 0.75x bare pymilter tx/s (warm)",
                f"{warm.vs_baseline:.2f}x",
                warm.vs_baseline >= 0.75,
            ),
            Goal(
                ">= 4x pyspf-milter tx/s (warm)",
                f"{warm.vs_pyspf_milter:.2f}x",
                warm.vs_pyspf_milter >= 4,
            ),
            Goal(
                "<= 0.35 ms CPU/tx (warm)",
                f"{warm.cpu_ms_per_tx:.2f} ms",
                warm.cpu_ms_per_tx <= 0.35,
            ),
        ]
    if cold is not None:
        found.append(
            Goal(
                ">= 1.5x pyspf-milter tx/s while checking HELO (cold)",
                f"{cold.vs_pyspf_milter:.2f}x, {cold.dns_queries_per_tx:.1f} queries/tx",
                cold.vs_pyspf_milter >= 1.5 and cold.dns_queries_per_tx >= 4,
            )
        )
    if inet is not None:
        found.append(
            Goal("p50 <= 3 ms (inet, 1 connection)", f"{inet.p50_ms:.1f} ms", inet.p50_ms <= 3)
        )
    spf_memory = [m for m in report.memory if m.target == SPFMILTER]
    if spf_memory:
        largest = max(m.rss_mib for m in spf_memory)
        found.append(Goal("RSS <= 64 MiB per process", f"{largest:.1f} MiB", largest <= 64))
    series = [x for x in report.rss_series if x.target == SPFMILTER and x.transactions]
    if len(series) >= 2:
        # The cache fills first; flat means no growth over the second half.
        middle = series[(len(series) - 1) // 2]
        mid = max(m.rss_mib for m in middle.processes)
        last = max(m.rss_mib for m in series[-1].processes)
        peak = max(m.rss_mib for x in series for m in x.processes)
        found.append(
            Goal(
                f"RSS flat over {series[-1].transactions:,} transactions "
                f"(<= {RSS_FLAT_MIB} MiB growth after {middle.transactions:,})",
                f"{mid:.1f} -> {last:.1f} MiB (peak {peak:.1f})",
                last - mid <= RSS_FLAT_MIB and peak <= 64,
            )
        )
    return found


def workloads_from(args: argparse.Namespace) -> list[Workload]:
    every = [
        Workload(
            "warm",
            f"{len(WARM_MIX)}-sender mix, DNS 0 ms, {args.warm_connections} connections",
            args.warm_connections,
            0.0,
            False,
            False,
        ),
        Workload(
            "cold",
            "new HELO name and sender domain every transaction (2 TXT + 2 A), "
            f"DNS {args.cold_delay_ms:g} ms, {args.cold_connections} connections",
            args.cold_connections,
            args.cold_delay_ms / 1000,
            False,
            True,
        ),
        Workload(
            "inet",
            f"inet socket, 1 connection, client with delayed ACKs, {len(WARM_MIX)}-sender mix",
            1,
            0.0,
            True,
            False,
        ),
    ]
    return [w for w in every if w.name in args.workloads]


def run(args: argparse.Namespace) -> Report:
    options = [parse_option(o) for o in args.spfmilter_option]
    with tempfile.TemporaryDirectory(prefix="bench_compare.") as tmp:
        workdir = Path(tmp)
        pyspf_env = pyspf_milter_env(workdir, args.pyspf_milter_dns)
        report = Report(
            duration=args.duration,
            warmup=args.warmup,
            rounds=ROUNDS,
            client_processes=args.client_processes,
            python=platform.python_version(),
            cpus=os.cpu_count() or 0,
            pyspf_milter_version=package_version("pyspf-milter"),
            pyspf_milter_dns=pyspf_dns_library(pyspf_env),
            spfmilter_options=[f"[{s}] {k} = {v}" for s, k, v in options],
            load_before=os.getloadavg(),
        )
        if args.dns_clients or args.only_dns_clients:
            report.dns_clients = measure_dns_clients(args.dns_client_queries, workdir)
        if not args.only_dns_clients:
            preflight(args.system_dns_address)
            report.workloads = workloads_from(args)
            measure_targets(report, args, workdir, options, pyspf_env)
    report.summaries = summarise(report.runs)
    report.goals = goals(report)
    report.load_after = os.getloadavg()
    return report


def measure_targets(
    report: Report,
    args: argparse.Namespace,
    workdir: Path,
    options: Sequence[tuple[str, str, str]],
    pyspf_env: Mapping[str, str],
) -> None:
    """Start DNS, the targets and the clients; run the workloads into report."""
    dns = BenchDNS(warm_zone(), args.dns_port, args.system_dns_address)
    dns.start()
    pool = ClientPool(args.client_processes)
    try:
        say("starting daemons")
        with started_targets(workdir, dns, options, pyspf_env) as targets:
            bench = Bench(dns, targets, pool)
            for workload in report.workloads:
                report.runs += bench.workload(workload, args.duration, args.warmup, ROUNDS)
            for target in args.rss_targets if args.rss_series else ():
                report.rss_series += rss_series(bench, target, args.rss_series, args.rss_every)
            for t in targets.values():
                for instance, process in (("unix", t.unix), ("inet", t.inet)):
                    report.memory += [
                        ProcessMemory(t.name, instance, m.pid, m.rss_mib, m.peak_mib)
                        for m in tree_memory(process.pid)
                    ]
                report.problems += [
                    f"{t.name} logged: {line}" for line in t.log.lines(during_runs=True)
                ]
                report.notes += [
                    f"{t.name} said at start: {line}" for line in t.log.lines(during_runs=False)
                ]
            report.problems[:0] = bench.problems
    finally:
        pool.close()
        dns.stop()


def preflight(system_dns_address: str) -> None:
    if os.geteuid() != 0:
        raise SystemExit("needs root: pyspf-milter runs in a mount namespace, DNS on port 53")
    if not PYSPF_MILTER.exists():
        raise SystemExit(f"{PYSPF_MILTER} missing: apt-get install pyspf-milter")
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} (util-linux) is needed")
    others = foreign_pyspf_milters()
    if others:
        # Not ours to stop: the package's service (systemctl stop pyspf-milter,
        # or invoke-rc.d pyspf-milter stop) would compete for the CPU.
        raise SystemExit("a pyspf-milter is already running:\n" + "\n".join(others))
    if not ipaddress.IPv4Address(system_dns_address).is_loopback:
        raise SystemExit(f"{system_dns_address} is not a loopback address")
    if address_in_use(system_dns_address):
        raise SystemExit(f"{system_dns_address} is in use; pick another with --system-dns-address")


def parse_option(text: str) -> tuple[str, str, str]:
    name, equals, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not (equals and dot and section and key):
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    return section, key.strip(), value.strip()


# ---------------------------------------------------------------- output


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def markdown(report: Report) -> str:
    load = "/".join(f"{x:.2f}" for x in report.load_before)
    load_after = "/".join(f"{x:.2f}" for x in report.load_after)
    lines = [
        f"Python {report.python}, {report.cpus} CPUs, pyspf-milter {report.pyspf_milter_version} "
        f"(DNS through {report.pyspf_milter_dns}); "
        f"{report.duration:g} s per run after {report.warmup:g} s warm-up, {report.rounds} "
        f"interleaved rounds, {report.client_processes} client processes; "
        f"load average {load} before, {load_after} after.",
    ]
    if report.spfmilter_options:
        lines.append("spfmilter options: " + "; ".join(report.spfmilter_options) + ".")
    by_key = {(s.workload, s.target): s for s in report.summaries}
    if report.summaries:
        lines += [
            "",
            "| workload | " + " | ".join(TARGET_TITLES[t] for t in TARGETS) + " |",
            "|---|" + "---|" * len(TARGETS),
        ]
        for workload in report.workloads:
            cells = []
            for target in TARGETS:
                s = by_key.get((workload.name, target))
                cells.append(
                    "-"
                    if s is None
                    else f"{s.tx_per_s:,.0f} tx/s, p50 {s.p50_ms:.2f} ms, "
                    f"{s.cpu_ms_per_tx:.2f} ms CPU/tx" + (" **FAILED**" if s.errors else "")
                )
            lines.append(f"| {workload.name}: {workload.title} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Medians of the rounds; the range is the rounds' lowest and highest tx/s.  "
            "CPU counts the target's whole process tree; DNS queries are those the "
            "benchmark's server answered.",
            "",
            "| workload | target | tx/s (range) | p50 ms | p99 ms | CPU ms/tx | DNS q/tx "
            "| vs baseline | vs pyspf-milter | transactions | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for workload in report.workloads:
            for target in TARGETS:
                s = by_key.get((workload.name, target))
                if s is None:
                    continue
                lines.append(
                    f"| {workload.name} | {target} | {s.tx_per_s:,.0f} "
                    f"({s.tx_per_s_min:,.0f}-{s.tx_per_s_max:,.0f}) | {s.p50_ms:.2f} "
                    f"| {s.p99_ms:.2f} | {s.cpu_ms_per_tx:.2f} | {s.dns_queries_per_tx:.1f} "
                    f"| {_ratio(s.vs_baseline)} | {_ratio(s.vs_pyspf_milter)} "
                    f"| {s.transactions:,} | {s.errors} |"
                )
        lines += [
            "",
            "Where the CPU went, per run (client workers and this process's DNS server in "
            "% of one core, the whole machine in % of all cores, neighbours included):",
            "",
            "| workload | round | target | tx/s | client CPU % | DNS server CPU % "
            "| machine busy % |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in report.runs:
            lines.append(
                f"| {r.workload} | {r.round} | {r.target} | {r.tx_per_s:,.0f} "
                f"| {r.client_cpu_percent:.0f} | {r.dns_server_cpu_percent:.0f} "
                f"| {r.machine_busy_percent:.0f} |"
            )
    if report.goals:
        lines += ["", "| goal (spfmilter) | this run | met |", "|---|---:|---|"]
        for g in report.goals:
            lines.append(f"| {g.goal} | {g.value} | {'yes' if g.met else 'NO'} |")
    if report.memory:
        lines += [
            "",
            "Resident size after the runs, per process (the PID started and its descendants):",
            "",
            "| target | instance | pid | RSS MiB | peak RSS MiB |",
            "|---|---|---:|---:|---:|",
        ]
        for m in report.memory:
            lines.append(
                f"| {m.target} | {m.instance} | {m.pid} | {m.rss_mib:.1f} | {m.peak_mib:.1f} |"
            )
    if report.rss_series:
        lines += [
            "",
            f"RSS series ({RSS_WORKLOAD.title}), MiB per process:",
            "",
            "| target | transactions | tx/s (last chunk) | errors | RSS MiB |",
            "|---|---:|---:|---:|---|",
        ]
        for x in report.rss_series:
            rss = ", ".join(f"{m.rss_mib:.1f}" for m in x.processes)
            rate = "-" if math.isnan(x.tx_per_s) else f"{x.tx_per_s:,.0f}"
            lines.append(f"| {x.target} | {x.transactions:,} | {rate} | {x.errors} | {rss} |")
    if report.dns_clients:
        lines += [
            "",
            f"DNS client cost per uncached TXT query: one thread, loopback server in "
            f"another process, medians of {DNS_CLIENT_ROUNDS} interleaved rounds:",
            "",
            "| client | queries | µs CPU/query (range) | µs wall/query |",
            "|---|---:|---:|---:|",
        ]
        for c in report.dns_clients:
            if not c.queries:
                lines.append(f"| {c.client} | not installed | - | - |")
                continue
            lines.append(
                f"| {c.client} | {c.queries} | {c.cpu_us_per_query:.0f} "
                f"({c.cpu_us_min:.0f}-{c.cpu_us_max:.0f}) | {c.wall_us_per_query:.0f} |"
            )
    if report.notes:
        lines += ["", "Notes:", *(f"- {n}" for n in report.notes)]
    if report.problems:
        lines += ["", "**FAILED**:", *(f"- {p}" for p in report.problems)]
    return "\n".join(lines)


def to_json(report: Report) -> str:
    data = dataclasses.asdict(report)
    data["failed"] = report.failed

    def clean(value: object) -> object:
        # JSON has no NaN or infinity.
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), indent=2, ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_compare",
        description="spfmilter against a bare pymilter baseline and Debian's pyspf-milter: "
        "warm, cold and inet workloads in interleaved rounds.",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per target")
    parser.add_argument(
        "--full", action="store_true", help="--duration 15 --warmup 2 (about 8 minutes)"
    )
    parser.add_argument(
        "--workloads",
        type=lambda s: [w.strip() for w in s.split(",") if w.strip()],
        default=["warm", "cold", "inet"],
        help="comma-separated subset of warm,cold,inet",
    )
    parser.add_argument("--warm-connections", type=int, default=8)
    parser.add_argument("--cold-connections", type=int, default=64)
    parser.add_argument("--cold-delay-ms", type=float, default=20.0)
    parser.add_argument(
        "--client-processes", type=int, default=max(2, os.cpu_count() or 2), help="client workers"
    )
    parser.add_argument(
        "--pyspf-milter-dns",
        choices=("system", "dnspython"),
        default="system",
        help="system: pyspf-milter as installed (pyspf takes dnspython if the system has it, "
        "else py3dns); dnspython: with this venv's dnspython on its PYTHONPATH",
    )
    parser.add_argument("--dns-port", type=int, default=0, help="spfmilter's DNS port (0: free)")
    parser.add_argument("--system-dns-address", default=SYSTEM_DNS_ADDRESS)
    parser.add_argument(
        "--spfmilter-option",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra spfmilter config, e.g. milter.workers=2 (repeatable)",
    )
    parser.add_argument(
        "--rss-series",
        type=int,
        default=0,
        metavar="N",
        help="after the workloads, N more transactions per --rss-targets target "
        "with new names each, sampling RSS (e.g. 200000; long)",
    )
    parser.add_argument("--rss-every", type=int, default=10000, metavar="N")
    parser.add_argument(
        "--rss-targets",
        type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
        default=[SPFMILTER],
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    parser.add_argument(
        "--dns-clients", action="store_true", help="also measure DNS client libraries' CPU/query"
    )
    parser.add_argument(
        "--only-dns-clients", action="store_true", help="only the DNS client measurement"
    )
    parser.add_argument("--dns-client-queries", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--json-file", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if args.full:
        args.duration, args.warmup = 15.0, 2.0
    unknown = set(args.workloads) - {"warm", "cold", "inet"} | set(args.rss_targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown workloads or targets: {', '.join(sorted(unknown))}")
    if args.duration <= 0 or args.warmup <= 0 or args.client_processes < 1:
        parser.error("--duration, --warmup and --client-processes must be positive")
    try:
        for option in args.spfmilter_option:
            parse_option(option)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    report = run(args)
    if args.json_file is not None:
        args.json_file.write_text(to_json(report) + "\n")
    print(to_json(report) if args.json else markdown(report))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
