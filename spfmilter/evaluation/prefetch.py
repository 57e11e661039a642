"""Asking DNS ahead of an SPF evaluation, within the evaluation's own limits.

This module owns the prefetch: when an evaluation reads an SPF record, the
names its DNS-querying terms will need are asked for side by side, so that
an evaluation that reads them one after the other finds them answered (or
on their way: the resolver's lookup waits for a question in flight rather
than asking again).  The answers only warm the resolver's cache; the
evaluation still reads every answer itself, so a result never depends on
the prefetch, nor do its RFC 7208 section 4.6.4 counts.

What it asks for, per record (RFC 7208 section 5): the TXT of `include:`
targets and of a `redirect=` target (none when the record has `all`, which
makes redirect= unused, section 6.1), the A or AAAA (the client's family)
of `a` targets, A of `exists` targets, the MX of `mx` targets and then the
A or AAAA of at most 10 of their exchanges (section 4.6.4: more than 10 is
a permerror, and then none is looked up).  Records read by the prefetch
itself are walked the same way, so a tree's lookups come in as many round
trips as the tree is deep.  Not asked for: domain-specs with macros
(section 7; their expansion needs the evaluation's state, %{p} even its
lookups, so none is expanded ahead), `ptr` (it needs the client's PTR
answer first, and section 5.5 discourages it), `exp=` (read only after a
fail, section 6.2), and records with a term this module cannot parse
(pyspf refuses those before any lookup).

The bound (docs/security.md): one evaluation's prefetch asks for the names
of at most 10 DNS-querying terms in all, across the records it walks (the
section 4.6.4 limit, counted in the records' order as their answers come),
each name at most once, with at most 10 exchanges per MX answer; it stops
asking after more void answers than the evaluation would accept, and asks
nothing after the evaluation ends or its deadline passes.  At most
`in_flight` of its questions are on their way at a time, each in one of a
process-wide bounded pool of threads with one socket while it waits.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger("spfmilter.dns")

# RFC 7208 section 4.6.4: DNS-querying terms per evaluation, and MX
# exchanges per mx mechanism.
TERM_LIMIT = 10
MX_LIMIT = 10

# Questions one evaluation has on their way at a time (and so sockets), and
# threads per process answering prefetch questions (docs/security.md).
IN_FLIGHT = 8
THREADS = 32
THREADS_IDLE = 2.0

# The prefetch's lookup (Resolver.prefetch): (name, type, time budget) ->
# records, None when no answer could be had.
Fetch = Callable[[str, str, float], Sequence[tuple[tuple[str, str], object]] | None]
# Whether an answer is in the cache already (Resolver.cached).
Cached = Callable[[str, str], bool]
# The one SPF record among a name's TXT records that the evaluation would
# evaluate, as text, or None (Checker.spf_text: limits applied).
SpfText = Callable[[str, Sequence[tuple[tuple[str, str], object]]], bytes | None]

_TERM = re.compile(
    rb"[-+~?]?(a|mx|ptr|include|exists)(?::(\S*?))?((?:/\d+)?(?://\d+)?)", re.IGNORECASE
)
_OTHER_MECHANISM = re.compile(rb"[-+~?]?(?:all|ip4:[0-9./]+|ip6:[0-9a-f:./]+)", re.IGNORECASE)
_MODIFIER = re.compile(rb"([a-z][a-z0-9_.-]*)=(\S*)", re.IGNORECASE)
# A domain name a lookup can be made for: printable ASCII labels of 1-63
# octets, 253 in all, a top label that is no number (RFC 7208 section 4.3,
# pyspf checks the same before it asks).
_LABEL = rb"[!-~]{1,63}"
_NAME = re.compile(rb"(?=[!-~]{1,253}$)" + _LABEL + rb"(?:\." + _LABEL + rb")*")
_TOP_LABEL = re.compile(rb"[0-9a-z]*[a-z][0-9a-z]*|[0-9a-z]+-[0-9a-z-]*[0-9a-z]", re.IGNORECASE)


class Want(NamedTuple):
    """One lookup a term of a record needs: a name and a type."""

    name: str
    qtype: str


@dataclass(frozen=True)
class Reading:
    """What a record's terms will look up: `wants` in the record's order,
    and `terms`, the DNS-querying terms counted to find them (those with
    macros and `ptr` included, which ask nothing ahead); `leading`: the
    first of `wants` is the record's first lookup, which the evaluation
    reading the record makes at once itself."""

    wants: tuple[Want, ...]
    terms: int
    leading: bool = False


NOTHING = Reading((), 0)


def read_record(text: bytes, domain: str, address_type: str, term_budget: int) -> Reading:
    """The lookups the first `term_budget` DNS-querying terms of `text`, the
    SPF record of `domain`, will make first; `address_type` is "A" or
    "AAAA", the client's family (RFC 7208 section 5.3).  A record with a
    term not understood yields nothing (RFC 7208 section 4.6: a syntax
    error ends the evaluation before any lookup)."""
    terms = text.split()
    if not terms or terms[0].lower() != b"v=spf1":
        return NOTHING
    wants: list[Want] = []
    counted = 0
    leading = False
    redirect: bytes | None = None
    has_all = False
    for term in terms[1:]:
        mechanism = _TERM.fullmatch(term)
        if mechanism is None:
            if _OTHER_MECHANISM.fullmatch(term):
                has_all = has_all or term.lstrip(b"-+~?").lower() == b"all"
                continue
            modifier = _MODIFIER.fullmatch(term)
            if modifier is None:
                return NOTHING
            if modifier.group(1).lower() == b"redirect":
                if redirect is not None:
                    return NOTHING  # twice: a permerror (RFC 7208 section 6)
                redirect = modifier.group(2)
            continue
        kind = mechanism.group(1).lower()
        argument = mechanism.group(2)
        if argument is None and kind in (b"include", b"exists"):
            return NOTHING
        if counted == term_budget:
            continue  # beyond the limit: never evaluated (section 4.6.4)
        counted += 1
        target = _target(argument, domain)
        if target is None or kind == b"ptr":
            continue
        qtype = {b"include": "TXT", b"exists": "A", b"mx": "MX"}.get(kind, address_type)
        leading = leading or counted == 1
        wants.append(Want(target, qtype))
    if redirect is not None and not has_all and counted < term_budget:
        counted += 1
        target = _target(redirect, domain)
        if target is not None:
            leading = leading or counted == 1
            wants.append(Want(target, "TXT"))
    return Reading(tuple(wants), counted, leading)


def _target(spec: bytes | None, domain: str) -> str | None:
    """The name a domain-spec names, None when it cannot be known ahead
    (macros, RFC 7208 section 7) or names nothing that can be looked up."""
    if spec is None or spec == b"":
        return domain if spec is None else None
    if b"%" in spec:
        return None
    name = spec.rstrip(b".").lower()
    if not _NAME.fullmatch(name) or not _TOP_LABEL.fullmatch(name.rsplit(b".", 1)[-1]):
        return None
    if b"." not in name:
        return None
    return name.decode("ascii")


def address_type(client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The type of the address lookups of `a` and `mx` for this client:
    AAAA for IPv6, A for IPv4 and IPv4-mapped IPv6 (RFC 7208 section 5)."""
    if isinstance(client_ip, ipaddress.IPv6Address) and client_ip.ipv4_mapped is None:
        return "AAAA"
    return "A"


class Prefetcher:
    """The process's prefetch: the resolver's lookups and a bounded pool of
    threads, handed out per evaluation by `start`."""

    def __init__(
        self,
        fetch: Fetch,
        cached: Cached,
        spf_text: SpfText,
        pool: Executor,
        *,
        void_lookup_limit: int,
        in_flight: int = IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._fetch = fetch
        self._cached = cached
        self._spf_text = spf_text
        self._pool = pool
        self._void_lookup_limit = void_lookup_limit
        self._in_flight = in_flight
        self._clock = clock
        self._cpu_clock = cpu_clock

    def start(
        self, client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address, deadline: float
    ) -> Prefetch:
        """The prefetch of one evaluation for `client_ip`, ending at
        `deadline` (a clock() time) or when closed."""
        return Prefetch(self, address_type(client_ip), deadline)


class Prefetch:
    """One evaluation's prefetch: the records it walked, the terms it has
    left, and its questions waiting and on their way."""

    def __init__(self, owner: Prefetcher, address_type: str, deadline: float) -> None:
        self._owner = owner
        self._address_type = address_type
        self._deadline = deadline
        self._lock = threading.Lock()
        self._terms_left = TERM_LIMIT
        self._voids_left = owner._void_lookup_limit + 1
        self._asked: set[Want] = set()
        self._walked: set[str] = set()
        self._waiting: collections.deque[Want] = collections.deque()
        self._running = 0
        self._closed = False
        self._cpu_seconds = 0.0

    @property
    def asked(self) -> int:
        """How many questions this prefetch took on (tests count them)."""
        with self._lock:
            return len(self._asked)

    @property
    def cpu_seconds(self) -> float:
        """The CPU its threads spent for this evaluation, asking and reading
        answers: charged to the evaluation's CPU budget, so that a record
        gains no CPU by having its answers parsed in other threads."""
        with self._lock:
            return self._cpu_seconds

    def close(self) -> None:
        """The evaluation ended: nothing more is asked for (questions on
        their way end within the deadline and still warm the cache)."""
        with self._lock:
            self._closed = True
            self._waiting.clear()

    def read(
        self,
        domain: str,
        records: Sequence[tuple[tuple[str, str], object]],
        *,
        evaluating: bool = False,
    ) -> None:
        """`records`, the TXT answer for `domain`, were read: ask ahead for
        what the terms of its SPF record will look up.  `evaluating`: the
        evaluation read them and asks for the record's first lookup at once
        itself (asking it here too would only hand it to another thread)."""
        text = self._owner._spf_text(domain, records)
        if text is None:
            return
        name = domain.lower().rstrip(".")
        with self._lock:
            if self._closed or name in self._walked:
                return
            self._walked.add(name)
            reading = read_record(text, name, self._address_type, self._terms_left)
            self._terms_left -= reading.terms
            # The record itself is known: it is not asked for again.
            self._asked.add(Want(name, "TXT"))
            wants = reading.wants
            if evaluating and reading.leading:
                self._asked.add(wants[0])  # counted, and the evaluation's
                wants = wants[1:]
            self._queue(wants)
        self._pump()

    def exchanges(self, domain: str, records: Sequence[tuple[tuple[str, str], object]]) -> None:
        """`records`, the MX answer for `domain`, were read by the
        evaluation: ask for the exchanges' addresses side by side (it asks
        them one after the other), if the prefetch counted that mx term."""
        want = Want(domain.lower().rstrip("."), "MX")
        with self._lock:
            if want not in self._asked:
                return
        self._exchanges(records)

    def _queue(self, wants: Sequence[Want]) -> None:
        """Queue `wants` not asked yet nor answered from the cache (those
        the evaluation reads itself, and walks then).  Under the lock."""
        cached = self._owner._cached
        for want in wants:
            if want not in self._asked and not cached(want.name, want.qtype):
                self._asked.add(want)
                self._waiting.append(want)

    def _pump(self) -> None:
        """Hand waiting questions to the pool, at most `in_flight` at a time."""
        owner = self._owner
        jobs = []
        with self._lock:
            while (
                self._waiting
                and self._running < owner._in_flight
                and not self._closed
                and self._voids_left > 0
            ):
                jobs.append(self._waiting.popleft())
                self._running += 1
        for want in jobs:
            owner._pool.submit(self._ask, want)

    def _ask(self, want: Want) -> None:
        owner = self._owner
        cpu_started = owner._cpu_clock()
        try:
            budget = self._deadline - owner._clock()
            with self._lock:
                stopped = self._closed or budget <= 0 or self._voids_left <= 0
            if not stopped:
                records = owner._fetch(want.name, want.qtype, budget)
                if records is not None:
                    self._answered(want, records)
        except Exception:
            # The pool keeps a job's error to itself: said here, where it
            # happened.  The evaluation never depends on the prefetch.
            log.exception("internal error in the DNS prefetch of %s %s", want.name, want.qtype)
        finally:
            with self._lock:
                self._running -= 1
                self._cpu_seconds += owner._cpu_clock() - cpu_started
        self._pump()

    def _answered(self, want: Want, records: Sequence[tuple[tuple[str, str], object]]) -> None:
        """What an answer asks for next: the terms of an SPF record, the
        addresses of MX exchanges."""
        found = [value for (_, kind), value in records if kind == want.qtype]
        if not found:
            with self._lock:
                self._voids_left -= 1  # section 4.6.4: void lookups end an evaluation
            return
        if want.qtype == "TXT":
            self.read(want.name, records)
        elif want.qtype == "MX":
            self._exchanges(records)

    def _exchanges(self, records: Sequence[tuple[tuple[str, str], object]]) -> None:
        """Queue the addresses of the exchanges an MX answer names: at most
        10, none when it names more (section 4.6.4)."""
        exchanges = sorted(
            (value for (_, kind), value in records if kind == "MX" and isinstance(value, tuple)),
            key=lambda mx: (mx[0], str(mx[1])),
        )
        if len(exchanges) > MX_LIMIT:
            return  # a permerror before any exchange is looked up
        wants = [
            Want(name, self._address_type)
            for name in (str(mx[1]).lower().rstrip(".") for mx in exchanges if len(mx) == 2)
            if name
        ]
        with self._lock:
            if not self._closed:
                self._queue(wants)
        self._pump()
