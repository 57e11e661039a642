"""One SMTP session as a plain object: connection facts, the HELO result
kept per HELO, and a transaction per MAIL FROM.

This module owns the order of a session and the state it keeps: the
Connection facts (client, HELO, the receiver's name), the HELO identity's
outcome (computed once per HELO, RFC 7208 section 2.3), and, from MAIL to
end of message, a _Transaction holding the Decision and what the message
brings (recipients exempted, forged result fields seen).  Its
methods take plain values and return values: a Step for MAIL and RCPT
(go on, or refuse with a reply), HeaderChanges at end of message.  The DNS
budget of one MTA command is set here: the skips that need DNS, the HELO
and the MAIL FROM evaluation share it.  It knows nothing of libmilter.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from spfmilter.config.schema import Config
from spfmilter.core import policy, verdicts
from spfmilter.core.headers import (
    AUTHENTICATION_RESULTS,
    RECEIVED_SPF,
    authentication_results,
    authserv_id_key,
    claimed_authserv_ids,
    clean,
    received_spf,
)
from spfmilter.core.model import (
    Action,
    Connection,
    Decision,
    HeaderChanges,
    Identity,
    IPAddress,
    Macro,
    Plan,
    SkipFacts,
    SpfOutcome,
    SpfQuery,
    SpfResult,
    Stage,
    Step,
    Transaction,
)
from spfmilter.evaluation.resolver import (
    DnsLimitError,
    DnsTempError,
    Record,
    confirmed_ptr_names,
    resolves_to,
)
from spfmilter.evaluation.services import Services

log = logging.getLogger("spfmilter.session")

GO_ON = Step()


@dataclass
class _Transaction:
    """One MAIL FROM ... end of message: made at MAIL, dropped at its end."""

    facts: Transaction
    decision: Decision
    logged: bool = False
    exempt: list[str] = field(default_factory=list)
    forged: list[int] = field(default_factory=list)  # A-R occurrences claiming our id
    ar_seen: int = 0
    received_spf_seen: int = 0


class Session:
    """One SMTP connection, with the configuration it opened under."""

    def __init__(self, config: Config, services: Services) -> None:
        self.config = config
        self.services = services
        self.id = next(services.connection_ids)
        self.conn: Connection | None = None
        self.transaction: _Transaction | None = None
        self._helo: SpfOutcome | None = None
        self._deadline = 0.0
        self._open = True
        services.metrics.connections.inc()

    @property
    def wants_headers(self) -> bool:
        """Whether the message's headers matter: only to find forged
        Authentication-Results (RFC 8601 section 5) when we add our own,
        and Received-SPF fields that could pass for ours."""
        headers = self.config.headers
        return headers.type.authentication_results and headers.remove_forged

    # --- the SMTP session, in order -------------------------------------

    def connect(self, client_ip: IPAddress | None, client_name: str, mta_name: str) -> None:
        """The client and the MTA's name for itself (macro j), which names
        the receiver unless [headers] authserv_id does."""
        receiver = self.config.headers.authserv_id or mta_name or self.services.host_name
        self.conn = Connection(client_ip, client_name, clean(receiver, 253))

    def hello(self, helo: str) -> None:
        """A new HELO/EHLO: its SPF result is computed afresh when needed."""
        assert self.conn is not None  # connect() comes first
        self.conn = dataclasses.replace(self.conn, helo=helo)
        self._helo = None

    def mail(self, mail_from: str, auth_user: str, macros: tuple[Macro, ...] = ()) -> Step:
        """MAIL FROM: evaluate the transaction; the answer to MAIL.  `macros`
        are the values the MTA sent for the macros [skip] macros names."""
        assert self.conn is not None  # connect() comes first
        facts = Transaction(mail_from, auth_user, macros)
        self.transaction = _Transaction(facts, self._evaluate(self.conn, facts))
        if self.transaction.decision.stage is Stage.MAIL:
            return self._refusal(None, "")
        return GO_ON

    def rcpt(self, recipient: str) -> Step:
        """RCPT TO: the answer for this recipient."""
        if self.transaction is None or self.transaction.decision.stage is not Stage.RCPT:
            return GO_ON
        return self._refusal(recipient, "")

    def header(self, name: str, value: str) -> None:
        """A header of the message: note Authentication-Results that claim our
        authserv-id to any program that reads them (RFC 8601 section 5:
        forgeries, removed at end of message)."""
        tx = self.transaction
        if tx is None:
            return
        if name.lower() == RECEIVED_SPF.lower():
            tx.received_spf_seen += 1
            return
        if name.lower() != AUTHENTICATION_RESULTS.lower():
            return
        tx.ar_seen += 1
        # Deleted even where a DKIM signature covers it (RFC 6376 section
        # 5.4 lets a signer cover any field), though that breaks the
        # signature: a sender could otherwise keep a forgery by signing it.
        if self._own_authserv_id in claimed_authserv_ids(value):
            tx.forged.append(tx.ar_seen)

    @functools.cached_property
    def _own_authserv_id(self) -> str:
        """Our authserv-id as claimed_authserv_ids names it; fixed once
        connected, so worked out once per connection."""
        return authserv_id_key(self._authserv_id())

    def end_of_message(self, queue_id: str) -> HeaderChanges:
        """The message is complete: log the verdict, return the header changes.

        A refused transaction reaches end of message only through exempt
        recipients, and those still get the header.
        """
        tx = self.transaction
        if tx is None:
            return HeaderChanges()
        self._log(queue_id)
        self.transaction = None
        delete: tuple[tuple[str, int], ...] = ()
        if self.wants_headers:
            # Highest index first: deleting one must not shift the others.
            delete = tuple((AUTHENTICATION_RESULTS, i) for i in sorted(tx.forged, reverse=True))
            if tx.decision.skip is None and not self.config.headers.type.received_spf:
                # Our result is in Authentication-Results only.  A reader
                # that takes the topmost Received-SPF for the receiving
                # MTA's verdict (OpenDMARC does when no trusted A-R gave it
                # an SPF pass) would take the client's own: every incoming
                # one is somebody else's claim about this transaction.  A
                # skipped transaction keeps them (a trusted relay's are
                # the real evaluation).
                received = range(tx.received_spf_seen, 0, -1)
                delete += tuple((RECEIVED_SPF, i) for i in received)
        return HeaderChanges(delete, self._result_headers(tx.decision))

    def abort(self, queue_id: str) -> None:
        """The transaction ended without a message (RSET, QUIT, a refusal)."""
        self._log(queue_id)
        self.transaction = None

    def close(self, queue_id: str) -> None:
        """The connection ended."""
        if self._open:
            self._open = False
            try:
                self._log(queue_id)
            finally:
                self.services.metrics.connections.dec()

    # --- evaluation -------------------------------------------------------

    def _evaluate(self, conn: Connection, tx: Transaction) -> Decision:
        config = self.config
        # One DNS budget for the whole MTA command (skip facts, HELO, MAIL
        # FROM): the MTA times a milter command as a whole (Postfix's
        # milter_command_timeout, 30 s), so identities evaluated one after
        # the other share it.  RFC 7208 section 4.6.4 asks for at least 20 s
        # per evaluation; the HELO result is reused across transactions.
        self._deadline = self.services.clock() + config.dns.lookup_time
        plan = policy.plan(config, conn, tx)
        if plan.facts:
            plan = policy.plan(config, conn, tx, self._skip_facts(conn))
        if plan.skip is not None:
            return policy.skipped(config.policy, plan.skip)
        early = self._mail_from_beside_helo(conn, tx, plan)
        helo = self._helo_outcome(conn) if plan.helo else None
        mail_from = None
        if plan.mail_from and (helo is None or helo.result not in plan.final_helo_results):
            mail_from = self._collect(early) if early is not None else None
            if mail_from is None:
                mail_from = self._check(conn, Identity.MAIL_FROM, tx.mail_from)
        elif early is not None and not early.cancel():
            # HELO decided: the MAIL FROM result is not needed.  It finishes
            # within the same budgets (its result is cached); a failure is
            # still reported.
            early.add_done_callback(self._report_unused)
        return policy.decide(config, tx, helo, mail_from)

    def _report_unused(self, early: Future[SpfOutcome]) -> None:
        error = early.exception()
        if error is not None:
            log.error(
                "internal error in a MAIL FROM evaluation: conn=%s",
                self.id,
                exc_info=(type(error), error, error.__traceback__),
            )
            self.services.metrics.errors.inc()

    def _mail_from_beside_helo(
        self, conn: Connection, tx: Transaction, plan: Plan
    ) -> Future[SpfOutcome] | None:
        """MAIL FROM evaluated in the background while HELO is evaluated
        here, when both are needed and HELO is not known yet: a transaction
        then waits for its DNS once, not twice (20 ms answers: 40 ms, not
        80).  HELO still decides first (policy.decide); when it refuses, the
        MAIL FROM lookups were made for nothing."""
        background = self.services.background
        if background is None or not (plan.helo and plan.mail_from) or self._helo is not None:
            return None
        known = self.services.known
        if known(self._query(conn, Identity.HELO, "")) or known(
            self._query(conn, Identity.MAIL_FROM, tx.mail_from)
        ):
            return None  # one of them answers at once: nothing to overlap
        return background.submit(self._check, conn, Identity.MAIL_FROM, tx.mail_from)

    def _collect(self, early: Future[SpfOutcome]) -> SpfOutcome | None:
        """The background evaluation's outcome; None when it had not started
        yet (every background thread busy), and then never will."""
        if early.cancel():
            return None
        # Running or done: bounded by the same lookup and CPU budgets.
        return early.result()

    def _skip_facts(self, conn: Connection) -> SkipFacts:
        """What DNS says about the client, for the skips that need it."""
        skip = self.config.skip
        ip = conn.client_ip
        assert ip is not None  # clients without an address are skipped before
        helo = conn.helo.lower().rstrip(".")
        try:
            helo_confirmed = helo in skip.helo_names and resolves_to(self._lookup, helo, ip)
            ptr_names = confirmed_ptr_names(self._lookup, ip) if skip.ptr_domains else ()
        except (DnsTempError, DnsLimitError) as error:
            log.warning("conn=%s: DNS trouble while checking skips: %s", self.id, error)
            return SkipFacts()
        forwarder = None
        for domain in skip.forwarder_domains:
            outcome = self._check(conn, Identity.MAIL_FROM, f"postmaster@{domain}")
            if outcome.result is SpfResult.PASS:
                forwarder = domain
                break
        return SkipFacts(helo_confirmed=helo_confirmed, ptr_names=ptr_names, forwarder=forwarder)

    def _helo_outcome(self, conn: Connection) -> SpfOutcome:
        if self._helo is None:
            self._helo = self._check(conn, Identity.HELO, "")
        return self._helo

    def _remaining(self) -> float:
        # pyspf reads a budget of 0 as "no limit": never hand it one.
        return max(0.001, self._deadline - self.services.clock())

    def _lookup(self, name: str, qtype: str, budget: float | None) -> Sequence[Record]:
        return self.services.lookup(name, qtype, self._remaining())

    def _query(self, conn: Connection, identity: Identity, mail_from: str) -> SpfQuery:
        assert conn.client_ip is not None  # clients without an address are skipped
        return SpfQuery(identity, conn.client_ip, conn.helo, mail_from, conn.receiver)

    def _check(self, conn: Connection, identity: Identity, mail_from: str) -> SpfOutcome:
        return self.services.check(self._query(conn, identity, mail_from), self._remaining())

    # --- answers ----------------------------------------------------------

    def _refusal(self, recipient: str | None, queue_id: str) -> Step:
        """The answer to MAIL or RCPT for the transaction's decision."""
        tx = self.transaction
        assert tx is not None
        decision = tx.decision
        if decision.action not in (Action.REJECT, Action.DEFER):
            # Logged at end of message (or abort), where the queue id is known.
            return GO_ON
        if recipient is not None and policy.recipient_exempt(self.config.policy, recipient):
            tx.exempt.append(recipient)
            return GO_ON
        self._log(queue_id)
        return Step(decision.action, decision.reply)

    def _result_headers(self, decision: Decision) -> tuple[tuple[str, str], ...]:
        conn = self.conn
        assert conn is not None
        headers = self.config.headers
        out: list[tuple[str, str]] = []
        report = decision.report
        if headers.type.received_spf and report is not None:
            receiver = None if headers.hide_receiver else conn.receiver
            value = received_spf(
                report, client_ip=conn.client_ip, helo=conn.helo, receiver=receiver
            )
            out.append((RECEIVED_SPF, value))
        if headers.type.authentication_results:
            value = authentication_results(
                self._authserv_id(), report, client_ip=conn.client_ip, skip=decision.skip
            )
            out.append((AUTHENTICATION_RESULTS, value))
        return tuple(out)

    def _authserv_id(self) -> str:
        assert self.conn is not None
        return self.config.headers.authserv_id or self.conn.receiver

    def _log(self, queue_id: str) -> None:
        """The transaction's one verdict line, if not logged yet."""
        tx = self.transaction
        if tx is None or tx.logged or self.conn is None:
            return
        tx.logged = True
        verdicts.record(
            self.services.metrics,
            tx.decision,
            queue_id=queue_id,
            conn_id=self.id,
            conn=self.conn,
            tx=tx.facts,
            exempt=tx.exempt,
        )
