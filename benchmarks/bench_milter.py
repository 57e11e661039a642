"""What spfmilter adds to each SMTP transaction, end to end.

Every measured unit is one milter connection as an MTA makes it for one SMTP
session: negotiate, connect (with macro j), HELO, MAIL FROM, one RCPT, DATA,
one header, end of headers, body, end of message, QUIT.  It is driven over
the real milter protocol against real
daemons, and compared with a baseline measured in the same run: a minimal
pymilter daemon (benchmarks/baseline.py) that does the same protocol work as
spfmilter (the same negotiated steps, one header inserted at the top at end
of message) but no SPF.  The ratio to that baseline is the cost of spfmilter
itself; pymilter, libmilter and the protocol are in both.

Scenarios, each N connections after a warm-up:

- baseline: the minimal pymilter daemon;
- spfmilter, warm cache: default config, the same sender every time, so all
  DNS answers after the first come from spfmilter's cache;
- spfmilter, cold cache: ``[dns] cache_size = 0``, every transaction queries
  the loopback DNS server (HELO and MAIL FROM);
- spfmilter, include chain, cold: a sender whose record includes another;
- spfmilter, warm cache, rescue on: ``[rescue]`` on (DKIM and an ARC
  sealer) with the same passing mail: what turning the rescue on costs mail
  that never waits for it (the MTA then sends headers and a first body
  piece, which spfmilter answers with skip);
- the baseline and the warm case again over TCP on 127.0.0.1;
- throughput with 8 client threads at once, spfmilter (warm) and baseline.

Besides wall-clock latency it reports each daemon's own CPU time per
connection (from /proc, so the DNS server's share is not in it) and each
daemon's resident size at start and idle after the runs.  The machines this
runs on are shared and noisy, so the output is medians, percentiles and
ratios from one run; absolute times mean little across runs.

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_milter [--n 300] [--warmup 20] [--json]

It prints a markdown table (or JSON with ``--json``); progress goes to stderr.
Everything listens on unix sockets in a temporary directory or on 127.0.0.1,
and every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.baseline import BASELINE_HEADER
from benchmarks.milterproc import BaselineDaemon, percentile, tree_cpu_seconds, tree_memory
from benchmarks.report import load_average
from benchmarks.targets import spfmilter_config
from testkit.daemon import Daemon, free_port
from testkit.dnsserver import ZONES, DNSTestServer, load_zone_file
from testkit.milterclient import MilterClient

# The client posed in every transaction: an address that spf-pass.example.org
# and helo-pass.example.org (testkit/zones/core.yaml) authorise, so both
# identities pass and the message gets its header.
CLIENT_IP = "198.51.100.7"
HELO = "helo-pass.example.org"
SENDER = "alice@spf-pass.example.org"
INCLUDE_SENDER = "x@spf-include.example.org"  # include:spf-pass.example.org
RCPT = "<user@example.net>"
# Sent as macro j, as an MTA does; without it spfmilter would fall back to
# socket.getfqdn(), which is not what happens in production.
RECEIVER = "mx.bench.example"

THREADS = 8  # client threads in the throughput runs
THROUGHPUT_REPEATS = 3  # throughput runs per target, alternating; the median is reported
# Scenarios take turns in blocks of this many connections, so that a burst of
# load from a neighbour on the shared machine hits all of them alike instead
# of whichever scenario happened to run at that moment.
BLOCK = 25
# A reply slower than this means something is broken, not slow.
CLIENT_TIMEOUT = 10.0
# Long enough that no cached answer expires during the run.
DNS_TTL = 3600
# Short DNS times: a DNS server that stops answering fails the run quickly.
SHORT_DNS = (("dns", "timeout", "0.5"), ("dns", "lookup_time", "2"))
# The rescue of forwarded mail, on: passing mail never waits for it.
RESCUE_ON = (("rescue", "dkim", "yes"), ("rescue", "arc_trusted_sealers", "lists.example.org"))
RESCUE_SCENARIO = "spfmilter, warm cache, rescue on"

# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Target:
    """One running daemon to send connections to."""

    name: str
    socket: str
    pid: int
    header: str  # the header its end-of-message must insert
    verdict: str  # what that header's value must start with


BASELINE = "baseline (pymilter, no SPF)"


@dataclass(frozen=True)
class Scenario:
    name: str
    transport: str  # "unix" or "tcp"; medians are divided by BASELINE's on the same one
    target: Target
    sender: str

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.transport


@dataclass(frozen=True)
class Latency:
    scenario: str
    transport: str
    connections: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    vs_baseline: float  # median / the baseline's median on the same transport
    dns_queries_per_connection: float
    # The daemon's own CPU time per connection, its worker processes
    # included (tree_cpu_seconds): less disturbed by neighbours than wall
    # time, and without the DNS server's share, which runs in this process.
    daemon_cpu_ms: float


@dataclass(frozen=True)
class Throughput:
    """Medians of THROUGHPUT_REPEATS runs of THREADS concurrent clients."""

    target: str
    threads: int
    connections: int  # per run
    per_second: float
    vs_baseline: float
    # The daemon's own CPU time (all its threads, from /proc), per connection
    # and as a share of one core over the run's wall time.  CPU time is far
    # less disturbed by neighbours than wall time; a share near 100 % says
    # the GIL, not the number of cores, is the limit.
    daemon_cpu_ms_per_connection: float
    daemon_cpu_percent: float
    # The same share for the client threads, which are Python too: near
    # 100 % they, not the daemon, set the pace.
    client_cpu_percent: float


@dataclass(frozen=True)
class Memory:
    daemon: str
    start_rss_mib: float  # right after start
    idle_rss_mib: float  # after all the runs
    peak_rss_mib: float


@dataclass(frozen=True)
class Report:
    connections: int
    warmup: int
    python: str
    cpus: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    latency: list[Latency]
    throughput: list[Throughput]
    memory: list[Memory]
    # Passing mail with the rescue on, over the same with it off (warm cache,
    # unix socket): the ratio of their medians, and of their daemon CPU.
    rescue_on_vs_off: float
    rescue_on_vs_off_cpu: float


def connection(target: Target, sender: str) -> float:
    """One SMTP session's worth of milter traffic; returns its seconds.

    The reply is checked, so that a broken daemon fails the run instead of
    measuring how fast it says no.
    """
    start = time.perf_counter()
    with MilterClient(target.socket, timeout=CLIENT_TIMEOUT) as client:
        client.negotiate()
        client.macros("C", {"j": RECEIVER})
        client.connect("client.example", CLIENT_IP)
        client.helo(HELO)
        result = client.transaction(f"<{sender}>", [RCPT])
    elapsed = time.perf_counter() - start
    inserted = result.eom.modifications if result.eom else []
    if result.final.kind != "continue" or not any(
        m.name == target.header and (m.value or "").startswith(target.verdict) for m in inserted
    ):
        raise RuntimeError(f"{target.name}: unexpected answer for {sender}: {result}")
    return elapsed


def negotiated(target: Target) -> tuple[int, int]:
    """The (actions, protocol) the daemon agrees to when offered everything."""
    with MilterClient(target.socket, timeout=CLIENT_TIMEOUT) as client:
        _, actions, protocol = client.negotiate()
    return actions, protocol


def largest(pid: int) -> tuple[float, float]:
    """RSS and peak RSS in MiB of the largest process in pid's tree (a worker
    of spfmilter, or the daemon itself)."""
    sizes = tree_memory(pid)
    return max(m.rss_mib for m in sizes), max(m.peak_mib for m in sizes)


def measure_latency(
    scenarios: Sequence[Scenario], n: int, warmup: int, queries: Callable[[], int]
) -> list[Latency]:
    """N connections per scenario, the scenarios taking turns in blocks."""
    for scenario in scenarios:
        for _ in range(warmup):
            connection(scenario.target, scenario.sender)
    samples: dict[tuple[str, str], list[float]] = {s.key: [] for s in scenarios}
    dns: dict[tuple[str, str], int] = dict.fromkeys(samples, 0)
    cpu: dict[tuple[str, str], float] = dict.fromkeys(samples, 0.0)
    for start in range(0, n, BLOCK):
        for scenario in scenarios:
            queries_before, cpu_before = queries(), tree_cpu_seconds(scenario.target.pid)
            for _ in range(min(BLOCK, n - start)):
                samples[scenario.key].append(connection(scenario.target, scenario.sender))
            dns[scenario.key] += queries() - queries_before
            cpu[scenario.key] += tree_cpu_seconds(scenario.target.pid) - cpu_before
        print(f"  {min(start + BLOCK, n)}/{n} connections per scenario", file=sys.stderr)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    results = []
    for scenario in scenarios:
        values = sorted(samples[scenario.key])
        results.append(
            Latency(
                scenario=scenario.name,
                transport=scenario.transport,
                connections=len(values),
                median_ms=medians[scenario.key] * 1000,
                p90_ms=percentile(values, 0.90) * 1000,
                p99_ms=percentile(values, 0.99) * 1000,
                vs_baseline=medians[scenario.key] / medians[BASELINE, scenario.transport],
                dns_queries_per_connection=dns[scenario.key] / len(values),
                daemon_cpu_ms=cpu[scenario.key] * 1000 / len(values),
            )
        )
    return results


@dataclass(frozen=True)
class Run:
    """Seconds taken by one throughput run: wall clock, and CPU of each side."""

    wall: float
    daemon_cpu: float
    client_cpu: float  # this process: the client threads (the DNS server idles)


def throughput_once(target: Target, per_thread: int) -> Run:
    """THREADS clients making per_thread connections each, all at once."""

    def client_loop() -> None:
        for _ in range(per_thread):
            connection(target, SENDER)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        daemon_cpu, client_cpu = tree_cpu_seconds(target.pid), time.process_time()
        start = time.perf_counter()
        futures = [pool.submit(client_loop) for _ in range(THREADS)]
        for future in futures:
            future.result()  # re-raises a client's failure
        return Run(
            wall=time.perf_counter() - start,
            daemon_cpu=tree_cpu_seconds(target.pid) - daemon_cpu,
            client_cpu=time.process_time() - client_cpu,
        )


def measure_throughput(baseline: Target, spf: Target, per_thread: int) -> list[Throughput]:
    connections = THREADS * per_thread
    runs: dict[str, list[Run]] = {baseline.name: [], spf.name: []}
    # Alternate the two targets for the same reason the latency runs take turns.
    for repeat in range(THROUGHPUT_REPEATS):
        for target in (baseline, spf):
            runs[target.name].append(throughput_once(target, per_thread))
        print(f"  throughput run {repeat + 1}/{THROUGHPUT_REPEATS}", file=sys.stderr)
    rates = {name: statistics.median(connections / r.wall for r in rs) for name, rs in runs.items()}
    return [
        Throughput(
            target=target.name,
            threads=THREADS,
            connections=connections,
            per_second=rates[target.name],
            vs_baseline=rates[target.name] / rates[baseline.name],
            daemon_cpu_ms_per_connection=statistics.median(
                1000 * r.daemon_cpu / connections for r in runs[target.name]
            ),
            daemon_cpu_percent=statistics.median(
                100 * r.daemon_cpu / r.wall for r in runs[target.name]
            ),
            client_cpu_percent=statistics.median(
                100 * r.client_cpu / r.wall for r in runs[target.name]
            ),
        )
        for target in (baseline, spf)
    ]


# ---------------------------------------------------------------- the run


def run(n: int, warmup: int) -> Report:
    load_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="bench_milter.") as tmp,
        DNSTestServer(load_zone_file(ZONES / "core.yaml"), ttl=DNS_TTL) as dns,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        targets: dict[str, Target] = {}

        def baseline(name: str, spec: str) -> None:
            daemon = BaselineDaemon(spec, workdir / f"{name}.log")
            stack.callback(daemon.stop)
            daemon.start()
            targets[name] = Target(name, spec, daemon.pid, BASELINE_HEADER, "1")

        spf_daemons: list[Daemon] = []

        def spfmilter(
            name: str, spec: str | None, cache_size: str | None, rescue: bool = False
        ) -> None:
            cache = [("dns", "cache_size", cache_size)] if cache_size is not None else []
            options = [*SHORT_DNS, *cache, *(RESCUE_ON if rescue else ())]
            daemon = Daemon(workdir / name, spfmilter_config(dns.nameserver, options), spec)
            stack.callback(daemon.stop)
            daemon.start()
            spf_daemons.append(daemon)
            targets[name] = Target(name, daemon.socket, daemon.pid, "Received-SPF", "pass")

        print("starting daemons", file=sys.stderr)
        baseline("baseline", f"unix:{workdir}/baseline.sock")
        spfmilter("spfmilter", f"unix:{workdir}/spfmilter.sock", None)
        spfmilter("spfmilter-nocache", f"unix:{workdir}/nocache.sock", "0")
        baseline("baseline-tcp", f"inet:{free_port()}@127.0.0.1")
        spfmilter("spfmilter-tcp", None, None)  # Daemon picks a free port
        spfmilter("spfmilter-rescue", f"unix:{workdir}/rescue.sock", None, rescue=True)

        # The comparison is only fair if both sides do the same protocol steps
        # (with the rescue on, spfmilter asks for headers and body by design).
        reference = negotiated(targets["baseline"])
        for target in targets.values():
            if target.name == "spfmilter-rescue":
                continue
            agreed = negotiated(target)
            if agreed != reference:
                raise RuntimeError(
                    f"{target.name} negotiates (actions, steps) = {agreed[0]:#x}, {agreed[1]:#x}; "
                    f"the baseline {reference[0]:#x}, {reference[1]:#x}"
                )
        start_rss = {name: largest(target.pid)[0] for name, target in targets.items()}

        base, spf = targets["baseline"], targets["spfmilter"]
        nocache = targets["spfmilter-nocache"]
        scenarios = [
            Scenario(BASELINE, "unix", base, SENDER),
            Scenario("spfmilter, warm cache", "unix", spf, SENDER),
            Scenario("spfmilter, cold cache", "unix", nocache, SENDER),
            Scenario("spfmilter, include chain, cold", "unix", nocache, INCLUDE_SENDER),
            # MilterClient sets TCP_NODELAY and re-arms TCP_QUICKACK on TCP.
            # Without QUICKACK each connection waits ~40 ms for a delayed ACK,
            # the baseline as much as spfmilter: libmilter (Nagle on) sends
            # the inserted header and the final reply as separate packets.
            Scenario(BASELINE, "tcp", targets["baseline-tcp"], SENDER),
            Scenario("spfmilter, warm cache", "tcp", targets["spfmilter-tcp"], SENDER),
            Scenario(RESCUE_SCENARIO, "unix", targets["spfmilter-rescue"], SENDER),
        ]
        print(f"latency: {len(scenarios)} scenarios x {n} connections", file=sys.stderr)
        latency = measure_latency(scenarios, n, warmup, lambda: len(dns.queries))
        print(f"throughput: {THREADS} threads x {n} connections", file=sys.stderr)
        throughput = measure_throughput(base, spf, n)

        # Idle: let libmilter finish closing the last sessions first.
        time.sleep(1)
        memory = [
            Memory(name, start_rss[name], *largest(target.pid)) for name, target in targets.items()
        ]

        # The benchmark's sockets sit in a private 0700 directory: the warning
        # that Postfix could not reach them is expected.
        expected = (r"Postfix \(user postfix\) will not be able to connect",)
        problems = [line for daemon in spf_daemons for line in daemon.unexpected(expected)]
        if problems:
            raise RuntimeError("spfmilter logged problems:\n" + "\n".join(problems))

    by_name = {(r.scenario, r.transport): r for r in latency}
    warm, rescue = by_name["spfmilter, warm cache", "unix"], by_name[RESCUE_SCENARIO, "unix"]
    return Report(
        rescue_on_vs_off=rescue.median_ms / warm.median_ms,
        rescue_on_vs_off_cpu=rescue.daemon_cpu_ms / warm.daemon_cpu_ms,
        connections=n,
        warmup=warmup,
        python=platform.python_version(),
        cpus=os.cpu_count() or 0,
        load_before=load_before,
        load_after=os.getloadavg(),
        latency=latency,
        throughput=throughput,
        memory=memory,
    )


def markdown(report: Report) -> str:
    lines = [
        f"{report.connections} connections per scenario after {report.warmup} warm-up, "
        f"scenarios interleaved in blocks of {BLOCK}; Python {report.python}, "
        f"{report.cpus} CPUs, {load_average(report.load_before, report.load_after)}.",
        "",
        "Latency of one milter connection per SMTP session (negotiate ... QUIT), timed "
        "at the client; daemon CPU and DNS queries per connection.",
        "",
        "| scenario | socket | median ms | p90 ms | p99 ms | median vs baseline "
        "| daemon CPU ms | DNS queries |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.latency:
        lines.append(
            f"| {r.scenario} | {r.transport} | {r.median_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.vs_baseline:.2f}x | {r.daemon_cpu_ms:.2f} | {r.dns_queries_per_connection:.1f} |"
        )
    lines += [
        "",
        f"Passing mail with [rescue] on vs off (warm cache, unix socket): median "
        f"{report.rescue_on_vs_off:.2f}x, daemon CPU {report.rescue_on_vs_off_cpu:.2f}x.",
    ]
    lines += [
        "",
        f"Throughput: median of {THROUGHPUT_REPEATS} runs each, unix socket, warm cache.",
        "",
        "| daemon | client threads | connections per run | connections/s | vs baseline "
        "| daemon CPU ms/connection | daemon CPU % of one core | client CPU % of one core |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in report.throughput:
        lines.append(
            f"| {t.target} | {t.threads} | {t.connections} | {t.per_second:.0f} "
            f"| {t.vs_baseline:.2f}x | {t.daemon_cpu_ms_per_connection:.2f} "
            f"| {t.daemon_cpu_percent:.0f} | {t.client_cpu_percent:.0f} |"
        )
    lines += [
        "",
        "| daemon | RSS MiB at start | RSS MiB idle after the runs | peak RSS MiB |",
        "|---|---:|---:|---:|",
    ]
    for m in report.memory:
        lines.append(
            f"| {m.daemon} | {m.start_rss_mib:.1f} | {m.idle_rss_mib:.1f} | {m.peak_rss_mib:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_milter",
        description="Per-transaction cost of spfmilter over the milter protocol, "
        "against a minimal pymilter baseline.",
    )
    parser.add_argument("--n", type=int, default=300, help="connections per scenario")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured connections first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.n < 1 or args.warmup < 0:
        parser.error("--n must be at least 1 and --warmup at least 0")
    report = run(args.n, args.warmup)
    print(json.dumps(dataclasses.asdict(report), indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
