"""pyspf behind bounds: check_host() for one identity, as an SpfOutcome.

This module owns the only ``import spf`` in spfmilter, and the bounds put on
pyspf: what it reads from DNS passes through :meth:`Checker.pyspf_lookup`,
which refuses SPF records it would spend unbounded CPU on (pyspf's domain
checks take time growing with the square of a label's length), drops
explanation texts too long to expand cheaply, writes the modifier names
pyspf would miss in lower case, and stops an evaluation that used up its
CPU budget (the CPU its prefetch spent for it included).  Each SPF record
and MX answer an evaluation reads is also handed to that evaluation's
prefetch, which asks ahead for what comes next.  Outcomes are kept for
reuse while the records they read hold.  pyspf reads two module globals
(its DNS lookup function and the void lookup limit);
:meth:`Checker.install` sets them once at start-up, before any milter
thread runs, and nothing changes them afterwards (callbacks run in parallel
threads).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence

import spf

from spfmilter.core.metrics import Metrics
from spfmilter.core.model import Identity, SpfOutcome, SpfQuery, SpfResult
from spfmilter.evaluation.cpubudget import CPU_BUDGET, CpuBudget
from spfmilter.evaluation.prefetch import Prefetch, Prefetcher
from spfmilter.evaluation.resolver import Answers, DnsLimitError, DnsTempError, Record
from spfmilter.evaluation.results import MAX_RESULT_SECONDS, Results

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
    the same query until the shortest TTL among the records the evaluation
    read runs out; temperrors and evaluations stopped by the CPU budget are
    not kept.  `cpu_clock` measures the calling thread's CPU time.  With
    `prefetcher`, each SPF record an evaluation reads has the lookups of its
    terms asked for ahead (they only warm the cache `answers` reads).
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
        prefetcher: Prefetcher | None = None,
    ) -> None:
        self._answers = answers
        self._prefetcher = prefetcher
        self._results = Results(results_bytes, clock, metrics) if results_bytes else None
        self._budget = CpuBudget(cpu_budget, cpu_clock)
        self._clock = clock
        # Per thread, of the evaluation running in it: the earliest expiry
        # of what it read, and whether its outcome may be kept.
        self._local = threading.local()

    def install(self, void_lookup_limit: int) -> None:
        """Route all of pyspf's DNS lookups through this checker.

        Called once at start-up before any thread starts (pyspf keeps these
        as module globals).
        """
        spf.DNSLookup = self.pyspf_lookup
        spf.MAX_VOID_LOOKUPS = void_lookup_limit
        self._budget.install()

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
        prefetch: Prefetch | None = getattr(self._local, "prefetch", None)
        if qtype in ("TXT", "SPF"):
            texts = [_for_pyspf(r) for r in records if _acceptable_text(name, r)]
            if prefetch is not None and qtype == "TXT":
                prefetch.read(name, records, evaluating=True)
            return texts
        if prefetch is not None and qtype == "MX":
            prefetch.exchanges(name, records)
        return records

    def _within_budget(self) -> None:
        """Raise PermError when the evaluation in this thread has used up
        its CPU budget (the prefetch's CPU for it included)."""
        prefetch: Prefetch | None = getattr(self._local, "prefetch", None)
        if self._budget.spent(prefetch.cpu_seconds if prefetch is not None else 0.0):
            self._local.keep = False  # a verdict of this machine's load, not of DNS
            raise spf.PermError(
                f"evaluation needed more than {self._budget.seconds:g} s of CPU; stopped"
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
        return self._results is not None and self._results.known(query)

    def check(self, query: SpfQuery, lookup_time: float) -> SpfOutcome:
        """Run check_host() (RFC 7208 section 4) for one identity.

        For Identity.HELO the sender is postmaster@<helo> (section 2.3); for
        MAIL_FROM it is the query's MAIL FROM.  `lookup_time` bounds the DNS
        time of the whole evaluation (section 4.6.4); running out yields
        temperror.
        """
        if query.identity is Identity.HELO and not is_checkable_helo(query.helo):
            return SpfOutcome(query.identity, SpfResult.NONE, query.helo, _sender(query))
        kept = self._results.get(query) if self._results is not None else None
        if kept is not None:
            return kept
        started = self._clock()
        local = self._local
        local.expiry = started + MAX_RESULT_SECONDS
        local.keep = True
        prefetcher = self._prefetcher
        local.prefetch = (
            prefetcher.start(query.client_ip, started + lookup_time) if prefetcher else None
        )
        self._budget.start()
        try:
            outcome = self._evaluate(query, lookup_time, started)
        finally:
            self._budget.stop()
            if local.prefetch is not None:
                local.prefetch.close()
                local.prefetch = None
        if self._results is not None and local.keep and outcome.result is not SpfResult.TEMPERROR:
            self._results.keep(query, outcome, local.expiry - self._clock())
        return outcome

    def _evaluate(self, query: SpfQuery, lookup_time: float, started: float) -> SpfOutcome:
        """pyspf's check_host(), its answer as an SpfOutcome."""
        helo_identity = query.identity is Identity.HELO
        evaluation = spf.query(
            i=str(query.client_ip),
            s="" if helo_identity else query.mail_from,
            h=query.helo,
            receiver=query.receiver,
            querytime=lookup_time,
        )
        result, _code, explanation = evaluation.check()
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
        return SpfOutcome(
            identity=query.identity,
            result=outcome,
            domain=evaluation.o,
            sender=_sender(query),
            mechanism=evaluation.mechanism,
            explanation=explanation or None,
            problem=problem,
            lookup_seconds=elapsed,
        )


def _sender(query: SpfQuery) -> str:
    """The address check_host() is given: postmaster@<helo> for the HELO
    identity (RFC 7208 section 2.3), the MAIL FROM otherwise."""
    return f"postmaster@{query.helo}" if query.identity is Identity.HELO else query.mail_from


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


def spf_text(name: str, records: Sequence[Record]) -> bytes | None:
    """The SPF record among `records`, the TXT answer for `name`, that an
    evaluation would go on with: one within the limits above, or None
    (none, several, or one refused: RFC 7208 section 4.5)."""
    texts = []
    for record in records:
        (_, kind), value = record
        if kind != "TXT" or not isinstance(value, tuple | list):
            continue
        text = b"".join(part for part in value if isinstance(part, bytes))
        if _SPF_RECORD.match(text):
            texts.append((record, text))
    if len(texts) != 1:
        return None
    try:
        _acceptable_text(name, texts[0][0])
    except spf.PermError:
        return None  # refused: the evaluation ends there, so does the prefetch
    return texts[0][1]


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
