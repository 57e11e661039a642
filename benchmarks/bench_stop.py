"""How long spfmilter takes to stop: from SIGTERM to the exit of its process.

A stop is what every restart of the service waits for, and while the daemon
is stopping the MTA's new milter connections wait or fail (Postfix then
applies milter_default_action), so a stop should take no longer than the
callbacks in flight need.  Each round starts a daemon of its own on
127.0.0.1 and stops it by its PID.  Scenarios:

- idle, one process: ``[milter] workers = 1``;
- idle, two workers;
- two workers after a reload, with one milter connection open and idle:
  the rounds in which a worker could block in accept() and the stop hang
  until the supervisor killed it (30 s, exit status 1);
- two workers with one transaction in flight: its MAIL FROM callback waits
  on DNS that never answers (``[dns] lookup_time = 1``) when SIGTERM comes,
  and must still reply; reported besides is the time from that reply to the
  exit.

It prints the median and the maximum of each scenario and how many rounds
did not exit with status 0 within HANG seconds (markdown, or JSON with
``--json``); progress goes to stderr.  The machines are shared and noisy:
compare medians from runs made side by side.  Run from the repository
root::

    .venv/bin/python -m benchmarks.bench_stop [--rounds 20] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.daemon import Daemon, wait_for
from testkit.milterclient import MilterClient

# Longer than the longest stop the daemon allows itself (its supervisor
# kills the workers after 30 s): a round still running then has hung.
HANG = 40.0
# A sender whose domain's DNS server never answers (testkit/zones/core.yaml).
SILENT_SENDER = "<t@spf-timeout.example.org>"
SILENT_DOMAIN = "spf-timeout.example.org"


@dataclass(frozen=True)
class Round:
    seconds: float  # SIGTERM to exit
    status: int | None  # the exit status; None: still running after HANG s
    after_reply: float | None = None  # the in-flight reply to exit


@dataclass(frozen=True)
class Stops:
    scenario: str
    rounds: int
    median_s: float
    max_s: float
    failed: int  # rounds without exit status 0 within HANG s
    after_reply_median_s: float | None
    after_reply_max_s: float | None


@dataclass(frozen=True)
class Report:
    rounds: int
    python: str
    cpus: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    stops: list[Stops]


def stop(daemon: Daemon) -> tuple[int | None, float, float]:
    """SIGTERM the daemon and wait for its exit: the status (None when it
    still ran after HANG s; it is killed then), and when the signal went and
    when the wait ended (time.monotonic())."""
    assert daemon.process is not None
    signalled = time.monotonic()
    daemon.signal(signal.SIGTERM)
    try:
        status: int | None = daemon.process.wait(HANG)
    except subprocess.TimeoutExpired:
        status = None
    ended = time.monotonic()
    if status is None:
        daemon.kill()
    return status, signalled, ended


def idle(daemon: Daemon) -> Round:
    status, signalled, ended = stop(daemon)
    return Round(ended - signalled, status)


def reloaded_with_an_idle_connection(daemon: Daemon) -> Round:
    daemon.reload()
    with contextlib.closing(MilterClient(daemon.socket)) as client:
        client.open()
        client.negotiate()
        status, signalled, ended = stop(daemon)
    return Round(ended - signalled, status)


def in_flight(daemon: Daemon, queried: Callable[[], bool]) -> Round:
    replied: list[float] = []

    def mail(client: MilterClient) -> None:
        client.mail(SILENT_SENDER)  # raises if the reply does not come
        replied.append(time.monotonic())

    with contextlib.closing(MilterClient(daemon.socket)) as client:
        client.open()
        client.negotiate()
        client.connect("client.example", "198.51.100.7")
        client.helo("helo-none.example.org")
        waiting = threading.Thread(target=mail, args=(client,))
        waiting.start()
        wait_for(queried, 10, "the MAIL FROM callback to ask DNS")
        status, signalled, ended = stop(daemon)
        waiting.join(HANG)
    if not replied:
        return Round(ended - signalled, None)  # the transaction lost its reply
    return Round(ended - signalled, status, ended - replied[0])


def summary(name: str, rounds: list[Round]) -> Stops:
    seconds = [r.seconds for r in rounds]
    tails = [r.after_reply for r in rounds if r.after_reply is not None]
    return Stops(
        scenario=name,
        rounds=len(rounds),
        median_s=statistics.median(seconds),
        max_s=max(seconds),
        failed=sum(r.status != 0 for r in rounds),
        after_reply_median_s=statistics.median(tails) if tails else None,
        after_reply_max_s=max(tails) if tails else None,
    )


def run(rounds: int) -> Report:
    # Imported here rather than at the top: importing this module should not
    # pull in pytest, dnslib and PyYAML.
    from testkit.daemon import config_text
    from testkit.dnsserver import ZONES, DNSTestServer, load_zone_file

    load_before = os.getloadavg()
    stops: list[Stops] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench_stop.") as tmp,
        DNSTestServer(load_zone_file(ZONES / "core.yaml"), ttl=60) as dns,
    ):

        def queried() -> bool:
            return any(query[0] == SILENT_DOMAIN for query in dns.queries)

        def silent(daemon: Daemon) -> Round:
            dns.clear_queries()
            return in_flight(daemon, queried)

        scenarios: list[tuple[str, dict[str, dict[str, str]], Callable[[Daemon], Round]]] = [
            ("idle, workers = 1", {"milter": {"workers": "1"}}, idle),
            ("idle, workers = 2", {"milter": {"workers": "2"}}, idle),
            (
                "workers = 2, after a reload, one idle connection",
                {"milter": {"workers": "2"}},
                reloaded_with_an_idle_connection,
            ),
            (
                "workers = 2, a MAIL FROM waiting on DNS (lookup_time 1 s)",
                {"milter": {"workers": "2"}, "dns": {"timeout": "1", "lookup_time": "1"}},
                silent,
            ),
        ]
        for name, sections, scenario in scenarios:
            print(f"{name}: {rounds} rounds", file=sys.stderr)
            done = []
            for number in range(rounds):
                daemon = Daemon(Path(tmp) / f"{len(stops)}-{number}", config_text(dns, sections))
                daemon.start()
                try:
                    done.append(scenario(daemon))
                finally:
                    daemon.stop()
            stops.append(summary(name, done))
    return Report(
        rounds=rounds,
        python=platform.python_version(),
        cpus=os.cpu_count() or 0,
        load_before=load_before,
        load_after=os.getloadavg(),
        stops=stops,
    )


def markdown(report: Report) -> str:
    load = "/".join(f"{x:.2f}" for x in report.load_before)
    after = "/".join(f"{x:.2f}" for x in report.load_after)
    lines = [
        f"Stop times over {report.rounds} rounds each (Python {report.python}, "
        f"{report.cpus} CPUs, load {load} before, {after} after)",
        "",
        "| scenario | median s | max s | not exit 0 within "
        f"{HANG:.0f} s | reply to exit, median s | max s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in report.stops:
        tail = (
            f"{s.after_reply_median_s:.3f} | {s.after_reply_max_s:.3f}"
            if s.after_reply_median_s is not None and s.after_reply_max_s is not None
            else "- | -"
        )
        lines.append(f"| {s.scenario} | {s.median_s:.3f} | {s.max_s:.3f} | {s.failed} | {tail} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_stop",
        description="Seconds from SIGTERM to the exit of spfmilter, idle and with a "
        "transaction in flight.",
    )
    parser.add_argument("--rounds", type=int, default=20, help="daemons stopped per scenario")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    report = run(args.rounds)
    print(json.dumps(dataclasses.asdict(report), indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
