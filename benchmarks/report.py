"""What the comparison found, as Markdown or JSON, and how benchmarks talk.

This module owns the comparison's results and their presentation: one
run's figures (RunStats), the medians over the rounds with ratios to the
baseline and to pyspf-milter from the same run (Summary), resident sizes,
the RSS series, the targets of the performance work judged from this run
(Goal), and the Markdown and JSON report.  It also owns the conventions
every benchmark script shares: progress on stderr, the report on stdout,
JSON without NaN.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks.milterproc import Memory
from benchmarks.targets import BASELINE, PYSPF, SPFMILTER, TARGET_TITLES, TARGETS
from benchmarks.workloads import COLD, INET, RSS_WORKLOAD, WARM, Workload

# Growth over the second half of an RSS series still called flat.
RSS_FLAT_MIB = 2.0


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


@dataclass(frozen=True)
class RssSample:
    target: str
    transactions: int  # done so far
    tx_per_s: float  # over the last chunk
    errors: int  # in the last chunk
    processes: list[Memory]


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
    goals: list[Goal] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.problems)


def say(message: str) -> None:
    """A progress line: on stderr, so that stdout holds the report alone."""
    print(message, file=sys.stderr, flush=True)


Load = tuple[float, float, float]


def load_average(before: Load, after: Load) -> str:
    """The machine's load averages around a run, for the report's first line."""
    return "load average {} before, {} after".format(
        *("/".join(f"{x:.2f}" for x in load) for load in (before, after))
    )


def goals(report: Report) -> list[Goal]:
    """spfmilter's performance targets, judged from this run's medians."""
    s = {(x.workload, x.target): x for x in report.summaries}
    found: list[Goal] = []
    warm, cold, inet = (s.get((w, SPFMILTER)) for w in (WARM, COLD, INET))
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


# ---------------------------------------------------------------- output


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def markdown(report: Report) -> str:
    lines = [
        f"Python {report.python}, {report.cpus} CPUs, pyspf-milter {report.pyspf_milter_version} "
        f"(DNS through {report.pyspf_milter_dns}); "
        f"{report.duration:g} s per run after {report.warmup:g} s warm-up, {report.rounds} "
        f"interleaved rounds, {report.client_processes} client processes; "
        f"{load_average(report.load_before, report.load_after)}.",
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
    return "\n".join(lines + closing_lines(report.notes, report.problems))


def to_json(report: Report) -> str:
    return json_text({**dataclasses.asdict(report), "failed": report.failed})


def closing_lines(notes: Sequence[str], problems: Sequence[str]) -> list[str]:
    """A report's last lines: notes, then what failed the run."""
    lines = []
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    if problems:
        lines += ["", "**FAILED**:", *(f"- {p}" for p in problems)]
    return lines


def json_text(data: object) -> str:
    """data as indented JSON, with null for NaN and infinities (JSON has neither)."""

    def clean(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), indent=2, ensure_ascii=False)
