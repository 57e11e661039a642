"""What the costliest DNS answers known cost spfmilter, before and after a change.

This module owns the measurement behind README's figures for hostile DNS:
two answers anyone who runs a zone can serve, each sent for both identities
of every transaction (HELO and MAIL FROM), and three figures per answer and
version of spfmilter, all from one run:

- chain: 3,072 NULL records (1,024 in each section, 37 KB) whose owners
  are a chain of compression pointers, sent byte for byte by the test DNS
  server (testkit/dnsserver.py, POINTER_CHAIN).  A resolver
  re-encodes what it forwards, so this reaches a daemon whose nameserver
  passes bytes on verbatim, or that an attacker can spoof;
- chain-64k: the same chain over 65,535 octets in one section (parse only:
  the daemons meet the one above);
- big-txt: 5,000 TXT records on names of 119 labels, compressed as usual
  (65 KB), fetched by a real Unbound (testkit/unbound.py) from the
  test server and passed on whole.

Figures:

- parse: CPU time of that version's dnswire.parse_reply on the answer, in
  a process of its own, median of --repeat;
- cpu/tx: the daemon's CPU time (all its processes, from /proc) per
  transaction, median of --transactions, one transaction at a time;
- harmless p50/p95/max: latency of a transaction answered from the cache
  while --load connections keep making hostile transactions (sampled for
  --samples transactions or --seconds, whichever ends first), with the
  number of hostile transactions made meanwhile and how many of them got
  another result than their answer calls for (a temperror when DNS or the
  daemon took too long, or no reply within 30 s).

A control row ("control") makes the same load of harmless transactions:
what that many busy connections cost on this machine without hostile DNS.

Versions: this tree, and with ``--baseline DIR`` the ``spfmilter`` package
under DIR, e.g. d676e1f's::

    mkdir /tmp/base && git archive d676e1f spfmilter | tar -x -C /tmp/base
    .venv/bin/python -m benchmarks.bench_dns_cost --baseline /tmp/base [--json]

Each version's daemons run with the same configuration (default workers,
one nameserver, DNS times long enough that the test server's own slowness
never becomes a timeout) on unix sockets in a temporary directory; DNS
stays on 127.0.0.1; every process started is stopped by its PID.  The
machine is shared and noisy: compare versions within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.milterproc import MilterProcess, percentile, tree_cpu_seconds
from testkit.daemon import REPO
from testkit.dnsserver import DNSTestServer, pointer_chain
from testkit.milterclient import MilterError, one_transaction
from testkit.unbound import Unbound

CLIENT_IP = "198.51.100.7"
MTA_NAME = "mx.bench.example"
# The harmless transaction: both identities pass, answered from the cache.
HARMLESS_HELO = "helo.example.org"
HARMLESS_SENDER = "alice@pass.example.org"
CHAIN = "chain.example.org"
# 115 one-letter labels: with a label of up to 6 octets in front, a name of
# 119 labels and at most 255 octets.
BIG = ".".join(["a"] * 115) + ".big.example.org"
BIG_RECORDS = 5000
TTL = 3600
# Long enough that the test server, which builds each 65 KB answer in
# Python, is never the reason for a temperror.
DNS_SECTION = "[dns]\nnameservers = {}\ntimeout = 10\nlookup_time = 25\n"
_RECORD = "v=spf1 ip4:198.51.100.0/24 -all"

# Runs in a process importing the version measured: times parse_reply on
# the answers in the files named, prints their medians as JSON.
_PARSE = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from spfmilter.evaluation import dnswire
repeat, results = int(sys.argv[2]), {}
for path in sys.argv[3:]:
    data = open(path, "rb").read()
    qname = data[12 : 12 + data[12:].index(b"\\0") + 1]
    qtype = int.from_bytes(data[12 + len(qname) : 14 + len(qname)], "big")
    times = []
    for _ in range(repeat):
        started = time.process_time()
        dnswire.parse_reply(data, 1, qname, qtype)
        times.append(time.process_time() - started)
    results[path] = statistics.median(times)
print(json.dumps(results))
"""

# Runs sample() in a process of its own.
_SAMPLE = (
    "import sys; from benchmarks.bench_dns_cost import sample; "
    "sample(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))"
)

# Starts the daemon of the version under argv[1], with the rest as options.
_LAUNCH = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from spfmilter.cli import main; raise SystemExit(main())"
)


def zone() -> dict[str, list[object]]:
    return {
        "pass.example.org": [{"TXT": _RECORD}],
        HARMLESS_HELO: [{"TXT": _RECORD}],
        CHAIN: ["POINTER_CHAIN"],
        f"*.{BIG}": [{"TXT": ""}] * BIG_RECORDS,
    }


def question(name: str, qtype: int = 16) -> bytes:
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    return wire + b"\x00" + struct.pack("!HH", qtype, 1)


def big_txt_answer() -> bytes:
    """What the test server sends for one big-txt name, compressed as usual."""
    asked = question(f"m0.{BIG}")
    record = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, TTL, 1) + b"\x00"
    header = struct.pack("!6H", 1, 0x8180, 1, BIG_RECORDS, 0, 0)
    return header + asked + record * BIG_RECORDS


@dataclass(frozen=True)
class Hostile:
    """One hostile answer and how a transaction meets it."""

    name: str
    nameserver: str | None  # where the daemon asks (the test server, Unbound); None: parse only
    identities: Callable[[int], tuple[str, str]]  # transaction n -> HELO, MAIL FROM
    answer: bytes | None  # one such answer, for the parse figure
    result: str  # the Received-SPF result each version must give


@dataclass(frozen=True)
class Row:
    """One answer's figures for one version; a parse-only answer has no
    daemon figures, and the control no parse figure."""

    version: str
    answer: str
    parse_ms: float | None
    cpu_per_tx_ms: float | None = None  # median
    cpu_per_tx_mean_ms: float | None = None
    cpu_wrong: int | None = None  # of the transactions measured, those answered otherwise
    hostile_done: int | None = None  # hostile transactions made while sampling
    hostile_wrong: int | None = None  # of those, answered otherwise than `result`
    harmless_p50_ms: float | None = None
    harmless_p95_ms: float | None = None
    harmless_max_ms: float | None = None
    harmless_samples: int | None = None


def parse_times(
    tree: Path, answers: Sequence[Hostile], repeat: int, workdir: Path
) -> list[float | None]:
    paths = {}
    for hostile in answers:
        if hostile.answer is not None:
            path = workdir / f"{hostile.name}.bin"
            path.write_bytes(hostile.answer)
            paths[hostile.name] = str(path)
    output = subprocess.run(
        [sys.executable, "-c", _PARSE, str(tree), str(repeat), *paths.values()],
        capture_output=True,
        text=True,
        check=True,
        cwd=workdir,
    ).stdout
    medians: dict[str, float] = json.loads(output)
    return [medians[paths[h.name]] if h.name in paths else None for h in answers]


@contextlib.contextmanager
def daemon(tree: Path, nameserver: str, workdir: Path) -> Iterator[MilterProcess]:
    """That version's daemon asking `nameserver`; stopped by its PID."""
    workdir.mkdir(parents=True)
    config = workdir / "spfmilter.cfg"
    config.write_text("[milter]\nuser = root\n" + DNS_SECTION.format(nameserver))
    spec = f"unix:{workdir / 'spfmilter.sock'}"
    argv = [sys.executable, "-c", _LAUNCH, str(tree), "--config", str(config), "--socket", spec]
    process = MilterProcess(f"spfmilter of {tree}", argv, spec, workdir / "spfmilter.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def transaction(spec: str, helo: str, sender: str) -> str:
    """One transaction; the result word of its Received-SPF, its reply, or
    "no reply" when the daemon did not answer within the client's 30 s
    (Postfix's milter_command_timeout)."""
    try:
        result = one_transaction(spec, CLIENT_IP, helo, sender, mta_name=MTA_NAME)
    except MilterError:
        return "no reply"
    if result.eom is None:
        return f"reply {result.final.code}"
    values = [m.value or "" for m in result.eom.modifications if m.name == "Received-SPF"]
    return values[0].split()[0] if values else "no header"


def cpu_per_transaction(
    process: MilterProcess, hostile: Hostile, count: int
) -> tuple[list[float], list[str]]:
    """The daemon's CPU seconds for each of `count` hostile transactions
    (/proc counts in ticks of 10 ms), and their results."""
    spent, results = [], []
    for n in range(count):
        before = tree_cpu_seconds(process.pid)
        results.append(transaction(process.socket, *hostile.identities(n)))
        spent.append(tree_cpu_seconds(process.pid) - before)
    return spent, results


def settle(authority: DNSTestServer, quiet: float = 2.0, limit: float = 120.0) -> None:
    """Until the test server has been asked nothing for `quiet` seconds: a
    resolver may still be fetching answers for queries of the last run."""
    deadline = time.monotonic() + limit
    seen, since = len(authority.queries), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.1)  # the pace of polling
        if len(authority.queries) != seen:
            seen, since = len(authority.queries), time.monotonic()


def harmless_beside(
    process: MilterProcess, hostile: Hostile, load: int, samples: int, seconds: float
) -> tuple[list[float], list[str]]:
    """Latencies of harmless transactions while `load` connections keep
    making hostile ones, and the results of those.

    The harmless ones are timed in a process of their own: this one serves
    DNS and runs the hostile connections, and its interpreter lock would
    count in their latency.
    """
    for _ in range(4):  # into the cache of every worker, likely
        transaction(process.socket, HARMLESS_HELO, HARMLESS_SENDER)
    stop = threading.Event()
    numbers = itertools.count(10_000)  # names the cpu runs did not ask for
    results: list[str] = []

    def keep_going() -> None:
        while not stop.is_set():
            results.append(transaction(process.socket, *hostile.identities(next(numbers))))

    threads = [threading.Thread(target=keep_going, daemon=True) for _ in range(load)]
    for thread in threads:
        thread.start()
    try:
        output = subprocess.run(
            [sys.executable, "-c", _SAMPLE, process.socket, str(samples), str(seconds)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
        done = list(results)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    latencies: list[float] = json.loads(output)
    return latencies, done


def sample(spec: str, samples: int, seconds: float) -> None:
    """The sampling process: harmless transactions on `spec`, one after
    another, for `samples` or `seconds`; prints their latencies (JSON)."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while len(latencies) < samples and time.monotonic() < deadline:
        started = time.monotonic()
        result = transaction(spec, HARMLESS_HELO, HARMLESS_SENDER)
        latencies.append(time.monotonic() - started)
        if result != "pass":
            raise SystemExit(f"the harmless transaction got {result}")
    print(json.dumps(latencies))


def measure(args: argparse.Namespace, workdir: Path) -> list[Row]:
    versions = [("this tree", REPO)]
    if args.baseline:
        versions.insert(0, ("baseline", Path(args.baseline).resolve()))
    rows = []
    with DNSTestServer(zone(), ttl=TTL) as authority:
        resolver = Unbound(workdir / "unbound", authority.nameserver, ("example.org.",))
        resolver.start()
        try:
            answers = [
                Hostile(
                    "chain",
                    authority.nameserver,
                    lambda n: (CHAIN, f"a{n}@{CHAIN}"),
                    pointer_chain(1, question(CHAIN)),
                    "none",  # no SPF record among NULL records
                ),
                Hostile(
                    "chain-64k",
                    None,
                    lambda n: (CHAIN, f"a{n}@{CHAIN}"),
                    pointer_chain(1, question(CHAIN), per_section=0xFFFF),
                    "permerror",  # more records than a section may hold
                ),
                Hostile(
                    "big-txt",
                    resolver.nameserver,
                    lambda n: (f"h{n}.{BIG}", f"a@m{n}.{BIG}"),
                    big_txt_answer(),
                    "permerror",  # more records than a section may hold
                ),
                # What 16 busy connections cost without hostile DNS.
                Hostile(
                    "control",
                    authority.nameserver,
                    lambda n: (HARMLESS_HELO, HARMLESS_SENDER),
                    None,
                    "pass",
                ),
            ]
            for label, tree in versions:
                say(f"{label}: parsing")
                parsed = parse_times(tree, answers, args.repeat, workdir)
                for hostile, parse in zip(answers, parsed, strict=True):
                    parse_ms = None if parse is None else parse * 1000
                    if hostile.nameserver is None:
                        rows.append(Row(label, hostile.name, parse_ms))
                        continue
                    where = workdir / f"{label.replace(' ', '-')}-{hostile.name}"
                    settle(authority)
                    with daemon(tree, hostile.nameserver, where) as process:
                        say(f"{label}, {hostile.name}: CPU per transaction")
                        cpu, results = cpu_per_transaction(process, hostile, args.transactions)
                        say(f"{label}, {hostile.name}: harmless beside {args.load} hostile")
                        latencies, done = harmless_beside(
                            process, hostile, args.load, args.samples, args.seconds
                        )
                    harmless = sorted(latencies)
                    rows.append(
                        Row(
                            label,
                            hostile.name,
                            parse_ms,
                            statistics.median(cpu) * 1000,
                            statistics.mean(cpu) * 1000,
                            sum(result != hostile.result for result in results),
                            len(done),
                            sum(result != hostile.result for result in done),
                            percentile(harmless, 0.5) * 1000,
                            percentile(harmless, 0.95) * 1000,
                            harmless[-1] * 1000,
                            len(harmless),
                        )
                    )
        finally:
            resolver.stop()
    return rows


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def markdown(rows: Sequence[Row], args: argparse.Namespace) -> str:
    lines = [
        f"Hostile DNS answers, {os.cpu_count()} CPUs; cpu/tx: median of {args.transactions}; "
        f"harmless: beside {args.load} hostile connections",
        "",
        "| version | answer | parse ms | cpu/tx ms (mean; other result) "
        "| hostile tx made (other result) | harmless p50 ms | p95 ms | max ms | n |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.version} | {r.answer} | {_shown(r.parse_ms, '.1f')} "
        f"| {_shown(r.cpu_per_tx_ms)} ({_shown(r.cpu_per_tx_mean_ms)}; {_shown(r.cpu_wrong)}) "
        f"| {_shown(r.hostile_done)} ({_shown(r.hostile_wrong)}) "
        f"| {_shown(r.harmless_p50_ms)} | {_shown(r.harmless_p95_ms)} "
        f"| {_shown(r.harmless_max_ms)} | {_shown(r.harmless_samples)} |"
        for r in rows
    ]
    return "\n".join(lines)


def _shown(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_dns_cost")
    parser.add_argument("--baseline", help="directory holding another version's spfmilter/")
    parser.add_argument("--repeat", type=int, default=5, help="parses per answer (default 5)")
    parser.add_argument("--transactions", type=int, default=10, help="for cpu/tx (default 10)")
    parser.add_argument("--load", type=int, default=16, help="hostile connections (default 16)")
    parser.add_argument("--samples", type=int, default=40, help="harmless ones (default 40)")
    parser.add_argument(
        "--seconds", type=float, default=90, help="at most this long sampling (default 90)"
    )
    parser.add_argument("--json", action="store_true", help="JSON instead of markdown")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-dns-cost-") as tmp:
        rows = measure(args, Path(tmp))
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
