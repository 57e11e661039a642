"""One SMTP session as a plain object: connection facts, the HELO result
kept per HELO, and a Transaction per MAIL FROM.

This module owns the order of a session and the state it keeps: the
Connection facts (client, HELO, the receiver's name), the HELO identity's
outcome (computed once per HELO, RFC 7208 section 2.3), and, from MAIL to
end of message, a Transaction holding the Decision and what the message
brings (recipients exempted, forged result fields seen, and the message
itself while a MAIL FROM fail waits for its rescue).  Its methods take
plain values and return values: a Step for MAIL, RCPT and the end of
data (go on, or refuse with a reply), HeaderChanges at end of message.  At
MAIL it asks the policy for a plan, has the evaluator it was given carry
the plan out, and asks the policy to decide; a decision pending rescue is
made final at end of message, from the evaluator's DKIM and ARC checks of
the message held.  How the evaluation is done (DNS, threads, time) is the
evaluator's business, and libmilter's is the adapter's.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

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
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import (
    Action,
    Connection,
    Decision,
    Envelope,
    HeaderChanges,
    IPAddress,
    Macro,
    Outcomes,
    Plan,
    RescueKind,
    RescueResult,
    SpfOutcome,
    Stage,
    Step,
)

GO_ON = Step()
# The verdict's rescue_reason for a message larger than [rescue]
# max_message_size.
OVERSIZED_REASON = "max_message_size"


class Evaluator(Protocol):
    """What carries out a Plan (the SPF and DNS work of one MTA command),
    and the rescue of a message at its end."""

    def evaluate(
        self, plan: Plan, conn: Connection, mail_from: str, helo: SpfOutcome | None, conn_id: int
    ) -> Outcomes:
        """The Outcomes of `plan` for `mail_from` from the client of `conn`;
        `helo` is the HELO identity's outcome when known already for this
        HELO (it is then not evaluated again).  `conn_id` names the
        connection in what is logged."""
        ...

    def rescue(
        self, message: bytes, mail_from: str, conn: Connection, config: Config
    ) -> RescueResult:
        """Whether `message` (header and body), whose MAIL FROM `mail_from`
        got SPF fail from the client of `conn`, is rescued by its DKIM
        signatures or ARC chain, by the [rescue] settings of `config`."""
        ...


@dataclass(frozen=True)
class Services:
    """The shared collaborators of the sessions of one process: the
    evaluator, the metrics, the host's name (the receiver when neither
    [headers] authserv_id nor the MTA names one) and the connection
    numbers."""

    evaluator: Evaluator
    metrics: Metrics
    host_name: str = "localhost"
    # Numbers connections in log lines (next() on a count is atomic).
    connection_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def for_worker(self, worker: int, workers: int) -> Services:
        """These services in worker `worker` of `workers`, which numbers its
        connections worker+1, worker+1+workers, ...: no two workers log the
        same number."""
        return dataclasses.replace(self, connection_ids=itertools.count(worker + 1, workers))


class HeldMessage:
    """The message of a transaction pending rescue, as the MTA passes it
    (header fields, then the body), up to `limit` bytes: past it nothing
    is kept and the message is `oversized`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.oversized = False
        self._data = bytearray()
        self._in_header = True

    def add_header(self, name: str, value: bytes) -> None:
        """One header field, its value as sent (folded lines and the white
        space after the colon kept: DKIM's simple canonicalization signs
        them), with CRLF line ends (RFC 5322 section 2.2)."""
        value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self._add(name.encode("utf-8", "surrogateescape") + b":" + value + b"\r\n")

    def add_body(self, chunk: bytes) -> bool:
        """A piece of the body; False once no more is wanted (oversized)."""
        if self._in_header:
            self._in_header = False
            self._add(b"\r\n")
        return self._add(chunk)

    def message(self) -> bytes:
        """The message held so far, its header ended."""
        if self._in_header:
            return bytes(self._data) + b"\r\n"
        return bytes(self._data)

    def _add(self, data: bytes) -> bool:
        if self.oversized:
            return False
        if len(self._data) + len(data) > self.limit:
            self.oversized = True
            self._data = bytearray()
            return False
        self._data += data
        return True


@dataclass
class Transaction:
    """One MAIL FROM ... end of message: made at MAIL, dropped at its end.

    While its decision is pending rescue, `exempt_class` says which kind of
    recipients it holds (None before the first) and `held` holds the
    message for the rescue (None for exempt recipients, who are never
    refused)."""

    envelope: Envelope
    decision: Decision
    logged: bool = False
    exempt: list[str] = field(default_factory=list)
    forged: list[int] = field(default_factory=list)  # A-R occurrences claiming our id
    ar_seen: int = 0
    received_spf_seen: int = 0
    exempt_class: bool | None = None
    held: HeldMessage | None = None


class Session:
    """One SMTP connection, with the configuration it opened under."""

    def __init__(self, config: Config, services: Services) -> None:
        self.config = config
        self.services = services
        self.id = next(services.connection_ids)
        self.conn: Connection | None = None
        self.transaction: Transaction | None = None
        self._helo: SpfOutcome | None = None
        self._open = True
        # Fixed with the configuration: read for every header field.
        self._reads_headers = self.wants_headers
        services.metrics.connections.inc()

    @property
    def wants_headers(self) -> bool:
        """Whether the message's headers matter: only to find forged
        Authentication-Results (RFC 8601 section 5) when we add our own,
        and Received-SPF fields that could pass for ours."""
        headers = self.config.headers
        return headers.type.authentication_results and headers.remove_forged

    @property
    def may_rescue(self) -> bool:
        """Whether a transaction of this connection may wait for its message
        to be rescued: then the MTA must pass headers and body (those of
        other transactions are skipped)."""
        return self.config.rescue.enabled

    @property
    def wants_header(self) -> bool:
        """Whether the current transaction has any use for its header fields
        (to hold them for a rescue, or to look for forged results): with the
        rescue on, the MTA passes every transaction's fields."""
        tx = self.transaction
        return tx is not None and (tx.held is not None or self._reads_headers)

    @property
    def wants_message(self) -> bool:
        """Whether the current transaction's message is being held."""
        tx = self.transaction
        return tx is not None and tx.held is not None and not tx.held.oversized

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
        conn = self.conn
        assert conn is not None  # connect() comes first
        envelope = Envelope(mail_from, auth_user, macros)
        plan = policy.plan(self.config, conn, envelope)
        outcomes = self.services.evaluator.evaluate(plan, conn, mail_from, self._helo, self.id)
        if outcomes.helo is not None:
            self._helo = outcomes.helo
        self.transaction = Transaction(envelope, policy.decide(self.config, plan, outcomes))
        if self.transaction.decision.pending_rescue:
            return GO_ON  # decided at end of message
        if self.transaction.decision.stage is Stage.MAIL:
            return self._refusal(None)
        return GO_ON

    def rcpt(self, recipient: str) -> Step:
        """RCPT TO: the answer for this recipient."""
        tx = self.transaction
        if tx is not None and tx.decision.pending_rescue:
            return self._admit(tx, recipient)
        if tx is None or tx.decision.stage is not Stage.RCPT:
            return GO_ON
        return self._refusal(recipient)

    def _admit(self, tx: Transaction, recipient: str) -> Step:
        """A recipient of a transaction pending rescue: one kind per
        transaction (policy.admit); the message is held for non-exempt
        ones."""
        exempt_class, step = policy.admit(self.config, tx.exempt_class, recipient)
        if step.action is not Action.ACCEPT:
            return step
        if tx.exempt_class is None and not exempt_class:
            tx.held = HeldMessage(self.config.rescue.max_message_size)
        tx.exempt_class = exempt_class
        if exempt_class:
            tx.exempt.append(recipient)
        return GO_ON

    def header(self, name: str, value: str, raw: bytes | None = None) -> None:
        """A header of the message: held for a rescue as sent (`raw`, else
        `value`); note Authentication-Results that claim our authserv-id to
        any program that reads them (RFC 8601 section 5: forgeries, removed
        at end of message)."""
        tx = self.transaction
        if tx is None:
            return
        if tx.held is not None:
            tx.held.add_header(
                name, raw if raw is not None else value.encode("utf-8", "surrogateescape")
            )
        if not self._reads_headers:
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

    def body(self, chunk: bytes) -> bool:
        """A piece of the body: held for a rescue.  False when no more of
        it is wanted (no rescue pending, or the message is too large)."""
        tx = self.transaction
        if tx is None or tx.held is None:
            return False
        return tx.held.add_body(chunk)

    def end_of_data(self, queue_id: str) -> Step:
        """The answer to the end of the message: a decision pending rescue
        is made final here (the whole message refused, or deferred, when it
        is not rescued); every other transaction goes on."""
        tx = self.transaction
        if tx is None or not tx.decision.pending_rescue:
            return GO_ON
        conn = self.conn
        assert conn is not None  # connect() comes first
        if tx.held is None:
            return GO_ON  # exempt recipients only: never refused, nothing to rescue
        if tx.held.oversized:
            result = RescueResult(RescueKind.OVERSIZED, reason=OVERSIZED_REASON)
        else:
            result = self.services.evaluator.rescue(
                tx.held.message(), tx.envelope.mail_from, conn, self.config
            )
        tx.held = None
        tx.decision = policy.conclude(self.config, tx.decision, result)
        if tx.decision.action not in (Action.REJECT, Action.DEFER):
            return GO_ON
        self._log(queue_id)
        self.transaction = None
        return Step(tx.decision.action, tx.decision.reply)

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

    # --- answers ----------------------------------------------------------

    def _refusal(self, recipient: str | None) -> Step:
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
        # A refusal comes before the MTA has a queue id: logged as Postfix
        # logs its own, NOQUEUE.
        self._log("")
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
            rescue = decision.rescue.resinfos if decision.rescue is not None else ()
            value = authentication_results(
                self._authserv_id(),
                report,
                client_ip=conn.client_ip,
                skip=decision.skip,
                rescue=rescue,
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
            envelope=tx.envelope,
            exempt=tx.exempt,
        )
