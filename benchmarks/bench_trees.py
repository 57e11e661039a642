"""Cold latency of MAIL FROM on SPF trees shaped like today's records.

This module owns a corpus of synthetic SPF trees and the benchmark that
sends cold transactions through each of them to spfmilter and Debian's
pyspf-milter, with DNS answers held back by a round-trip time.  Today's
records are chains of includes (a hosted mailbox provider, a CRM,
newsletter services), so an evaluator that looks names up one at a time
waits for every lookup in turn, while the lookups that depend on no
earlier answer could be made side by side.  This benchmark shows how far
each milter is from that limit, per tree.

A tree is a named set of zone records, a sender (local part and domain),
the client address (the comparison's client) and its expected result,
which every transaction's header must show.  Its shape is computed from
the records by walking them in evaluation order, as far as an evaluation
goes (to the 11th DNS-querying term or the 3rd void lookup, RFC 7208
section 4.6.4):

- depth: the longest chain of lookups each of which needs an earlier
  answer: the sender's record, then the records of its include and
  redirect targets, then the A, MX and exists lookups of their mechanisms,
  then the addresses of MX exchanges.  Every tree matches the client, if
  at all, at its last lookup, so the whole walk is needed for the verdict
  and depth x RTT is the least time any evaluator can take: the limit;
- lookups: how many a left-to-right evaluation makes; one at a time, that
  is lookups x RTT.

Cold: every transaction puts a label of its own (``t123.``) in front of
every name of the tree, the names inside its records and its HELO name
included, so no cache answers anything while the shape stays the same.
The DNS server counts the queries per transaction by that label.

Measured, per tree, per round-trip time and per target (one transaction at
a time, the targets taking turns): the time from MAIL to the reply to RCPT
as the MTA sees it (both milters evaluate at MAIL), its p50 and p95, the
ratio of p50 to depth x RTT, and the DNS queries per transaction for the
sender's tree and for the HELO name.  Neither milter refuses anything
(spfmilter in dry run, pyspf-milter with Mail_From_reject = False), so every
transaction reaches end of message and is checked there.

HELO: by default it is evaluated too, as both milters do by default, with a
new name per transaction whose record lists the client's network (one TXT
query).  spfmilter evaluates it beside MAIL FROM, so it adds no round trip
to a tree; pyspf-milter evaluates it first, one round trip more.
``--helo off`` turns the HELO check off in both.

Run from the repository root, as root (pyspf-milter runs in a mount
namespace and resolves through port 53 of a loopback address)::

    .venv/bin/python -m benchmarks.bench_trees                # quick, ~2.5 minutes
    .venv/bin/python -m benchmarks.bench_trees --full         # ~7 minutes
    .venv/bin/python -m benchmarks.bench_trees --rtt-ms 20 --trees nested4,esp --json

Everything listens on unix sockets in a temporary directory or on
127.0.0.0/8; every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.benchdns import SYSTEM_DNS_ADDRESS, BenchDNS
from benchmarks.clientpool import (
    CLIENT_TIMEOUT,
    ERROR_SAMPLES,
    BadReply,
    check_transaction,
    start_session,
)
from benchmarks.milterproc import percentile
from benchmarks.report import closing_lines, json_text, load_average, say
from benchmarks.targets import (
    EXPECTATIONS,
    PYSPF,
    SPFMILTER,
    SPFMILTER_PREFETCH,
    TARGET_TITLES,
    Target,
    log_findings,
    package_version,
    preflight,
    pyspf_dns_library,
    pyspf_milter_env,
    started_targets,
)
from benchmarks.workloads import CLIENT_IP, CLIENT_NET, RCPT
from spfmilter import __version__ as spfmilter_version
from testkit.milterclient import MilterClient, MilterError, Response

# ---------------------------------------------------------------- the corpus

# Stands for the transaction's own label in every name and record.
PREFIX = "{p}"
LOCAL_PART = "alice"
HELO_NAME = "{p}mta.helo.test"
# RFC 7208 section 4.6.4.
TERM_LIMIT = 10
VOID_LIMIT = 2

ZoneTemplate = Mapping[str, Sequence[object]]


def _txt(record: str) -> dict[str, object]:
    return {"TXT": record}


def _mailbox_provider(last_range: str) -> dict[str, list[object]]:
    """A hosted mailbox provider's policy: one record naming two range
    records, the second ending with last_range (two includes deep)."""
    return {
        "{p}spf.mailhost.test": [
            _txt("v=spf1 include:{p}spf-a.mailhost.test include:{p}spf-b.mailhost.test -all")
        ],
        "{p}spf-a.mailhost.test": [
            _txt("v=spf1 ip4:198.18.0.0/20 ip4:198.18.16.0/20 ip6:2001:db8:10::/48 -all")
        ],
        "{p}spf-b.mailhost.test": [
            _txt(f"v=spf1 ip4:198.18.32.0/20 ip4:{last_range} ip6:2001:db8:11::/48 -all")
        ],
    }


# A CRM and two newsletter services, the first of those nested; none lists the client.
_ESP_SERVICES: dict[str, list[object]] = {
    "{p}_spf.crm.test": [_txt("v=spf1 ip4:198.18.64.0/22 ip4:198.18.68.0/22 -all")],
    "{p}mail.news1.test": [_txt("v=spf1 include:{p}ips.news1.test ~all")],
    "{p}ips.news1.test": [_txt("v=spf1 ip4:198.18.72.0/21 -all")],
    "{p}servers.news2.test": [_txt("v=spf1 ip4:198.18.80.0/21 ?all")],
}
_OTHER_MAILBOX_RANGE = "198.18.48.0/20"


@dataclass(frozen=True)
class Tree:
    """One sender domain's SPF tree; PREFIX in any name or value stands for
    the transaction's label."""

    name: str
    shape: str
    sender_domain: str
    records: ZoneTemplate
    expected: str  # the SPF result for CLIENT_IP (RFC 7208 section 2.6)

    def zone(self, prefix: str) -> dict[str, list[object]]:
        """The tree's zone data (and the HELO name's) for one transaction."""
        helo = {HELO_NAME: [_txt(f"v=spf1 ip4:{CLIENT_NET} -all")]}
        return {
            name.replace(PREFIX, prefix): [_with_prefix(entry, prefix) for entry in entries]
            for name, entries in {**self.records, **helo}.items()
        }


def _with_prefix(value: object, prefix: str) -> object:
    if isinstance(value, str):
        return value.replace(PREFIX, prefix)
    if isinstance(value, list):
        return [_with_prefix(v, prefix) for v in value]
    if isinstance(value, dict):
        return {k: _with_prefix(v, prefix) for k, v in value.items()}
    return value


def _nested4() -> dict[str, list[object]]:
    ranges = ("198.18.104.0/24", "198.18.105.0/24", "198.18.106.0/24", CLIENT_NET)
    records: dict[str, list[object]] = {
        "{p}nested.test": [
            _txt(
                "v=spf1 include:{p}a.nested.test include:{p}b.nested.test "
                "include:{p}c.nested.test include:{p}d.nested.test -all"
            )
        ]
    }
    for letter, network in zip("abcd", ranges, strict=True):
        records[f"{PREFIX}{letter}.nested.test"] = [
            _txt(f"v=spf1 include:{PREFIX}{letter}2.nested.test -all")
        ]
        records[f"{PREFIX}{letter}2.nested.test"] = [_txt(f"v=spf1 ip4:{network} -all")]
    return records


CORPUS: tuple[Tree, ...] = (
    Tree(
        "mailbox",
        "hosted mailbox: include of a provider record that includes two range records",
        "{p}mailbox.test",
        {
            "{p}mailbox.test": [_txt("v=spf1 include:{p}spf.mailhost.test -all")],
            **_mailbox_provider(CLIENT_NET),
        },
        "pass",
    ),
    Tree(
        "esp",
        "own range, then 5 ESP includes (mailbox provider two deep, one newsletter "
        "service nested); the client in the last",
        "{p}esp.test",
        {
            "{p}esp.test": [
                _txt(
                    "v=spf1 ip4:203.0.113.0/26 include:{p}spf.mailhost.test "
                    "include:{p}_spf.crm.test include:{p}mail.news1.test "
                    "include:{p}servers.news2.test include:{p}_spf.txn.test ~all"
                )
            ],
            **_mailbox_provider(_OTHER_MAILBOX_RANGE),
            **_ESP_SERVICES,
            "{p}_spf.txn.test": [_txt(f"v=spf1 ip4:198.18.88.0/22 ip4:{CLIENT_NET} -all")],
        },
        "pass",
    ),
    Tree(
        "a-mx",
        "own `a` and `mx` (three exchanges); the client is none of them: a forged sender",
        "{p}amx.test",
        {
            "{p}amx.test": [
                _txt("v=spf1 a mx ip4:203.0.113.0/26 -all"),
                {"A": "192.0.2.10"},
                {"MX": [10, "{p}mx1.amx.test"]},
                {"MX": [20, "{p}mx2.amx.test"]},
                {"MX": [30, "{p}mx3.amx.test"]},
            ],
            "{p}mx1.amx.test": [{"A": "192.0.2.21"}],
            "{p}mx2.amx.test": [{"A": "192.0.2.22"}],
            "{p}mx3.amx.test": [{"A": "192.0.2.23"}],
        },
        "fail",
    ),
    Tree(
        "limit",
        "5 ESP includes (two nested, one with two `a:`), then `a` naming the client: "
        "the 11th DNS term",
        "{p}limit.test",
        {
            "{p}limit.test": [
                _txt(
                    "v=spf1 include:{p}spf.mailhost.test include:{p}_spf.crm.test "
                    "include:{p}mail.news1.test include:{p}servers.news2.test "
                    "include:{p}_spf.helpdesk.test a ~all"
                ),
                {"A": CLIENT_IP},
            ],
            **_mailbox_provider(_OTHER_MAILBOX_RANGE),
            **_ESP_SERVICES,
            "{p}_spf.helpdesk.test": [
                _txt("v=spf1 a:{p}out1.helpdesk.test a:{p}out2.helpdesk.test -all")
            ],
            "{p}out1.helpdesk.test": [{"A": "198.18.120.1"}],
            "{p}out2.helpdesk.test": [{"A": "198.18.120.2"}],
        },
        "permerror",
    ),
    Tree(
        "void",
        "an include, then `a:` for three retired hosts before the client's range: "
        "the 3rd void lookup",
        "{p}void.test",
        {
            "{p}void.test": [
                _txt(
                    "v=spf1 include:{p}_spf.crm.test a:{p}old1.void.test a:{p}old2.void.test "
                    f"a:{{p}}old3.void.test ip4:{CLIENT_NET} -all"
                )
            ],
            **_ESP_SERVICES,
        },
        "permerror",
    ),
    Tree(
        "redirect",
        "redirect to the domain's own policy, which redirects to a provider's ranges; ~all",
        "{p}redirect.test",
        {
            "{p}redirect.test": [_txt("v=spf1 redirect={p}_spf.redirect.test")],
            "{p}_spf.redirect.test": [_txt("v=spf1 redirect={p}spf.provider.test")],
            "{p}spf.provider.test": [_txt("v=spf1 ip4:198.18.96.0/20 ip4:203.0.113.128/25 ~all")],
        },
        "softfail",
    ),
    Tree(
        "exists",
        "per-sender authorisation: `exists:%{i}._ip.%{l}._user.%{d}`",
        "{p}exists.test",
        {
            "{p}exists.test": [_txt("v=spf1 exists:%{i}._ip.%{l}._user.%{d} -all")],
            f"{CLIENT_IP}._ip.{LOCAL_PART}._user.{PREFIX}exists.test": [{"A": "127.0.0.2"}],
        },
        "pass",
    ),
    Tree(
        "nested4",
        "4 includes, each with one nested include; the client in the last nested record",
        "{p}nested.test",
        _nested4(),
        "pass",
    ),
)


# ---------------------------------------------------------------- the shape


@dataclass(frozen=True)
class Shape:
    """What a left-to-right evaluation of a tree looks up."""

    depth: int  # the longest chain of lookups that wait for an earlier answer
    lookups: int
    terms: int  # DNS-querying terms reached
    voids: int  # lookups that found nothing
    stop: str  # where the evaluation stops at an RFC 7208 limit, if it does


class _LimitReached(Exception):
    """The evaluation ends here with permerror (RFC 7208 section 4.6.4)."""


_MACRO = re.compile(r"%\{([a-z])\}")


class _Walk:
    """The lookups of an evaluation that matches nothing before its end."""

    def __init__(self, zone: ZoneTemplate, sender_domain: str) -> None:
        self.zone = zone
        self.sender_domain = sender_domain
        self.depth = self.lookups = self.terms = self.voids = 0

    def lookup(self, name: str, rtype: str, level: int) -> list[object]:
        self.lookups += 1
        self.depth = max(self.depth, level)
        found = [
            entry[rtype]
            for entry in self.zone.get(name, ())
            if isinstance(entry, Mapping) and rtype in entry
        ]
        if not found:
            self.voids += 1
            if self.voids > VOID_LIMIT:
                raise _LimitReached(f"void lookup {self.voids} of {VOID_LIMIT}")
        return found

    def term(self) -> None:
        self.terms += 1
        if self.terms > TERM_LIMIT:
            raise _LimitReached(f"DNS term {self.terms} of {TERM_LIMIT}")

    def record(self, domain: str, level: int) -> None:
        """Walk domain's record, read by a lookup at chain position level."""
        records = [str(t) for t in self.lookup(domain, "TXT", level) if str(t).startswith("v=spf1")]
        if len(records) != 1:
            raise ValueError(f"{domain}: {len(records)} SPF records")
        redirect = ""
        for term in records[0].split()[1:]:
            if term.startswith("redirect="):
                redirect = term.removeprefix("redirect=")  # evaluated after the mechanisms
                continue
            mechanism, _, argument = term.lstrip("+-~?").partition(":")
            mechanism = mechanism.partition("/")[0]
            target = self.expand(argument.partition("/")[0], domain) or domain
            if mechanism in ("ip4", "ip6", "all"):
                continue
            self.term()
            if mechanism == "include":
                self.record(target, level + 1)
            elif mechanism in ("a", "exists"):
                self.lookup(target, "A", level + 1)
            elif mechanism == "mx":
                exchanges = self.lookup(target, "MX", level + 1)
                for _, exchange in sorted(x for x in exchanges if isinstance(x, list)):
                    self.lookup(str(exchange), "A", level + 2)
            else:
                raise ValueError(f"{domain}: {term!r} is not modelled")
        if redirect:
            self.term()
            self.record(redirect, level + 1)

    def expand(self, spec: str, domain: str) -> str:
        """The macros the corpus uses: %{i}, %{l}, %{d}, %{o} (RFC 7208 section 7)."""
        values = {"i": CLIENT_IP, "l": LOCAL_PART, "d": domain, "o": self.sender_domain}
        return _MACRO.sub(lambda m: values[m.group(1)], spec)


def shape_of(tree: Tree) -> Shape:
    sender_domain = tree.sender_domain.replace(PREFIX, "")
    walk = _Walk(tree.zone(""), sender_domain)
    try:
        walk.record(sender_domain, 1)
    except _LimitReached as limit:
        return Shape(walk.depth, walk.lookups, walk.terms, walk.voids, str(limit))
    return Shape(walk.depth, walk.lookups, walk.terms, walk.voids, "")


# ---------------------------------------------------------------- measuring

TARGET_NAMES = (SPFMILTER, SPFMILTER_PREFETCH, PYSPF)
HELO_MODES = ("cold", "off")
# Neither milter refuses: every transaction reaches end of message and its
# header.  SPFMILTER runs without the prefetch, SPFMILTER_PREFETCH with it.
SPFMILTER_OPTIONS = {
    "cold": (("policy", "dry_run", "yes"), ("dns", "prefetch", "no")),
    "off": (
        ("policy", "dry_run", "yes"),
        ("policy", "helo_check", "no"),
        ("dns", "prefetch", "no"),
    ),
}
PYSPF_OVERRIDES = {
    "cold": {"Mail_From_reject": "False"},
    "off": {"Mail_From_reject": "False", "HELO_reject": "No_Check"},
}
# The goal for an evaluator that looks up side by side what it can.
GOAL_VS_LIMIT = 1.25


class _StepClock(MilterClient):
    """The milter client, noting when MAIL goes out and RCPT's reply is in."""

    mail_sent = 0.0
    rcpt_answered = 0.0

    def mail(self, sender: str, *esmtp: str) -> Response:
        self.mail_sent = time.perf_counter()
        return super().mail(sender, *esmtp)

    def rcpt(self, rcpt: str, *esmtp: str) -> Response:
        response = super().rcpt(rcpt, *esmtp)
        self.rcpt_answered = time.perf_counter()
        return response


@dataclass(frozen=True)
class Sample:
    seconds: float  # MAIL sent to RCPT answered
    tree_queries: int
    helo_queries: int


def _label(number: int) -> str:
    """The label in front of every name of transaction number."""
    return f"t{number}"


def transaction(dns: BenchDNS, target: Target, tree: Tree, number: int) -> Sample:
    """One connection with one message from tree's sender, its names under _label(number)."""
    label = _label(number)
    helo = HELO_NAME.replace(PREFIX, label + ".")
    domain = tree.sender_domain.replace(PREFIX, label + ".")
    dns.clear_queries()
    with _StepClock(target.unix.socket, timeout=CLIENT_TIMEOUT) as client:
        connect = start_session(client, helo)
        result = client.transaction(f"<{LOCAL_PART}@{domain}>", [RCPT])
    check_transaction(EXPECTATIONS[target.name], result, helo, domain, connect, tree.expected)
    asked = [name for name, _, _ in dns.queries() if label in name.split(".")]
    helo_queries = asked.count(helo)
    return Sample(client.rcpt_answered - client.mail_sent, len(asked) - helo_queries, helo_queries)


@dataclass(frozen=True)
class TreeStats:
    """One target on one tree at one round-trip time."""

    tree: str
    rtt_ms: float
    target: str
    depth: int
    limit_ms: float  # depth x RTT
    one_at_a_time_ms: float  # lookups x RTT
    transactions: int
    errors: int
    error_samples: list[str]
    p50_ms: float
    p95_ms: float
    min_ms: float
    max_ms: float
    vs_limit: float  # p50 / limit
    tree_queries_per_tx: float
    helo_queries_per_tx: float


def measure_tree(
    dns: BenchDNS,
    targets: Mapping[str, Target],
    tree: Tree,
    shape: Shape,
    rtt_ms: float,
    count: int,
    numbers: Iterator[int],
) -> list[TreeStats]:
    """count transactions per target after one unmeasured, the targets taking turns."""
    plan = {name: [next(numbers) for _ in range(count + 1)] for name in targets}
    zone: dict[str, list[object]] = {}
    for number in itertools.chain.from_iterable(plan.values()):
        zone.update(tree.zone(_label(number) + "."))
    dns.set_extra_zone(zone)
    samples: dict[str, list[Sample]] = {name: [] for name in targets}
    errors: dict[str, list[str]] = {name: [] for name in targets}
    order = list(targets)
    for i in range(count + 1):
        for name in order if i % 2 == 0 else order[::-1]:
            try:
                sample = transaction(dns, targets[name], tree, plan[name][i])
            except (MilterError, BadReply) as exc:
                errors[name].append(f"{type(exc).__name__}: {exc}")
                continue
            if i:  # the first is the warm-up
                samples[name].append(sample)
    return [_stats(tree, shape, rtt_ms, name, samples[name], errors[name]) for name in targets]


def _stats(
    tree: Tree, shape: Shape, rtt_ms: float, target: str, samples: list[Sample], errors: list[str]
) -> TreeStats:
    times = sorted(s.seconds * 1000 for s in samples)
    limit = shape.depth * rtt_ms

    def mean(values: Sequence[int]) -> float:
        return sum(values) / len(values) if values else math.nan

    p50 = percentile(times, 0.50) if times else math.nan
    return TreeStats(
        tree=tree.name,
        rtt_ms=rtt_ms,
        target=target,
        depth=shape.depth,
        limit_ms=limit,
        one_at_a_time_ms=shape.lookups * rtt_ms,
        transactions=len(times),
        errors=len(errors),
        error_samples=errors[:ERROR_SAMPLES],
        p50_ms=p50,
        p95_ms=percentile(times, 0.95) if times else math.nan,
        min_ms=times[0] if times else math.nan,
        max_ms=times[-1] if times else math.nan,
        vs_limit=p50 / limit,
        tree_queries_per_tx=mean([s.tree_queries for s in samples]),
        helo_queries_per_tx=mean([s.helo_queries for s in samples]),
    )


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class CorpusEntry:
    tree: str
    shape: str
    expected: str
    depth: int
    lookups: int
    terms: int
    voids: int
    stop: str


@dataclass
class Report:
    transactions: int  # per tree, round-trip time and target
    rtts_ms: list[float]
    helo: str
    python: str
    spfmilter_version: str
    pyspf_milter_version: str
    pyspf_milter_dns: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    corpus: list[CorpusEntry] = field(default_factory=list)
    stats: list[TreeStats] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.problems)


def run(args: argparse.Namespace) -> Report:
    preflight(args.system_dns_address)
    trees = [tree for tree in CORPUS if tree.name in args.trees]
    shapes = {tree.name: shape_of(tree) for tree in trees}
    with tempfile.TemporaryDirectory(prefix="bench_trees.") as tmp:
        workdir = Path(tmp)
        pyspf_env = pyspf_milter_env(workdir, "system")
        report = Report(
            transactions=args.transactions,
            rtts_ms=args.rtt_ms,
            helo=args.helo,
            python=platform.python_version(),
            spfmilter_version=spfmilter_version,
            pyspf_milter_version=package_version("pyspf-milter"),
            pyspf_milter_dns=pyspf_dns_library(pyspf_env),
            load_before=os.getloadavg(),
            corpus=[
                CorpusEntry(tree.name, tree.shape, tree.expected, **dataclasses.asdict(shape))
                for tree, shape in zip(trees, shapes.values(), strict=True)
            ],
        )
        dns = BenchDNS({}, 0, args.system_dns_address)
        dns.start()
        try:
            say("starting daemons")
            with started_targets(
                workdir,
                dns,
                SPFMILTER_OPTIONS[args.helo],
                pyspf_env,
                names=TARGET_NAMES,
                inet=False,
                pyspf_overrides=PYSPF_OVERRIDES[args.helo],
            ) as targets:
                numbers = itertools.count()
                for rtt_ms in args.rtt_ms:
                    dns.set_delay(rtt_ms / 1000)
                    for tree in trees:
                        stats = measure_tree(
                            dns,
                            targets,
                            tree,
                            shapes[tree.name],
                            rtt_ms,
                            args.transactions,
                            numbers,
                        )
                        report.stats += stats
                        say(f"{tree.name} at {rtt_ms:g} ms: " + "; ".join(map(_progress, stats)))
                report.problems, report.notes = log_findings(targets)
        finally:
            dns.stop()
    report.problems[:0] = [
        f"{s.tree}/{s.rtt_ms:g} ms/{s.target}: {s.errors} errors, e.g. "
        + "; ".join(s.error_samples)
        for s in report.stats
        if s.errors
    ]
    report.load_after = os.getloadavg()
    return report


# ---------------------------------------------------------------- output


def _progress(s: TreeStats) -> str:
    return (
        f"{s.target} p50 {s.p50_ms:.0f} ms ({s.vs_limit:.2f}x depth x RTT), "
        f"{s.tree_queries_per_tx:.1f} queries, {s.errors} errors"
    )


def markdown(report: Report) -> str:
    helo = {
        "cold": "HELO evaluated too, a new name per transaction (one TXT query; spfmilter "
        "evaluates it beside MAIL FROM, pyspf-milter before it)",
        "off": "HELO check off in both",
    }[report.helo]
    lines = [
        f"spfmilter {report.spfmilter_version}, pyspf-milter {report.pyspf_milter_version} "
        f"(DNS through {report.pyspf_milter_dns}), Python {report.python}; "
        f"{report.transactions} cold transactions per tree, round-trip time and target after "
        f"one unmeasured, one at a time, targets taking turns; {helo}; "
        f"{load_average(report.load_before, report.load_after)}.",
        "",
        "| tree | shape | expected | depth | lookups | DNS terms | void lookups |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for c in report.corpus:
        stop = f" at {c.stop}" if c.stop else ""
        lines.append(
            f"| {c.tree} | {c.shape} | {c.expected}{stop} | {c.depth} | {c.lookups} "
            f"| {c.terms} | {c.voids} |"
        )
    by_key = {(s.tree, s.rtt_ms, s.target): s for s in report.stats}
    titles = " | ".join(
        f"{TARGET_TITLES[t]} p50 / p95 ms | p50 / limit | queries/tx" for t in TARGET_NAMES
    )
    lines += [
        "",
        "MAIL FROM step (MAIL sent to RCPT answered) as the MTA sees it; limit = depth x RTT, "
        "one at a time = lookups x RTT; queries/tx are the sender's tree's (HELO apart).",
        "",
        f"| tree | RTT ms | limit ms | one at a time ms | {titles} |",
        "|---|---:|---:|---:|" + "---:|---:|---:|" * len(TARGET_NAMES),
    ]
    for rtt_ms in report.rtts_ms:
        for c in report.corpus:
            cells = []
            first = by_key.get((c.tree, rtt_ms, TARGET_NAMES[0]))
            if first is None:
                continue
            for target in TARGET_NAMES:
                s = by_key[c.tree, rtt_ms, target]
                failed = " **FAILED**" if s.errors else ""
                cells.append(
                    f"{s.p50_ms:.0f} / {s.p95_ms:.0f}{failed} | {s.vs_limit:.2f}x "
                    f"| {s.tree_queries_per_tx:.1f}"
                )
            lines.append(
                f"| {c.tree} | {rtt_ms:g} | {first.limit_ms:.0f} | {first.one_at_a_time_ms:.0f} | "
                + " | ".join(cells)
                + " |"
            )
    helo_queries = {
        t: [s.helo_queries_per_tx for s in report.stats if s.target == t] for t in TARGET_NAMES
    }
    lines += [
        "",
        "HELO queries per transaction: "
        + ", ".join(f"{t} {min(q):.1f}-{max(q):.1f}" for t, q in helo_queries.items() if q)
        + ".",
    ]
    for target in (SPFMILTER, SPFMILTER_PREFETCH):
        spf = [s for s in report.stats if s.target == target]
        met = [s for s in spf if s.vs_limit <= GOAL_VS_LIMIT]
        if spf:
            lines.append(
                f"{TARGET_TITLES[target]} p50 <= {GOAL_VS_LIMIT:g} x depth x RTT: {len(met)} "
                f"of {len(spf)} (tree, RTT) pairs"
                + (": " + ", ".join(f"{s.tree}/{s.rtt_ms:g} ms" for s in spf if s not in met))
                * (len(met) < len(spf))
                + "."
            )
    return "\n".join(lines + closing_lines(report.notes, report.problems))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_trees",
        description="Cold MAIL FROM latency of spfmilter and pyspf-milter on realistic SPF "
        "trees, against depth x round-trip time.",
    )
    parser.add_argument(
        "--transactions", type=int, default=10, help="per tree, round-trip time and target"
    )
    parser.add_argument("--full", action="store_true", help="--transactions 30 (about 7 minutes)")
    parser.add_argument(
        "--rtt-ms",
        type=lambda s: [float(x) for x in s.split(",") if x.strip()],
        default=[20.0, 100.0],
        help="comma-separated round-trip times, each applied to every DNS answer",
    )
    parser.add_argument(
        "--trees",
        type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
        default=[tree.name for tree in CORPUS],
        help=f"comma-separated subset of {','.join(tree.name for tree in CORPUS)}",
    )
    parser.add_argument(
        "--helo", choices=HELO_MODES, default="cold", help="cold: evaluated too; off: not checked"
    )
    parser.add_argument("--system-dns-address", default=SYSTEM_DNS_ADDRESS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--json-file", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if args.full:
        args.transactions = 30
    unknown = set(args.trees) - {tree.name for tree in CORPUS}
    if unknown:
        parser.error(f"unknown trees: {', '.join(sorted(unknown))}")
    if args.transactions < 1 or not args.rtt_ms or min(args.rtt_ms) <= 0:
        parser.error("--transactions and every --rtt-ms must be positive")
    report = run(args)
    text = json_text({**dataclasses.asdict(report), "failed": report.failed})
    if args.json_file is not None:
        args.json_file.write_text(text + "\n")
    print(text if args.json else markdown(report))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
