"""The fleet recipe with the real part: daemons behind a shared Unbound.

docs/performance.md's scaling section has every spfmilter of a fleet name one caching
resolver in `[dns] nameservers`.  Here that resolver is Debian's own
`unbound`, run in the foreground on 127.0.0.1 with a private configuration
(testkit/unbound.py) that forwards the test zone to the authoritative
test server and refuses everything else.  The authoritative server's query
log shows what reached it: verdicts through Unbound are right, a record is
asked again only once its TTL has run out, and a second daemon is answered
from Unbound's cache.  Without unbound installed the tests are skipped, and
fail instead when CI is set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from testkit import unbound
from testkit.daemon import Daemon, Sections, config_text, wait_for
from testkit.dnsserver import ZONES, DNSTestServer, ZoneData, load_zone_file
from testkit.milterclient import TransactionResult, one_transaction
from tests.support.environment import unavailable

# The zone the transactions below ask about; Unbound forwards only this.
FORWARDED_ZONES = ("example.org.",)
CLIENT_IP = "198.51.100.7"  # one of "our servers" in testkit/zones/core.yaml
HELO = "helo-pass.example.org"
SHORT_TTL = 3  # seconds: the TTL test waits about this long
LONG_TTL = 300  # nothing expires during a test


@pytest.fixture(autouse=True)
def unbound_installed() -> None:
    if unbound.binary() is None:
        unavailable("unbound is not installed (Debian package unbound)")


@dataclass
class Fleet:
    """The authoritative server, Unbound in front of it, daemons asking Unbound."""

    workdir: Path
    authority: DNSTestServer
    resolver: unbound.Unbound
    daemons: list[Daemon] = field(default_factory=list)

    def daemon(self, sections: Sections | None = None) -> Daemon:
        """Start one more spfmilter whose only nameserver is Unbound."""
        merged = {**(sections or {})}
        merged["dns"] = {**merged.get("dns", {}), "nameservers": self.resolver.nameserver}
        daemon = Daemon(
            self.workdir / f"daemon{len(self.daemons)}", config_text(self.authority, merged)
        )
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def asked(self, name: str, qtype: str = "TXT") -> int:
        """How often the authoritative server was asked name/qtype."""
        return sum(1 for query in self.authority.queries if query[:2] == (name, qtype))


def fleet(workdir: Path, ttl: int, extra: ZoneData | None = None) -> Iterator[Fleet]:
    """Start the authority (core.yaml and `extra`) and Unbound; stop
    everything, by PID, afterwards.

    Neither the daemons nor Unbound may log a warning or an error.
    """
    zone = {**load_zone_file(ZONES / "core.yaml"), **(extra or {})}
    with DNSTestServer(zone, ttl=ttl) as authority:
        resolver = unbound.Unbound(workdir / "unbound", authority.nameserver, FORWARDED_ZONES)
        resolver.start()
        stack = Fleet(workdir, authority, resolver)
        try:
            yield stack
        finally:
            for daemon in stack.daemons:
                daemon.stop()
            resolver.stop()
        for daemon in stack.daemons:
            assert daemon.unexpected() == [], daemon.log_text()
        assert resolver.unexpected() == [], resolver.log_text()


@pytest.fixture
def long_ttl(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet(tmp_path, LONG_TTL)


@pytest.fixture
def short_ttl(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet(tmp_path, SHORT_TTL)


# Names of 121 labels and 254 octets below big.example.org, each holding
# 5,000 TXT records of one empty string: 65 KB, compressed as usual, which
# Unbound passes on whole.
BIG = ".".join(["a"] * 117) + ".big.example.org"
BIG_RECORDS = 5000


@pytest.fixture
def big_answers(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet(tmp_path, LONG_TTL, {f"*.{BIG}": [{"TXT": ""}] * BIG_RECORDS})


def transaction(daemon: Daemon, sender: str) -> TransactionResult:
    return one_transaction(daemon.socket, CLIENT_IP, HELO, sender, mta_name="mx.example.net")


def received_spf(result: TransactionResult) -> str:
    """The result word of the one Received-SPF header inserted."""
    assert result.eom is not None, result
    (header,) = [m.value for m in result.eom.modifications if m.name == "Received-SPF"]
    assert header is not None
    return header.split()[0]


def test_verdicts_through_unbound(long_ttl: Fleet) -> None:
    daemon = long_ttl.daemon()
    assert received_spf(transaction(daemon, "alice@spf-pass.example.org")) == "pass"
    assert received_spf(transaction(daemon, "bob@spf-softfail.example.org")) == "softfail"
    # A name with an A record and no TXT: NODATA through Unbound is "none".
    assert received_spf(transaction(daemon, "carol@spf-none.example.org")) == "none"
    failed = transaction(daemon, "mallory@spf-fail.example.org")
    reply = failed.rcpts[0][1]
    assert reply.kind == "replycode" and reply.text is not None, failed
    assert reply.text.startswith("550 5.7.23 "), reply.text
    # Each answer came from the authority through Unbound, asked once.
    for name in ("spf-pass", "spf-softfail", "spf-none", "spf-fail", "helo-pass"):
        assert long_ttl.asked(f"{name}.example.org") == 1, long_ttl.authority.queries
    assert len(daemon.verdicts()) == 4


def test_unbound_refuses_names_outside_the_test_zone(long_ttl: Fleet) -> None:
    # Its configuration lets nothing leave 127.0.0.0/8: any other name is
    # refused by Unbound itself, without a query to anyone.
    before = len(long_ttl.authority.queries)
    question = DNSRecord.question("example.com.", "TXT")
    port = long_ttl.resolver.port
    answer = DNSRecord.parse(question.send("127.0.0.1", port, timeout=5))
    assert answer.header.rcode == RCODE.REFUSED
    assert len(long_ttl.authority.queries) == before


def test_ttl_is_honoured_through_unbound(short_ttl: Fleet) -> None:
    # Without the daemon's own cache every lookup goes to Unbound, so the
    # authority's log shows Unbound's caching alone.
    daemon = short_ttl.daemon({"dns": {"cache_size": "0"}})
    name = "spf-pass.example.org"
    first_start = time.monotonic()
    assert received_spf(transaction(daemon, f"alice@{name}")) == "pass"
    first_end = time.monotonic()
    assert short_ttl.asked(name) == 1
    # Poll with transactions until the authority is asked again.  Each poll
    # is a real lookup through Unbound; no fixed sleep decides anything.
    deadline = first_end + SHORT_TTL + 10
    polls = 0
    while True:
        start = time.monotonic()
        assert received_spf(transaction(daemon, f"alice@{name}")) == "pass"
        end = time.monotonic()
        polls += 1
        if short_ttl.asked(name) > 1:
            break
        assert end < deadline, f"{name} never asked again: {short_ttl.authority.queries}"
        time.sleep(0.1)  # the pace of polling, not a wait for an event
    print(
        f"TTL {SHORT_TTL} s: asked again after {start - first_end:.2f}-{end - first_start:.2f} s,"
        f" {polls - 1} lookups answered from Unbound's cache before"
    )
    # Not before the TTL ran out: the second query came in a poll that ended
    # at least SHORT_TTL seconds after the first transaction began.
    assert end - first_start >= SHORT_TTL, (end - first_start, polls)
    # And soon after it: Unbound's clock has whole seconds, so a record is
    # served for at most one second past its TTL (plus the polling pace).
    assert start - first_end <= SHORT_TTL + 3, (start - first_end, polls)
    assert short_ttl.asked(name) == 2
    assert polls > 1  # the record was served from Unbound's cache in between


def test_second_daemon_is_answered_from_unbounds_cache(long_ttl: Fleet) -> None:
    first = long_ttl.daemon()
    assert received_spf(transaction(first, "alice@spf-pass.example.org")) == "pass"
    names = ("spf-pass.example.org", "helo-pass.example.org")
    assert [long_ttl.asked(name) for name in names] == [1, 1]
    cached_before = [r for r in long_ttl.resolver.replies() if r.cached]

    # A new process, with an empty cache of its own: it asks Unbound, and
    # Unbound answers from its cache without asking the authority again.
    second = long_ttl.daemon()
    assert received_spf(transaction(second, "alice@spf-pass.example.org")) == "pass"
    assert [long_ttl.asked(name) for name in names] == [1, 1], long_ttl.authority.queries
    expected = {(name, "TXT", "NOERROR") for name in names}

    def answered_from_cache() -> bool:
        cached = [r for r in long_ttl.resolver.replies() if r.cached][len(cached_before) :]
        return {(r.name, r.qtype, r.rcode) for r in cached} >= expected

    # Unbound may write its log line just after the reply went out.
    wait_for(answered_from_cache, 5, f"Unbound's log of cached answers to {expected}")
    assert len(second.verdicts()) == 1


def test_huge_answers_through_unbound_cost_milliseconds(big_answers: Fleet) -> None:
    # Each transaction asks for two such answers (HELO and MAIL FROM, new
    # names each time): about 1 s of the daemon's CPU before, when all
    # 5,000 records were read, each owner walked through its 121 labels.
    # Unbound fetches each over TCP from the test server.
    daemon = big_answers.daemon({"dns": {"timeout": "5", "lookup_time": "10"}})
    transactions = 3
    # The test server is slow to build such answers on a busy machine: Unbound
    # fetches them first, so that the daemon's lookups meet only its cache.
    for n in range(transactions):
        big_answers.resolver.prime(f"h{n}.{BIG}")
        big_answers.resolver.prime(f"m{n}.{BIG}")
    before = daemon.cpu_seconds()
    for n in range(transactions):
        result = one_transaction(
            daemon.socket, CLIENT_IP, f"h{n}.{BIG}", f"a@m{n}.{BIG}", mta_name="mx.example.net"
        )
        assert received_spf(result) == "permerror"
    spent = (daemon.cpu_seconds() - before) / transactions
    assert spent < 0.25, f"{spent:.2f} s of CPU per transaction"
    # Unbound fetched the whole answer (over TCP) to pass it on.
    assert (f"m0.{BIG}", "TXT", "tcp") in big_answers.authority.queries
