"""Carrying out a Plan: the skip facts, then HELO and MAIL FROM, on one deadline.

This module owns how the SPF work of one MTA command is done: the DNS facts
a plan's skips ask for first (a fact found ends the evaluation), then the
identities, HELO first, with MAIL FROM evaluated in a pool thread beside
HELO when both are needed and neither answers at once (a transaction then
waits for its DNS once, not twice), and MAIL FROM left out after a HELO
result that refuses (the plan says which).  Everything shares one deadline,
[dns] lookup_time from the start of the command: the MTA times a milter
command as a whole (Postfix's milter_command_timeout, 30 s).  It also wires
the resolver and the pyspf adapter into an evaluator, once per process.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from spfmilter.config.orgdomain import PublicSuffixes
from spfmilter.config.schema import Config, DnsConfig
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import (
    Connection,
    Identity,
    Outcomes,
    Plan,
    RescueResult,
    SkipFacts,
    SpfOutcome,
    SpfQuery,
)
from spfmilter.evaluation import clientfacts, prefetch, rescuetext
from spfmilter.evaluation.pool import IdlingPool
from spfmilter.evaluation.pyspf import Checker, spf_text
from spfmilter.evaluation.rescue import RESCUE_SECONDS, Rescuer, RescueSettings
from spfmilter.evaluation.resolver import DnsLimitError, DnsTempError, Record, Resolver

# What it logs is about one session's transaction, under the name those
# lines have always carried (the text and JSON formats print it).
log = logging.getLogger("spfmilter.session")

# Evaluates one identity (Checker.check): the query and the seconds of DNS
# time it may take.
Check = Callable[[SpfQuery, float], SpfOutcome]
# The resolver's lookup: (name, type, time budget) -> records.
Lookup = Callable[[str, str, float | None], Sequence[Record]]

# Threads per process evaluating MAIL FROM beside HELO: one per transaction
# in its first evaluation, at most this many; beyond, transactions evaluate
# one identity after the other.  A thread idle this long ends.
BACKGROUND_THREADS = 32
BACKGROUND_IDLE = 2.0

# [dns] cache_size holds both caches: this share of it for SPF results, the
# rest for DNS answers.
RESULT_SHARE = 4


class Evaluator:
    """Carries out plans with a checker and a lookup shared by the
    process's sessions.  `known` says whether `check` answers a query at
    once; `background` runs MAIL FROM beside HELO (None: one after the
    other)."""

    def __init__(
        self,
        check: Check,
        lookup: Lookup,
        metrics: Metrics,
        *,
        lookup_time: float,
        known: Callable[[SpfQuery], bool] = lambda query: False,
        background: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._lookup = lookup
        self._metrics = metrics
        self._lookup_time = lookup_time
        self._known = known
        self._background = background
        self._clock = clock

    def evaluate(
        self, plan: Plan, conn: Connection, mail_from: str, helo: SpfOutcome | None, conn_id: int
    ) -> Outcomes:
        """The Outcomes of `plan` for `mail_from` from the client of `conn`;
        `helo` is the HELO identity's outcome already known for this HELO
        (RFC 7208 section 2.3: computed once per HELO)."""
        if plan.skip is not None:
            return Outcomes()
        # RFC 7208 section 4.6.4 asks for at least 20 s per evaluation; the
        # identities of one command share it, and the HELO result is
        # reused across transactions.
        command = _Command(
            self._check, self._lookup, self._clock, conn, self._clock() + self._lookup_time
        )
        facts = self._skip_facts(plan, command, conn_id) if plan.needs_facts else SkipFacts()
        if facts.found:
            return Outcomes(facts)
        early = self._mail_from_beside_helo(plan, command, mail_from, helo)
        if not plan.helo:
            helo = None
        elif helo is None:
            helo = command.check(Identity.HELO, "")
        outcome = None
        if plan.mail_from and (helo is None or helo.result not in plan.final_helo_results):
            outcome = self._collect(early) if early is not None else None
            if outcome is None:
                outcome = command.check(Identity.MAIL_FROM, mail_from)
        elif early is not None and not early.cancel():
            # HELO decided: the MAIL FROM result is not needed.  It finishes
            # within the same budgets (its result is kept); a failure is
            # still reported.
            early.add_done_callback(functools.partial(self._report_unused, conn_id))
        return Outcomes(facts, helo, outcome)

    def rescue(
        self, message: bytes, mail_from: str, conn: Connection, config: Config
    ) -> RescueResult:
        """Whether `message` is rescued from its MAIL FROM fail (see
        spfmilter.evaluation.rescue), in the calling thread (its CPU budget
        is that thread's time), within RESCUE_SECONDS: well inside the
        MTA's end-of-message timeouts (Postfix's milter_content_timeout and
        Sendmail's E timeout, 300 s), DNS answers and refusals as for SPF."""
        settings = config.rescue
        rescuer = Rescuer(
            RescueSettings(settings.dkim, frozenset(settings.arc_trusted_sealers)),
            config.suffixes or PublicSuffixes(problem="not loaded"),
            self._lookup,
            temporary=(DnsTempError,),
            refused=(DnsLimitError,),
            clock=self._clock,
        )
        _, _, domain = mail_from.rpartition("@")
        outcome = rescuer.check(message, domain, self._clock() + RESCUE_SECONDS)
        return rescuetext.summary(outcome, conn.client_ip)

    def _skip_facts(self, plan: Plan, command: _Command, conn_id: int) -> SkipFacts:
        ip = command.conn.client_ip
        assert ip is not None  # clients without an address are skipped before
        try:
            return clientfacts.gather(
                plan, ip, command.lookup, functools.partial(command.check, Identity.MAIL_FROM)
            )
        except (DnsTempError, DnsLimitError) as error:
            log.warning("conn=%s: DNS trouble while checking skips: %s", conn_id, error)
            return SkipFacts()

    def _mail_from_beside_helo(
        self, plan: Plan, command: _Command, mail_from: str, helo: SpfOutcome | None
    ) -> Future[SpfOutcome] | None:
        """MAIL FROM evaluated in the background while HELO is evaluated
        in the callback's thread, when both are needed and HELO is not known
        yet (20 ms answers: 40 ms, not 80).  HELO still decides first; when
        it refuses, the MAIL FROM lookups were made for nothing."""
        background = self._background
        if background is None or not (plan.helo and plan.mail_from) or helo is not None:
            return None
        if self._known(command.query(Identity.HELO, "")) or self._known(
            command.query(Identity.MAIL_FROM, mail_from)
        ):
            return None  # one of them answers at once: nothing to overlap
        return background.submit(command.check, Identity.MAIL_FROM, mail_from)

    @staticmethod
    def _collect(early: Future[SpfOutcome]) -> SpfOutcome | None:
        """The background evaluation's outcome; None when it had not started
        yet (every background thread busy), and then never will."""
        if early.cancel():
            return None
        # Running or done: bounded by the same lookup and CPU budgets.
        return early.result()

    def _report_unused(self, conn_id: int, early: Future[SpfOutcome]) -> None:
        error = early.exception()
        if error is not None:
            log.error(
                "internal error in a MAIL FROM evaluation: conn=%s",
                conn_id,
                exc_info=(type(error), error, error.__traceback__),
            )
            self._metrics.errors.inc()


@dataclass(frozen=True)
class _Command:
    """One MTA command's evaluation: its client and its deadline."""

    checker: Check
    resolver: Lookup
    clock: Callable[[], float]
    conn: Connection
    deadline: float

    def remaining(self) -> float:
        # pyspf reads a budget of 0 as "no limit": never hand it one.
        return max(0.001, self.deadline - self.clock())

    def lookup(self, name: str, qtype: str) -> Sequence[Record]:
        return self.resolver(name, qtype, self.remaining())

    def query(self, identity: Identity, mail_from: str) -> SpfQuery:
        conn = self.conn
        assert conn.client_ip is not None  # clients without an address are skipped
        return SpfQuery(identity, conn.client_ip, conn.helo, mail_from, conn.receiver)

    def check(self, identity: Identity, mail_from: str) -> SpfOutcome:
        return self.checker(self.query(identity, mail_from), self.remaining())


def build(config: DnsConfig, metrics: Metrics) -> Evaluator:
    """The evaluator of a process: the resolver of [dns] and a checker
    installed into pyspf on it.

    pyspf's globals are set here: call once, before any thread starts.
    """
    results = config.cache_size // RESULT_SHARE
    resolver = Resolver(config, metrics, cache_bytes=config.cache_size - results)
    # Without a cache the answers asked ahead would be kept nowhere.
    prefetcher = (
        prefetch.Prefetcher(
            resolver.prefetch,
            resolver.cached,
            spf_text,
            IdlingPool(prefetch.THREADS, prefetch.THREADS_IDLE, "prefetch"),
            void_lookup_limit=config.void_lookup_limit,
        )
        if config.prefetch and config.cache_size
        else None
    )
    checker = Checker(
        resolver.answer, metrics=metrics, results_bytes=results, prefetcher=prefetcher
    )
    checker.install(config.void_lookup_limit)
    return Evaluator(
        checker.check,
        resolver.lookup,
        metrics,
        lookup_time=config.lookup_time,
        known=checker.known,
        background=IdlingPool(BACKGROUND_THREADS, BACKGROUND_IDLE, "mailfrom"),
    )
