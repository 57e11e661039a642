"""Throughput and memory of ``spfmilter report`` on a busy MX's month of logs.

This module owns a generator of realistic mail logs and the measurement of
the report command on them.  The log is what /var/log/mail.log holds on a
Debian MX running Postfix with spfmilter under systemd: rsyslog's
traditional lines, Postfix's own lines around each transaction (connect,
the queue id's client=, cleanup, qmgr, delivery, removed, disconnect; or a
NOQUEUE reject), and spfmilter's verdict line.  Verdicts mix results the
way an MX sees them (mostly pass; none, softfail, fail from spoofed spam;
a few neutral, permerror, temperror; HELO failures; SASL and trusted-relay
skips), from clients and sender domains drawn from long-tailed
distributions (a few big senders, a long tail of one-off spam sources and
made-up domains), with a handful of forwarders that fail for many unrelated
domains, part of them rescued by DKIM or ARC.  ``--format json`` writes
spfmilter's lines in its JSON form instead, inside the same syslog lines.

Measured, each run in a fresh process (``spfmilter report`` as an
administrator runs it, output to /dev/null): wall time, CPU time of the report and its
workers, lines per second (median of the runs) and the peak RSS of its
largest process (wait4's ru_maxrss).  The load average is printed along:
on a shared machine others' work slows the wall time, and lines per CPU
second is the steadier figure.  ``--cpus 1`` measures the report in one
process (it starts workers only when it may use more than one CPU).

Run from the repository root::

    .venv/bin/python -m benchmarks.bench_report                    # 2M lines, 5 runs
    .venv/bin/python -m benchmarks.bench_report --lines 10000000 --runs 3
    .venv/bin/python -m benchmarks.bench_report --format json --gzip
    .venv/bin/python -m benchmarks.bench_report --only-spfmilter --cpus 1
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MONTHS = ("Nov", "Dec")

# Result mix of MAIL FROM verdicts (weights), as an MX receiving spam sees it.
RESULTS = {
    "pass": 62,
    "none": 14,
    "softfail": 9,
    "fail": 9,
    "neutral": 3,
    "permerror": 1,
    "temperror": 2,
}
FORWARDERS = 12  # clients that relay mail from many unrelated domains
SKIP_SHARE = 0.05  # SASL submissions and trusted relays
HELO_FAIL_SHARE = 0.01
RESCUE_SHARE = 0.6  # of a forwarder's failures, rescued by DKIM or ARC


def _zipf_pool(rng: random.Random, names: list[str], draws: int) -> list[str]:
    """`draws` names drawn with weights 1/rank (a long tail)."""
    weights = [1 / (rank + 1) for rank in range(len(names))]
    return rng.choices(names, weights=weights, k=draws)


class Generator:
    """Log lines of a busy MX: Postfix's own lines and spfmilter's verdicts."""

    def __init__(self, seed: int, json_lines: bool, dry_run: bool) -> None:
        self.rng = random.Random(seed)
        self.json_lines = json_lines
        self.dry_run = dry_run
        rng = self.rng
        self.domains = [
            f"d{n}.{rng.choice(('com', 'net', 'org', 'co.uk', 'de'))}" for n in range(200_000)
        ]
        self.clients = [
            ".".join(str(rng.randrange(1, 224 if octet == 0 else 255)) for octet in range(4))
            for _ in range(60_000)
        ]
        self.forwarders = [f"203.0.113.{n + 10}" for n in range(FORWARDERS)]
        # Pools drawn once: cheap choices later, the same long tails.
        self.domain_pool = _zipf_pool(rng, self.domains, 400_000)
        self.client_pool = _zipf_pool(rng, self.clients, 400_000)
        self.results = rng.choices(list(RESULTS), weights=list(RESULTS.values()), k=100_000)
        self.conn = 0
        self.second = 0

    def _stamp(self) -> str:
        self.second += 1
        day, rest = divmod(self.second // 3, 86_400)
        hour, rest = divmod(rest, 3_600)
        minute, second = divmod(rest, 60)
        return f"Dec {day % 28 + 1:2d} {hour:02d}:{minute:02d}:{second:02d}"

    def _queue_id(self) -> str:
        return f"4{self.rng.getrandbits(40):010X}"

    def _verdict(self, queue_id: str, fields: dict[str, object]) -> str:
        if self.json_lines:
            message = f"{queue_id}: verdict " + " ".join(f"{k}={v}" for k, v in fields.items())
            record: dict[str, object] = {"level": "info", "logger": "spfmilter.verdicts"}
            record.update(message=message, queue_id=queue_id, **fields)
            return json.dumps(record)
        text = []
        for key, value in fields.items():
            value = str(value)
            if " " in value or '"' in value or "=" in value:
                value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            text.append(f"{key}={value}")
        if fields.get("action") == "skip":
            return f"{queue_id}: SPF skipped - {fields['reason']} " + " ".join(text)
        return f"{queue_id}: verdict " + " ".join(text)

    def transaction(self) -> Iterator[str]:
        """One SMTP session's lines."""
        rng = self.rng
        self.conn += 1
        stamp = self._stamp()
        pid = 1000 + self.conn % 5000
        forwarder = rng.random() < 0.03
        client = rng.choice(self.forwarders) if forwarder else rng.choice(self.client_pool)
        domain = rng.choice(self.domain_pool)
        sender = f"u{rng.randrange(1000)}@{domain}"
        helo = f"mail.{domain}"
        host = f"mx{client.rsplit('.', 1)[1]}.fwd.example" if forwarder else "unknown"
        yield f"{stamp} mx postfix/smtpd[{pid}]: connect from {host}[{client}]"
        fields: dict[str, object] = {
            "conn": self.conn,
            "client_ip": client,
            "client_name": host,
            "helo": helo,
            "sender": sender,
        }
        queue_id = self._queue_id()
        roll = rng.random()
        if roll < SKIP_SHARE:
            reason = (
                "SASL authenticated as user"
                if roll < SKIP_SHARE / 2
                else (f"client {client} is a trusted relay")
            )
            fields.update(action="skip", reason=reason)
            refused = False
        elif roll < SKIP_SHARE + HELO_FAIL_SHARE:
            fields.update(identity="helo", result="fail", mechanism="-all", action="reject")
            fields.update(stage="rcpt", reply=f"550 5.7.23 SPF HELO check for {helo}: fail")
            refused = True
        else:
            result = "fail" if forwarder and rng.random() < 0.5 else rng.choice(self.results)
            action = {"fail": "reject", "temperror": "defer"}.get(result, "accept")
            mechanism = {"pass": "ip4:192.0.2.0/24", "fail": "-all", "softfail": "~all"}
            fields.update(identity="mailfrom", result=result)
            fields.update(mechanism=mechanism.get(result, "-"), action=action, stage="rcpt")
            if action != "accept":
                fields["reply"] = f"550 5.7.23 SPF MAIL FROM check for {sender}: {result}"
            if result == "fail":
                if forwarder and rng.random() < RESCUE_SHARE:
                    method = rng.choice(("dkim", "arc"))
                    fields.update(action="accept", rescue=method, rescue_domain=domain)
                    del fields["reply"]
                else:
                    fields.update(rescue="none", rescue_reason="no aligned signature")
            refused = fields["action"] in ("reject", "defer")
        if self.dry_run and refused:
            fields["dry_run"] = "yes"
        fields["lookup_ms"] = rng.randrange(1, 80)
        if refused:
            queue_id = "NOQUEUE"
            yield (
                f"{stamp} mx postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from "
                f"{host}[{client}]: 550 5.7.23 <user@example.net>: Recipient address rejected; "
                f"from=<{sender}> to=<user@example.net> proto=ESMTP helo=<{helo}>"
            )
            yield f"{stamp} mx spfmilter[4711]: {self._verdict(queue_id, fields)}"
        else:
            yield f"{stamp} mx postfix/smtpd[{pid}]: {queue_id}: client={host}[{client}]"
            yield (
                f"{stamp} mx postfix/cleanup[{pid + 1}]: {queue_id}: "
                f"message-id=<{self.conn}@{domain}>"
            )
            yield f"{stamp} mx spfmilter[4711]: {self._verdict(queue_id, fields)}"
            yield (
                f"{stamp} mx postfix/qmgr[99]: {queue_id}: from=<{sender}>, size=4242, nrcpt=1 "
                "(queue active)"
            )
            yield (
                f"{stamp} mx postfix/lmtp[{pid + 2}]: {queue_id}: to=<user@example.net>, "
                "relay=mail.example.net[private/dovecot-lmtp], delay=0.1, "
                "status=sent (250 2.0.0 Ok)"
            )
            yield f"{stamp} mx postfix/qmgr[99]: {queue_id}: removed"
        yield (
            f"{stamp} mx postfix/smtpd[{pid}]: disconnect from {host}[{client}] "
            "ehlo=1 mail=1 rcpt=1 quit=1 commands=4"
        )

    def lines(self, count: int) -> Iterator[str]:
        made = 0
        while made < count:
            for line in self.transaction():
                yield line
                made += 1


def write_log(
    path: Path, count: int, *, json_lines: bool, dry_run: bool, compress: bool, only_spfmilter: bool
) -> int:
    """Write about `count` lines (to the end of the last session); return
    how many are spfmilter's."""
    generator = Generator(20, json_lines, dry_run)
    lines = generator.lines(count)
    if only_spfmilter:
        lines = (line for line in generator.lines(count * 8) if " spfmilter[" in line)
    verdicts = 0
    written = 0
    with gzip.open(path, "wt", encoding="utf-8") if compress else path.open("w") as out:
        block: list[str] = []
        for line in lines:
            block.append(line)
            if len(block) >= 10_000:
                verdicts += sum(" spfmilter[" in item for item in block)
                out.write("\n".join(block) + "\n")
                written += len(block)
                block = []
                if written >= count:
                    break
        verdicts += sum(" spfmilter[" in item for item in block)
        out.write("\n".join(block) + "\n" if block else "")
    return verdicts


def run_once(path: Path, extra: list[str], cpus: int | None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (its workers' included) and peak RSS (KiB,
    of its largest process) of one report run, on the first `cpus` CPUs."""
    argv = [sys.executable, "-m", "spfmilter", "report", *extra, str(path)]
    allowed = sorted(os.sched_getaffinity(0))[:cpus] if cpus else None
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        process = subprocess.Popen(
            argv,
            stdout=null,
            cwd=REPO,
            preexec_fn=(lambda: os.sched_setaffinity(0, allowed)) if allowed else None,
        )
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{argv!r} exited with {process.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000, help="log lines (default 2M)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--gzip", action="store_true", help="compress the log")
    parser.add_argument("--dry-run", action="store_true", help="refusals logged as dry run")
    parser.add_argument(
        "--only-spfmilter",
        action="store_true",
        help="spfmilter's lines alone, as journalctl -u spfmilter or its stderr log has them",
    )
    parser.add_argument("--cpus", type=int, help="run the report on this many CPUs only")
    parser.add_argument("--output", choices=("text", "json", "html"), default="text")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        path = Path(tmp) / ("mail.log.gz" if args.gzip else "mail.log")
        started = time.perf_counter()
        verdicts = write_log(
            path,
            args.lines,
            json_lines=args.format == "json",
            dry_run=args.dry_run,
            compress=args.gzip,
            only_spfmilter=args.only_spfmilter,
        )
        written = time.perf_counter() - started
        with gzip.open(path, "rb") if args.gzip else open(path, "rb") as log:
            lines = sum(block.count(b"\n") for block in iter(lambda: log.read(1 << 20), b""))
        size = path.stat().st_size
        extra = [] if args.output == "text" else [f"--{args.output}"]
        run_once(path, extra, args.cpus)  # warm-up: page cache
        load = os.getloadavg()[0]
        runs = [run_once(path, extra, args.cpus) for _ in range(args.runs)]
        load = max(load, os.getloadavg()[0])
    walls = sorted(r[0] for r in runs)
    cpus = sorted(r[1] for r in runs)
    figures = {
        "lines": lines,
        "verdict_lines": verdicts,
        "bytes": size,
        "format": args.format,
        "gzip": args.gzip,
        "runs": args.runs,
        "wall_s_median": statistics.median(walls),
        "wall_s_min": walls[0],
        "cpu_s_median": statistics.median(cpus),
        "lines_per_s_median": lines / statistics.median(walls),
        "lines_per_cpu_s_median": lines / statistics.median(cpus),
        "peak_rss_mib_max": max(r[2] for r in runs) / 1024,
        "generated_in_s": written,
        "cpus": args.cpus or len(os.sched_getaffinity(0)),
        "load_average_max": load,  # others' work on the machine shows here
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"{lines:,} lines ({verdicts:,} verdicts, {args.format}"
            f"{', gzip' if args.gzip else ''}): "
            f"median {figures['wall_s_median']:.2f} s wall, {figures['cpu_s_median']:.2f} s CPU; "
            f"{figures['lines_per_s_median']:,.0f} lines/s, "
            f"{figures['lines_per_cpu_s_median']:,.0f} lines per CPU second; "
            f"peak RSS {figures['peak_rss_mib_max']:.1f} MiB (largest process); "
            f"{figures['cpus']} CPUs, load average up to {load:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
