"""The CPU cost per uncached DNS query of DNS client libraries.

This module owns the comparison that chose spfmilter's own DNS client: one
thread asks a loopback DNS server (a process of its own, so this process's
CPU time is the client's alone) for names never asked before, and each
client's CPU and wall time per TXT query is measured in interleaved rounds
after a warm-up.  The clients: dnspython (Resolver and bare message), c-ares
through pycares (its event thread, or driven from the caller), py3dns,
spfmilter's codec and its resolver without the cache, and a raw UDP socket
with a prebuilt query (the floor).  A client whose module is not installed
is listed as such.  Run from the repository root::

    .venv/bin/python -m benchmarks.bench_dns_clients              # ~1 minute
    .venv/bin/python -m benchmarks.bench_dns_clients --queries 5000 --json

Everything listens on 127.0.0.1; the DNS server started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.report import json_text, load_average, say
from benchmarks.workloads import CLIENT_NET
from testkit.daemon import REPO, free_port, wait_for


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
    from spfmilter.evaluation import dnswire

    def query(name: str) -> object:
        return dnswire.exchange(
            ("127.0.0.1", port), dnswire.encode_name(name), dnswire.QTYPES["TXT"],
            time.monotonic() + 2.0,
        )  # fmt: skip

    return query


def _spfmilter_resolver(port: int, names: Sequence[str]) -> Callable[[str], object]:
    """spfmilter's resolver as pyspf calls it, without its cache: the codec,
    the answer kept to the chain, the metrics."""
    from spfmilter.config.schema import DnsConfig
    from spfmilter.config.values import Nameserver
    from spfmilter.core.metrics import Metrics
    from spfmilter.evaluation.resolver import Resolver

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
            [sys.executable, "-m", "testkit.dnsserver", str(zone_path), "--port", str(port)],
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


@dataclass
class Report:
    queries: int  # per client per round
    python: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    clients: list[DnsClientCost] = field(default_factory=list)


def markdown(report: Report) -> str:
    lines = [
        f"DNS client cost per uncached TXT query: one thread, loopback server in "
        f"another process, medians of {DNS_CLIENT_ROUNDS} interleaved rounds of "
        f"{report.queries} queries; Python {report.python}, "
        f"{load_average(report.load_before, report.load_after)}.",
        "",
        "| client | queries | µs CPU/query (range) | µs wall/query |",
        "|---|---:|---:|---:|",
    ]
    for c in report.clients:
        if not c.queries:
            lines.append(f"| {c.client} | not installed | - | - |")
            continue
        lines.append(
            f"| {c.client} | {c.queries} | {c.cpu_us_per_query:.0f} "
            f"({c.cpu_us_min:.0f}-{c.cpu_us_max:.0f}) | {c.wall_us_per_query:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_dns_clients",
        description="CPU per uncached TXT query of DNS client libraries, one thread.",
    )
    parser.add_argument("--queries", type=int, default=2000, help="per client per round")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.queries < 1:
        parser.error("--queries must be positive")
    report = Report(args.queries, platform.python_version(), os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench_dns_clients.") as tmp:
        report.clients = measure_dns_clients(args.queries, Path(tmp))
    report.load_after = os.getloadavg()
    print(json_text(asdict(report)) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
