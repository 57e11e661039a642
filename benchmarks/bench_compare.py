"""spfmilter against a bare pymilter baseline and Debian's pyspf-milter, in one run.

This module owns the comparison benchmark: starting the three targets side
by side, serving them the same DNS, driving the same workloads at them in
interleaved rounds through the client pool, and reporting tx/s, latency,
CPU and memory per target with ratios from the same run.  It also owns an
opt-in extra: an RSS series over many transactions.

CPU is counted for each daemon's whole process tree (the PID started and
all its descendants, from /proc), so a daemon that forks workers is measured
whole.  DNS is served from this process, optionally holding every answer
back (``delay``).

Workloads, each transaction one milter connection as an MTA makes it for
one SMTP session with one message:

- warm: a mix of 10 passing (HELO, sender) pairs, records of several shapes
  (ip4, a, mx, include, redirect), DNS 0 ms, 8 concurrent connections;
- cold: every transaction a new HELO name and a new sender domain, both
  ``v=spf1 a -all`` (2 TXT + 2 A queries for an evaluator that checks both),
  DNS 20 ms per answer, 64 concurrent connections;
- inet: the warm mix over TCP, one connection at a time, from a client
  that behaves as Postfix's does (Nagle and delayed ACKs on, one write per
  round trip), to show the delayed-ACK stall.

Each workload runs a warm-up per target, then 3 rounds over the targets in
turn (A B C A B C A B C); the report gives the medians of the rounds.  Every
reply must be CONTINUE and every message must get exactly one header, the
expected one, saying pass for this transaction's sender; anything else is an
error, and a run with errors is reported as failed (exit status 1).

Run from the repository root, as root (mount namespace, port 53)::

    .venv/bin/python -m benchmarks.bench_compare            # quick, ~2 minutes
    .venv/bin/python -m benchmarks.bench_compare --full     # ~8 minutes
    .venv/bin/python -m benchmarks.bench_compare --json
    .venv/bin/python -m benchmarks.bench_compare --workloads "" --rss-series 200000
    .venv/bin/python -m benchmarks.bench_compare --spfmilter-option milter.workers=2

The RSS series runs after the workloads (about 7 minutes per 200,000
transactions here).  The CPU cost per query of DNS client libraries is a
benchmark of its own: ``python -m benchmarks.bench_dns_clients``.

Everything listens on unix sockets in a temporary directory or on
127.0.0.0/8; every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.benchdns import SYSTEM_DNS_ADDRESS, BenchDNS
from benchmarks.clientpool import ERROR_SAMPLES, ClientPool, Job, split
from benchmarks.milterproc import percentile, tree_cpu_seconds, tree_memory
from benchmarks.report import (
    ProcessMemory,
    Report,
    RssSample,
    RunStats,
    goals,
    markdown,
    say,
    summarise,
    to_json,
)
from benchmarks.targets import (
    BASELINE,
    EXPECTATIONS,
    SPFMILTER,
    TARGETS,
    Target,
    log_findings,
    package_version,
    preflight,
    pyspf_dns_library,
    pyspf_milter_env,
    started_targets,
)
from benchmarks.workloads import (
    RSS_WORKLOAD,
    WARM_MIX,
    WORKLOAD_NAMES,
    Workload,
    cold_zone,
    comparison_workloads,
    warm_zone,
)

ROUNDS = 3


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
                spec=t.instance(workload.inet).socket,
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
        pid = t.instance(workload.inet).pid
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
        preflight(args.system_dns_address)
        report.workloads = [
            w
            for w in comparison_workloads(
                args.warm_connections, args.cold_connections, args.cold_delay_ms
            )
            if w.name in args.workloads
        ]
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
                for instance, inet in (("unix", False), ("inet", True)):
                    report.memory += [
                        ProcessMemory(t.name, instance, m.pid, m.rss_mib, m.peak_mib)
                        for m in tree_memory(t.instance(inet).pid)
                    ]
            problems, notes = log_findings(targets)
            report.problems += bench.problems + problems
            report.notes += notes
    finally:
        pool.close()
        dns.stop()


def parse_option(text: str) -> tuple[str, str, str]:
    name, equals, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not (equals and dot and section and key):
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    return section, key.strip(), value.strip()


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
        default=list(WORKLOAD_NAMES),
        help=f"comma-separated subset of {','.join(WORKLOAD_NAMES)}",
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
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--json-file", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if args.full:
        args.duration, args.warmup = 15.0, 2.0
    unknown = set(args.workloads) - set(WORKLOAD_NAMES) | set(args.rss_targets) - set(TARGETS)
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
