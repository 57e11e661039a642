"""The DNS resolver that every SPF lookup goes through.

This module owns how spfmilter asks DNS: the servers of [dns] (or of
/etc/resolv.conf) tried in order within a time budget, the mapping of DNS
outcomes (NXDOMAIN and NODATA are empty answers; timeouts and server
failures are temporary errors, RFC 7208 sections 4.4 and 5), which records
of a reply are believed (only the queried name's CNAME chain and the records
at its end), how many are accepted at all, and a thread-safe cache shared by
all connections, bounded in bytes, that honours record TTLs (RFC 1035
section 3.2.1, RFC 2308 for negative answers) and keeps nothing, a refusal
included, longer than its TTL or a day.  It also owns the questions in
flight: a lookup of a name and type already being asked (by the prefetch or
another evaluation) waits for that answer instead of asking again.  The
bytes on the wire are dnswire's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from spfmilter.config.schema import DnsConfig
from spfmilter.core.metrics import Metrics
from spfmilter.evaluation import dnswire
from spfmilter.evaluation.ttlcache import TtlCache

log = logging.getLogger("spfmilter.dns")

# One record as the SPF evaluator consumes it: ((owner name, type), value)
# with value an address or name (str), an MX (preference, exchange), or the
# character-strings of a TXT record (tuple of bytes).
Record = tuple[tuple[str, str], object]

# RFC 2308 section 5: negative answers are cached for the SOA minimum; cap
# both kinds so a mistaken huge TTL cannot pin stale data for days.  A
# refused answer holds no data either: it is kept like a negative one, so a
# zone that mends its records is believed within minutes.
MAX_TTL = 86400
NEGATIVE_TTL_CAP = 900

# A CNAME chain longer than this is not followed further (RFC 1034 section
# 3.6.2 asks resolvers to bound it; dnspython and BIND use similar limits).
MAX_CHAIN = 8

# Records of the asked type accepted in one answer (the codec stops reading
# an answer section past them).
MAX_ANSWER_RECORDS = dnswire.MAX_ANSWER_RECORDS

# The lookup function handed to the session: (name, type, time budget or
# None) -> records.
Lookup = Callable[[str, str, float | None], Sequence[Record]]
# The same, also saying until when (a clock() time) the records hold: the
# checker's, which keeps SPF results no longer than the data they came from.
Answers = Callable[[str, str, float | None], tuple[Sequence[Record], float]]

# How a question reaches a server: (server, name in wire format, type code,
# deadline, clock) -> reply (dnswire.exchange; tests inject their own).
Exchange = Callable[[tuple[str, int], bytes, int, float, Callable[[], float]], dnswire.Reply]


class DnsTempError(Exception):
    """A lookup that could not be answered now (timeout, SERVFAIL, ...)."""


class DnsTimeout(DnsTempError):
    """No answer within the time allowed."""


class DnsLimitError(Exception):
    """An answer larger than spfmilter accepts: a permanent condition, for
    as long as the answer's TTL says (`expiry`, a clock() time)."""

    def __init__(self, message: str, expiry: float = 0.0) -> None:
        super().__init__(message)
        self.expiry = expiry


class _Flight:
    """A question on its way: whoever asks the same waits for `done`, then
    takes its `entry` (or its `error`), instead of asking again."""

    __slots__ = ("done", "entry", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: tuple[float, tuple[Record, ...], str | None] | None = None
        self.error: DnsTempError | None = None


class Answer(NamedTuple):
    """What one query yielded: records, how long to keep them, their memory
    footprint, and the error to raise instead when the answer was refused.

    Kept in the cache as a plain tuple of plain tuples and strings: the
    garbage collector stops tracking such tuples, so a full cache costs a
    collection nothing (a collection is charged to whichever thread runs
    it, an SPF evaluation's CPU budget among them).
    """

    records: tuple[Record, ...]
    ttl: int
    footprint: int
    refused: str | None = None


class Resolver:
    """Thread-safe lookups with a shared TTL cache bounded in bytes.

    `cache_bytes` is the cache's bound (default: [dns] cache_size).
    """

    def __init__(
        self,
        config: DnsConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        exchange: Exchange = dnswire.exchange,
        cache_bytes: int | None = None,
    ) -> None:
        self._exchange = exchange
        self._servers = tuple((ns.address, ns.port) for ns in config.nameservers) or (
            dnswire.system_nameservers()
        )
        self._timeout = config.timeout
        self._clock = clock
        limit = config.cache_size if cache_bytes is None else cache_bytes
        # (name, type) -> (expiry, records, refusal)
        self._cache: TtlCache[tuple[float, tuple[Record, ...], str | None]] = TtlCache(limit, clock)
        self._metrics = metrics
        # (name, type) -> the question on its way; entries leave when answered.
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._flights_lock = threading.Lock()

    def lookup(self, name: str, qtype: str, budget: float | None = None) -> Sequence[Record]:
        """Records of `qtype` at `name`, the CNAMEs on the way included.

        `budget` bounds this lookup's time (the caller's remaining lookup
        time); each server gets at most the per-query timeout of [dns].
        Raises DnsTempError when DNS cannot answer now, DnsLimitError for
        an answer larger than accepted.
        """
        return self.answer(name, qtype, budget)[0]

    def answer(
        self, name: str, qtype: str, budget: float | None = None
    ) -> tuple[Sequence[Record], float]:
        """lookup(), and the clock() time until which the records hold."""
        try:
            expiry, records, refused = self._entry(name, qtype, budget)
        except DnsTempError as error:
            log.warning("%s", error)
            raise
        if refused is not None:
            raise DnsLimitError(refused, expiry)
        return records, expiry

    def prefetch(self, name: str, qtype: str, budget: float) -> Sequence[Record] | None:
        """lookup() for the prefetch: it warms the cache and tells what it
        found, None for an answer that could not be had or was refused.
        Its failures are not the evaluation's: they are logged at debug
        level (an evaluation that needs the same answer asks again and says
        so)."""
        try:
            _, records, refused = self._entry(name, qtype, budget)
        except DnsTempError as error:
            log.debug("prefetch: %s", error)
            return None
        return None if refused is not None else records

    def cached(self, name: str, qtype: str) -> bool:
        """Whether an answer for `name` and `qtype` is in the cache now."""
        return self._cache.get((name.lower().rstrip("."), qtype.upper())) is not None

    def _entry(
        self, name: str, qtype: str, budget: float | None
    ) -> tuple[float, tuple[Record, ...], str | None]:
        """The cache entry for the question, asked for when missing; a
        question already in flight is waited for (within `budget`), not
        asked twice."""
        key = (name.lower().rstrip("."), qtype.upper())
        entry = self._cache.get(key)
        if entry is not None:
            self._metrics.cache_hits.inc()
            return entry
        with self._flights_lock:
            # Again under the lock: the flight that just landed put its
            # answer in the cache before it left the table.
            entry = self._cache.get(key)
            flight = self._flights.get(key)
            owner = entry is None and flight is None
            if owner:
                flight = self._flights[key] = _Flight()
        if entry is not None:
            self._metrics.cache_hits.inc()
            return entry
        assert flight is not None
        if not owner:
            return self._wait(flight, key, budget)
        self._metrics.cache_misses.inc()
        try:
            answer = self._query(key[0], key[1], budget)
            entry = (self._clock() + answer.ttl, answer.records, answer.refused)
            self._cache.put(key, entry, answer.ttl, answer.footprint)
            flight.entry = entry
            return entry
        except DnsTempError as error:
            flight.error = error
            raise
        finally:
            with self._flights_lock:
                del self._flights[key]
            flight.done.set()

    def _wait(
        self, flight: _Flight, key: tuple[str, str], budget: float | None
    ) -> tuple[float, tuple[Record, ...], str | None]:
        """The answer of a question someone else asked: what it yielded, a
        timeout when it does not land within `budget` (the asker's own
        budget ends it in any case)."""
        if not flight.done.wait(budget):
            raise DnsTimeout(f"DNS timeout looking up {key[0]} {key[1]}")
        if flight.error is not None:
            raise type(flight.error)(str(flight.error))
        self._metrics.cache_hits.inc()
        assert flight.entry is not None
        return flight.entry

    @property
    def cached_bytes(self) -> int:
        """The estimated memory held by the cache now."""
        return self._cache.bytes

    def _query(self, name: str, qtype: str, budget: float | None) -> Answer:
        started = self._clock()
        outcome = "error"
        try:
            answer = self._resolve(name, qtype, budget)
            outcome = "refused" if answer.refused else "answer" if answer.records else "empty"
            return answer
        except DnsTempError as error:
            outcome = "timeout" if isinstance(error, DnsTimeout) else "failure"
            raise
        finally:
            self._metrics.dns_queries.labels(qtype, outcome).inc()
            self._metrics.dns_seconds.labels(qtype).observe(self._clock() - started)

    def _resolve(self, name: str, qtype: str, budget: float | None) -> Answer:
        try:
            qname = dnswire.encode_name(name)
        except dnswire.BadName:
            # A name that cannot be put on the wire (from a hostile MAIL FROM
            # or macro expansion) has no records (RFC 7208 section 4.3); it
            # must not become a temperror that defers the mail forever.
            return Answer((), 0, 0)
        code = dnswire.QTYPES[qtype]
        now = self._clock()
        deadline = now + (budget if budget is not None else self._timeout * len(self._servers))
        problems = []
        for server in self._servers:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            try:
                reply = self._exchange(
                    server, qname, code, self._clock() + min(self._timeout, remaining), self._clock
                )
            except dnswire.Unreachable as error:
                problems.append(f"{server[0]}: {error}")
                continue
            except dnswire.WireError as error:
                problems.append(f"{server[0]}: malformed reply: {error}")
                continue
            if reply.rcode in (dnswire.NOERROR, dnswire.NXDOMAIN):
                return _answer(reply, name, dnswire.name_text(qname), qtype)
            problems.append(f"{server[0]}: {dnswire.RCODE_NAMES.get(reply.rcode, reply.rcode)}")
        if not problems or all(p.endswith(": timeout") for p in problems):
            raise DnsTimeout(f"DNS timeout looking up {name} {qtype}")
        raise DnsTempError(f"DNS server failure looking up {name} {qtype}: {'; '.join(problems)}")


def _answer(reply: dnswire.Reply, name: str, asked: str, qtype: str) -> Answer:
    """The records of `reply` that answer `name`: its CNAME chain and the
    records of `qtype` at the chain's end; nothing owned by other names
    (an answer section may carry records nobody asked for, RFC 2181
    section 5.4.1, and the SPF evaluator would believe and cache them).

    Records owned by the queried name are keyed by the name as asked: macro
    expansion can put characters in a name (spaces, RFC 7208 section 7.3)
    whose text form differs, and the evaluator looks answers up by the name
    it asked for.
    """
    code = dnswire.QTYPES[qtype]
    if reply.oversized:
        refused = (
            f"DNS answer for {name} {qtype} has too many records: at most "
            f"{MAX_ANSWER_RECORDS} of its type and {dnswire.MAX_SECTION_RECORDS} in all "
            "are accepted"
        )
        # The records read say how long the refusal holds (none read: it is
        # not kept); the rest of the answer, its authority section among
        # it, was not read.
        ttl = min(min((rr.ttl for rr in reply.answer), default=0), NEGATIVE_TTL_CAP)
        return Answer((), ttl, footprint(name, ()) + _STR_BYTES + len(refused), refused)

    def key(owner: str, kind: str) -> tuple[str, str]:
        return (name if owner == asked else owner, kind)

    records: list[Record] = []
    ttls: list[int] = []
    current, seen = asked, {asked}
    for _ in range(MAX_CHAIN):
        alias = next((rr for rr in reply.answer if rr.rtype == 5 and rr.owner == current), None)
        if alias is None:
            break
        records.append((key(current, "CNAME"), alias.value))
        ttls.append(alias.ttl)
        current = str(alias.value)
        if current in seen:
            # A CNAME loop is a fact about the data, not a server failure:
            # the evaluator sees a name without records (RFC 7208 section
            # 5.5 skips such PTR names).
            break
        seen.add(current)
    found = [rr for rr in reply.answer if rr.rtype == code and rr.owner == current]
    records.extend((key(rr.owner, qtype), rr.value) for rr in found)
    ttls.extend(rr.ttl for rr in found)
    ttl = min(min(ttls), MAX_TTL) if found else _negative_ttl(reply)
    return Answer(tuple(records), ttl, footprint(name, records))


# What CPython (64-bit) spends, measured with tracemalloc: a cache entry's
# ordered-dict slot, key, expiry and tuples (measured on negative answers,
# which hold nothing else); per record its two tuples and its place in the
# entry; a str 49 bytes and a bytes 33 plus their length, a tuple 40 plus 8
# per item.
_ENTRY_BYTES = 490
_RECORD_BYTES = 120
_TUPLE_BYTES = 40
_STR_BYTES = 49
_BYTES_BYTES = 33


def footprint(name: str, records: Sequence[Record]) -> int:
    """The memory a cache entry for `name` holding `records` takes, so that
    [dns] cache_size bounds the process's memory, not a count.  Owners
    equal to `name` share its string."""
    total = _ENTRY_BYTES + _STR_BYTES + len(name)
    for (owner, _), value in records:
        total += _RECORD_BYTES + (0 if owner == name else _STR_BYTES + len(owner))
        parts = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple):
            total += _TUPLE_BYTES + 8 * len(value)
        for part in parts:
            if isinstance(part, bytes):
                total += _BYTES_BYTES + len(part)
            elif isinstance(part, str):
                total += _STR_BYTES + len(part)
    return total


def _negative_ttl(reply: dnswire.Reply) -> int:
    for rr in reply.authority:
        if rr.rtype == 6 and isinstance(rr.value, int):
            return min(rr.ttl, rr.value, NEGATIVE_TTL_CAP)
    return 0
