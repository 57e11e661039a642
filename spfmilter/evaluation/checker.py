"""Evaluates one SPF identity with pyspf and returns an SpfOutcome value.

This module owns the only ``import spf`` in spfmilter, and the bounds put on
pyspf: what it reads from DNS passes through :meth:`Checker.lookup`, which
refuses SPF records it would spend unbounded CPU on (pyspf's domain checks
take time growing with the square of a label's length), drops explanation
texts too long to expand cheaply, writes the modifier names pyspf would miss
in lower case, and stops an evaluation whose CPU time exceeds a budget (the
lookups' own, parsing included, counts).  pyspf reads two module globals
(its DNS lookup function and the void lookup limit); :meth:`Checker.install`
sets them once at start-up, before any milter thread runs, and nothing
changes them afterwards (callbacks run in parallel threads).
"""

from __future__ import annotations

import dataclasses
import gc
import re
import threading
import time
from collections.abc import Callable, Sequence

import spf

from spfmilter.core.metrics import Metrics
from spfmilter.core.model import Identity, SpfOutcome, SpfQuery, SpfResult
from spfmilter.evaluation.resolver import Answers, DnsLimitError, DnsTempError, Record
from spfmilter.evaluation.ttlcache import TtlCache

# RFC 7208 section 4.3 / RFC 1035 section 2.3.1: a domain the HELO identity
# can be checked for.  Address literals ("[192.0.2.1]") and bare words are
# not, and yield "none" without a DNS query (section 2.3).
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_FQDN = re.compile(rf"(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})+\.?")

# Limits on what pyspf is given (docs/security.md).  RFC
# 7208 section 3.4 asks for records small enough for one UDP datagram; real
# records stay well below these.
MAX_RECORD_LENGTH = 4096
# RFC 1035 section 2.3.4: a label has at most 63 octets.  pyspf's check of a
# mechanism's domain takes time growing with the square of a label's length
# (a 62 KB label took 55 s), so longer ones are refused before it looks.
MAX_LABEL_LENGTH = 63
# A term: a domain-spec of 253 characters (RFC 7208 section 7.3) with its
# mechanism name, qualifier, CIDR lengths and some macros.  pyspf's macro
# check of a term takes time growing with its dots times its length.
MAX_TERM_LENGTH = 320
# An exp= text (RFC 7208 section 6.2) is expanded in time growing with its
# number of dots times its length; a longer one is treated as absent.
MAX_EXPLANATION_LENGTH = 1024
# An outcome is kept at most this long, however long its records live
# (spfmilter.evaluation.resolver caps record TTLs the same way).
MAX_RESULT_SECONDS = 86400
# CPU seconds one evaluation may use, checked before and after each DNS
# lookup (which parses the answer in the evaluating thread); a normal one
# takes about a millisecond.  Garbage collection is not counted: a
# collection is charged to whichever thread happens to run it.
CPU_BUDGET = 0.1

_SPF_RECORD = re.compile(rb"v=spf1( |$)", re.IGNORECASE)
# Mechanisms and modifiers whose argument is a domain-spec (RFC 7208 5, 6).
_DOMAIN_TERM = re.compile(
    rb"[-+~?]?(?:(?:a|mx|ptr|include|exists):|(?:redirect|exp)=)(\S*)", re.IGNORECASE
)
# RFC 7208 section 4.6.1: modifier names are case-insensitive.  pyspf 2.0.14
# compares them with "redirect" and "exp" as written, so "REDIRECT=" would be
# an unknown modifier, ignored (section 6), and the domain's policy lost.  A
# term starts after a space (section 4.6.1's terms = *( 1*SP ...)).
_MODIFIER_NAME = re.compile(rb"(?<= )(redirect|exp)(?==)", re.IGNORECASE)


class Checker:
    """pyspf behind spfmilter's resolver, with the limits above.

    `answers` is the resolver's lookup that also says until when the
    records hold.  With `results_bytes`, outcomes are kept and reused for
    the same query (an SPF result depends only on the query's inputs and
    on DNS data, RFC 7208 section 4.1) until the shortest TTL among the
    records the evaluation read runs out; temperrors and evaluations stopped
    by the CPU budget are not kept.  `cpu_clock` measures the calling
    thread's CPU time.
    """

    def __init__(
        self,
        answers: Answers,
        *,
        metrics: Metrics | None = None,
        results_bytes: int = 0,
        cpu_budget: float = CPU_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._answers = answers
        self._metrics = metrics
        self._results: TtlCache[SpfOutcome] | None = (
            TtlCache(results_bytes, clock) if results_bytes else None
        )
        self._cpu_budget = cpu_budget
        self._clock = clock
        self._cpu_clock = cpu_clock
        # Per thread: the evaluation running in it (CPU deadline, the
        # earliest expiry of what it read, whether its outcome may be kept),
        # and the CPU its garbage collections took (gc_seconds, gc_started).
        self._local = threading.local()

    def install(self, void_lookup_limit: int) -> None:
        """Route all of pyspf's DNS lookups through this checker.

        Called once at start-up before any thread starts (pyspf keeps these
        as module globals).
        """
        spf.DNSLookup = self.pyspf_lookup
        spf.MAX_VOID_LOOKUPS = void_lookup_limit
        if self.gc_phase not in gc.callbacks:
            gc.callbacks.append(self.gc_phase)

    def gc_phase(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks: account the CPU of a collection to the thread's GC."""
        now = self._cpu_clock()
        if phase == "start":
            self._local.gc_started = now
            return
        started = getattr(self._local, "gc_started", None)
        if started is not None:
            self._local.gc_seconds = self._gc_seconds() + now - started
            self._local.gc_started = None

    def _gc_seconds(self) -> float:
        seconds: float = getattr(self._local, "gc_seconds", 0.0)
        return seconds

    def _work(self) -> float:
        # This thread's CPU time, its garbage collections left out.
        return self._cpu_clock() - self._gc_seconds()

    def pyspf_lookup(
        self, name: str, qtype: str, strict: object, timeout: float
    ) -> Sequence[Record]:
        """pyspf's DNSLookup: (name, qtype, strict, timeout), where timeout is
        what is left of the evaluation's time budget."""
        self._within_budget()
        try:
            records, expiry = self._answers(name, qtype, timeout)
        except DnsTempError as error:
            raise spf.TempError(str(error)) from None
        except DnsLimitError as error:
            # A refusal holds only as long as the answer refused would have.
            self._read_until(error.expiry)
            raise spf.PermError(str(error)) from None
        self._read_until(expiry)
        self._within_budget()
        if qtype in ("TXT", "SPF"):
            return [_for_pyspf(r) for r in records if _acceptable_text(name, r)]
        return records

    def _within_budget(self) -> None:
        """Raise PermError when the evaluation in this thread has used up
        its CPU budget."""
        local = self._local
        cpu_deadline: float | None = getattr(local, "cpu_deadline", None)
        if cpu_deadline is not None and self._work() > cpu_deadline:
            local.keep = False  # a verdict of this machine's load, not of DNS
            raise spf.PermError(
                f"evaluation needed more than {self._cpu_budget:g} s of CPU; stopped"
            )

    def _read_until(self, expiry: float) -> None:
        """The evaluation in this thread read data that holds until `expiry`."""
        local = self._local
        local.expiry = min(getattr(local, "expiry", expiry), expiry)

    def known(self, query: SpfQuery) -> bool:
        """Whether check() can answer `query` at once, without DNS: a HELO
        that is no domain, or a result kept from before."""
        if query.identity is Identity.HELO and not is_checkable_helo(query.helo):
            return True
        return self._results is not None and self._results.get(query) is not None

    def check(self, query: SpfQuery, lookup_time: float) -> SpfOutcome:
        """Run check_host() (RFC 7208 section 4) for one identity.

        For Identity.HELO the sender is postmaster@<helo> (section 2.3); for
        MAIL_FROM it is the query's MAIL FROM.  `lookup_time` bounds the DNS
        time of the whole evaluation (section 4.6.4); running out yields
        temperror.
        """
        identity, helo = query.identity, query.helo
        if identity is Identity.HELO:
            sender = f"postmaster@{helo}"
            if not is_checkable_helo(helo):
                return SpfOutcome(identity, SpfResult.NONE, helo, sender)
        else:
            sender = query.mail_from
        if self._results is not None:
            kept = self._results.get(query)
            if self._metrics is not None:
                hits = self._metrics.result_cache_hits
                (hits if kept is not None else self._metrics.result_cache_misses).inc()
            if kept is not None:
                return kept
        started = self._clock()
        local = self._local
        local.cpu_deadline = self._work() + self._cpu_budget
        local.expiry = started + MAX_RESULT_SECONDS
        local.keep = True
        try:
            evaluation = spf.query(
                i=str(query.client_ip),
                s="" if identity is Identity.HELO else sender,
                h=helo,
                receiver=query.receiver,
                querytime=lookup_time,
            )
            result, _code, explanation = evaluation.check()
        finally:
            local.cpu_deadline = None
        elapsed = self._clock() - started
        outcome = SpfResult(result)
        problem = None
        if outcome in (SpfResult.PERMERROR, SpfResult.TEMPERROR):
            problem = explanation
            explanation = None
        elif explanation == spf.EXPLANATIONS.get(result):
            # pyspf fills in its stock wording when the domain gave no exp=
            # (RFC 7208 section 6.2); only the domain's own text is reported.
            explanation = None
        checked = SpfOutcome(
            identity=identity,
            result=outcome,
            domain=evaluation.o,
            sender=sender,
            mechanism=evaluation.mechanism,
            explanation=explanation or None,
            problem=problem,
            lookup_seconds=elapsed,
        )
        if self._results is not None and local.keep and outcome is not SpfResult.TEMPERROR:
            kept = dataclasses.replace(checked, lookup_seconds=0.0)
            self._results.put(query, kept, local.expiry - self._clock(), _size(query, kept))
        return checked


# A kept outcome with its query, as CPython holds them (measured like the
# DNS cache's entries, spfmilter.evaluation.resolver.footprint), plus their strings.
_RESULT_BYTES = 700


def _size(query: SpfQuery, outcome: SpfOutcome) -> int:
    texts = (query.helo, query.mail_from, query.receiver, outcome.domain, outcome.sender)
    extra = (outcome.mechanism, outcome.explanation, outcome.problem)
    return _RESULT_BYTES + sum(len(t) for t in texts) + sum(len(t) for t in extra if t)


def _acceptable_text(name: str, record: Record) -> bool:
    """Whether a TXT record may reach pyspf; raises PermError for an SPF
    record beyond the limits (RFC 7208 section 4.6: a record that cannot
    be evaluated is a permerror)."""
    (_, kind), value = record
    if kind not in ("TXT", "SPF") or not isinstance(value, tuple | list):
        return True
    text = b"".join(part for part in value if isinstance(part, bytes))
    if not _SPF_RECORD.match(text):
        # An explanation (or any other text): too long means absent.
        return len(text) <= MAX_EXPLANATION_LENGTH
    if len(text) > MAX_RECORD_LENGTH:
        raise spf.PermError(
            f"SPF record of {name} has {len(text)} characters; "
            f"at most {MAX_RECORD_LENGTH} are accepted"
        )
    for term in text.split():
        if len(term) > MAX_TERM_LENGTH:
            raise spf.PermError(
                f"SPF record of {name} has a term longer than {MAX_TERM_LENGTH} "
                f"characters: {term[:60].decode('ascii', 'replace')!r}..."
            )
        match = _DOMAIN_TERM.fullmatch(term)
        if match and any(len(label) > MAX_LABEL_LENGTH for label in match.group(1).split(b".")):
            raise spf.PermError(
                f"SPF record of {name} has a label longer than {MAX_LABEL_LENGTH} "
                f"characters in {term[:60].decode('ascii', 'replace')!r}"
            )
    return True


def _for_pyspf(record: Record) -> Record:
    """`record` with the names of its redirect= and exp= modifiers in lower
    case, as pyspf recognises them; nothing else of it changes (macros and
    domain-specs keep their case, other modifiers stay as they are)."""
    (_, kind), value = record
    if kind not in ("TXT", "SPF") or not isinstance(value, tuple | list):
        return record
    text = b"".join(part for part in value if isinstance(part, bytes))
    if not _SPF_RECORD.match(text):
        return record
    lowered = _MODIFIER_NAME.sub(lambda name: name[0].lower(), text)
    return record if lowered == text else (record[0], (lowered,))


def is_checkable_helo(helo: str) -> bool:
    """Whether a HELO argument is a domain name SPF can be checked for."""
    return bool(_FQDN.fullmatch(helo))
