"""The milter adapter: one SpfMilter per SMTP connection.

This module owns the translation between libmilter callbacks and
spfmilter's values: it gathers the Connection and Transaction facts, asks
the checker for outcomes and the policy for a Decision, and is the only
place that turns a Decision into setreply / REJECT / TEMPFAIL / header
changes.  It also holds the one error boundary: an unexpected exception in
a callback is logged with a traceback and the transaction is tempfailed.
It may import everything below it; only it and daemon import Milter.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import Milter

from spfmilter import policy
from spfmilter.config import Config
from spfmilter.dns import (
    DnsLimitError,
    DnsTempError,
    Lookup,
    Record,
    confirmed_ptr_names,
    resolves_to,
)
from spfmilter.headers import (
    AUTHENTICATION_RESULTS,
    RECEIVED_SPF,
    authentication_results,
    authserv_id_of,
    clean,
    received_spf,
    reply_text,
)
from spfmilter.metrics import Metrics
from spfmilter.model import (
    Action,
    Connection,
    Decision,
    Identity,
    IPAddress,
    SkipFacts,
    SpfOutcome,
    SpfResult,
    Stage,
    Transaction,
)

log = logging.getLogger(__name__)

# libmilter's reply codes, typed (pymilter has no annotations).
CONTINUE: int = Milter.CONTINUE
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL


class ConfigSource(Protocol):
    """Anything that hands out the current configuration (a snapshot)."""

    @property
    def config(self) -> Config: ...


class Check(Protocol):
    """The checker's evaluate function (spfmilter.checker.check)."""

    def __call__(
        self,
        identity: Identity,
        *,
        client_ip: IPAddress,
        helo: str,
        mail_from: str,
        receiver: str,
        lookup_time: float,
    ) -> SpfOutcome: ...


class Activity:
    """Counts callbacks in progress, so that a stop can let them finish."""

    def __init__(self) -> None:
        self._busy = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._busy += 1

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no callback runs; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)


@dataclass(frozen=True)
class Services:
    """The collaborators every SpfMilter shares, made once per process."""

    check: Check
    lookup: Lookup
    metrics: Metrics
    activity: Activity
    clock: Callable[[], float] = time.monotonic
    # The receiver name when neither [headers] authserv_id nor the MTA's
    # macro j gives one: looked up once per process, not per connection.
    host_name: str = "localhost"
    # Numbers connections in log lines (next() on a count is atomic).
    connection_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))


F = TypeVar("F", bound=Callable[..., Any])


def _boundary(callback: F) -> F:
    """The error boundary: an exception never escapes a callback.

    libmilter would turn it into a tempfail anyway; here it is logged with
    the connection id and the reply says why.
    """

    @functools.wraps(callback)
    def guarded(self: SpfMilter, *args: Any) -> Any:
        try:
            with self.services.activity:
                return callback(self, *args)
        except Exception:
            log.exception(
                "internal error in %s: conn=%s client_ip=%s; transaction tempfailed",
                callback.__name__,
                self.conn_id,
                self.conn.client_ip,
            )
            self.services.metrics.errors.inc()
            self._reply_safely(451, "4.3.0", "Temporary SPF checking problem; try again later")
            return TEMPFAIL

    return guarded  # type: ignore[return-value]


class SpfMilter(Milter.Base):  # type: ignore[misc]
    """SPF enforcement for one SMTP connection.

    Connection state lives in attributes of this object; a Transaction is
    made in envfrom and dropped in eom/abort.  The configuration is the
    snapshot taken when the connection opened.
    """

    def __init__(self, source: ConfigSource, services: Services) -> None:
        self.conn_id = next(services.connection_ids)
        self.config = source.config
        self.services = services
        services.metrics.connections.inc()
        self.conn = Connection(client_ip=None, client_name="", receiver="")
        self.helo_outcome: SpfOutcome | None = None
        self.tx: Transaction | None = None
        self.decision: Decision | None = None
        # The verdict of the latest transaction, kept past its end for the
        # check command to report.
        self.last_decision: Decision | None = None
        self.logged = False
        self.exempt_recipients: list[str] = []
        self.forged: list[int] = []
        self.ar_seen = 0
        self.deadline = 0.0
        self.connected = False

    # --- libmilter callbacks -------------------------------------------

    @_boundary
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        """Record the client address and the MTA's own name (macro j)."""
        self.conn = Connection(
            client_ip=client_address(family, hostaddr),
            client_name=hostname or "",
            receiver=self._receiver(),
        )
        self.connected = True
        return CONTINUE

    def _receiver(self) -> str:
        receiver = self.config.headers.authserv_id or self._macro("j") or self.services.host_name
        return clean(receiver, 253)

    def _macro(self, name: str) -> str:
        """A macro's value; text that is not UTF-8 keeps its bytes as
        surrogate escapes (pymilter would raise)."""
        try:
            value: str | None = self.getsymval(name)
        except UnicodeDecodeError as error:
            return bytes(error.object).decode("utf-8", "surrogateescape")
        return value or ""

    def _recover_connection(self) -> bool:
        """Connection facts from macro {client_addr} when the connect
        callback never arrived (pymilter could not decode its arguments)."""
        try:
            ip = ipaddress.ip_address(self._macro("{client_addr}"))
        except ValueError:
            log.error(
                "conn=%s: the MTA's connect information could not be read and it sent no "
                "{client_addr}; transaction tempfailed",
                self.conn_id,
            )
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        log.warning(
            "conn=%s: the MTA's connect information could not be read; client %s from "
            "macro {client_addr}",
            self.conn_id,
            ip,
        )
        self.conn = dataclasses.replace(self.conn, client_ip=ip, receiver=self._receiver())
        self.connected = True
        return True

    @_boundary
    def hello(self, heloname: str) -> int:
        """A new HELO/EHLO: its SPF result is computed afresh when needed."""
        self.conn = dataclasses.replace(self.conn, helo=heloname or "")
        self.helo_outcome = None
        return CONTINUE

    @_boundary
    def envfrom(self, mail_from: str, *params: str) -> int:
        """Start a transaction, evaluate it, apply the verdict at MAIL stage."""
        if not self.connected and not self._recover_connection():
            self._reply_safely(451, "4.3.0", "Temporary SPF checking problem; try again later")
            return TEMPFAIL
        self.tx = Transaction(
            mail_from=reverse_path(mail_from),
            auth_user=self._macro("{auth_authen}"),
        )
        self.decision = self.last_decision = self._evaluate(self.tx)
        self.logged = False
        self.exempt_recipients = []
        self.forged = []
        self.ar_seen = 0
        if self.decision.stage is Stage.MAIL or self.decision.action is Action.SKIP:
            return self._apply(None)
        return CONTINUE

    @_boundary
    def envrcpt(self, recipient: str, *params: str) -> int:
        """Apply a RCPT-stage verdict to this recipient."""
        if self.decision is None or self.decision.stage is not Stage.RCPT:
            return CONTINUE
        return self._apply(recipient)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def header(self, name: str, value: str) -> int:
        """Note incoming Authentication-Results that claim to be ours.

        No reply is sent for headers (a round trip saved per header), so
        this callback cannot tempfail: it only counts, which cannot fail.
        """
        if name.lower() == AUTHENTICATION_RESULTS.lower():
            self.ar_seen += 1
            if authserv_id_of(value) == authserv_id_of(self._authserv_id()):
                self.forged.append(self.ar_seen)
        return CONTINUE

    @_boundary
    def eom(self) -> int:
        """Add the one result header, remove forged A-R (RFC 8601 section 5)."""
        decision = self.decision
        if decision is None:
            return CONTINUE
        # An accepted message is logged here, where the MTA has given it a
        # queue id (Postfix assigns one only once DATA starts).
        self._log_verdict_once()
        self.decision = self.tx = None
        # A rejected or deferred transaction reaches end of message only
        # through exempt recipients, and those still get the header.
        headers = self.config.headers
        if headers.type.authentication_results and headers.remove_forged:
            # Highest index first: deleting one must not shift the others.
            for index in sorted(self.forged, reverse=True):
                self.chgheader(AUTHENTICATION_RESULTS, index, "")
        for name, value in self.result_headers(decision):
            self.addheader(name, value, 0)
        return CONTINUE

    @_boundary
    def abort(self) -> int:
        """The client gave up on the transaction (RSET, QUIT, error)."""
        self._log_verdict_once()
        self.tx = None
        self.decision = None
        return CONTINUE

    def close(self) -> int:
        """The SMTP connection ended."""
        try:
            self._log_verdict_once()
        except Exception:  # the connection count below must still drop
            log.exception("conn=%s: cannot log the verdict at close", self.conn_id)
        self.services.metrics.connections.dec()
        return CONTINUE

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def body(self, chunk: bytes) -> int:
        """Not needed: SPF is decided by the envelope."""
        return CONTINUE

    # --- evaluation ------------------------------------------------------

    def _evaluate(self, tx: Transaction) -> Decision:
        config = self.config
        # One DNS budget for the whole callback (skip facts, HELO, MAIL
        # FROM): the MTA times out a milter command as a whole (Postfix's
        # milter_command_timeout, 30 s), so identities evaluated one after
        # the other must share it.  RFC 7208 section 4.6.4 asks for at least
        # 20 s per evaluation; HELO results are reused across transactions.
        self.deadline = self.services.clock() + config.dns.lookup_time
        reason = policy.skip_reason(config, self.conn, tx, None)
        if reason is None and config.skip.needs_dns:
            reason = policy.skip_reason(config, self.conn, tx, self._skip_facts(tx))
        if reason is not None:
            return policy.skipped(config.policy, reason)
        helo = self._helo_outcome() if policy.helo_identity_checked(config.policy, tx) else None
        mail_from = None
        if policy.mail_from_needed(config, tx, helo):
            mail_from = self._check(Identity.MAIL_FROM, tx.mail_from)
        return policy.decide(config, tx, helo, mail_from)

    def _skip_facts(self, tx: Transaction) -> SkipFacts:
        """Ask DNS what the configured DNS-based skips need to know."""
        skip = self.config.skip
        ip = self.conn.client_ip
        assert ip is not None  # skip_reason() skipped clients without one
        helo = self.conn.helo.lower().rstrip(".")
        try:
            helo_confirmed = helo in skip.helo_names and resolves_to(self._lookup, helo, ip)
            ptr_names = confirmed_ptr_names(self._lookup, ip) if skip.ptr_domains else ()
        except (DnsTempError, DnsLimitError) as error:
            log.warning("conn=%s: DNS trouble while checking skips: %s", self.conn_id, error)
            return SkipFacts()
        forwarder = None
        for domain in skip.forwarder_domains:
            outcome = self._check(Identity.MAIL_FROM, f"postmaster@{domain}")
            if outcome.result is SpfResult.PASS:
                forwarder = domain
                break
        return SkipFacts(helo_confirmed=helo_confirmed, ptr_names=ptr_names, forwarder=forwarder)

    def _helo_outcome(self) -> SpfOutcome:
        # Computed once per HELO/EHLO and reused by every transaction on
        # the connection; hello() clears it.
        if self.helo_outcome is None:
            self.helo_outcome = self._check(Identity.HELO, "")
        return self.helo_outcome

    def _remaining(self) -> float:
        # pyspf reads a budget of 0 as "no limit": never hand it one.
        return max(0.001, self.deadline - self.services.clock())

    def _lookup(self, name: str, qtype: str, budget: float | None) -> list[Record]:
        return self.services.lookup(name, qtype, self._remaining())

    def _check(self, identity: Identity, mail_from: str) -> SpfOutcome:
        assert self.conn.client_ip is not None  # skip_reason() skips clients without one
        return self.services.check(
            identity,
            client_ip=self.conn.client_ip,
            helo=self.conn.helo,
            mail_from=mail_from,
            receiver=self.conn.receiver,
            lookup_time=self._remaining(),
        )

    def _apply(self, recipient: str | None) -> int:
        decision = self.decision
        assert decision is not None
        if decision.action in (Action.ACCEPT, Action.SKIP):
            # Logged at end of message (or abort), where the queue id is known.
            return CONTINUE
        if recipient is not None and policy.recipient_exempt(self.config.policy, recipient):
            self.exempt_recipients.append(recipient)
            return CONTINUE
        self._log_verdict_once()
        reply = decision.reply
        assert reply is not None
        self._reply_safely(reply.code, reply.status, reply.text)
        return REJECT if decision.action is Action.REJECT else TEMPFAIL

    def result_headers(self, decision: Decision) -> list[tuple[str, str]]:
        """The header(s) to insert for an accepted transaction, in order."""
        headers = self.config.headers
        out: list[tuple[str, str]] = []
        report = decision.report
        if headers.type.received_spf and report is not None:
            receiver = None if headers.hide_receiver else self.conn.receiver
            value = received_spf(
                report, client_ip=self.conn.client_ip, helo=self.conn.helo, receiver=receiver
            )
            out.append((RECEIVED_SPF, value))
        if headers.type.authentication_results:
            value = authentication_results(
                self._authserv_id(),
                report,
                client_ip=self.conn.client_ip,
                skip_reason=decision.skip_reason,
            )
            out.append((AUTHENTICATION_RESULTS, value))
        return out

    def _authserv_id(self) -> str:
        return self.config.headers.authserv_id or self.conn.receiver

    def _reply_safely(self, code: int, status: str | None, text: str) -> None:
        try:
            self.setreply(str(code), status, reply_text(text))
        except Exception:  # the reply text is best effort; the verdict stands
            log.warning("conn=%s: MTA refused the reply text %r", self.conn_id, text)

    def _log_verdict_once(self) -> None:
        """The one INFO line of a transaction's verdict (if not logged yet)."""
        decision = self.decision
        if decision is None or self.logged:
            return
        self.logged = True
        tx = self.tx
        fields: dict[str, object] = {
            # MTAs keep a macro until its stage is sent again, so "i" is
            # here whenever the MTA has assigned a queue id by now.
            "queue_id": self._macro("i") or "-",
            "conn": self.conn_id,
            "client_ip": self.conn.client_ip,
            "helo": self.conn.helo,
            "sender": tx.mail_from if tx else "",
        }
        if decision.action is Action.SKIP:
            self.services.metrics.skips.inc()
            fields.update(action="skip", reason=decision.skip_reason)
            log.info("SPF skipped - %s %s", decision.skip_reason, format_fields(fields))
            return
        outcome = _deciding_outcome(decision)
        assert outcome is not None
        fields.update(
            identity=outcome.identity.value,
            result=outcome.result.value,
            mechanism=outcome.mechanism or "-",
            action=decision.intended.value,
            stage=decision.stage.value,
        )
        if decision.reply is not None:
            fields["reply"] = str(decision.reply)
        if decision.action is not decision.intended:
            fields["dry_run"] = "yes"
        if self.exempt_recipients:
            fields["exempt_recipients"] = ",".join(self.exempt_recipients)
        lookup = sum(o.lookup_seconds for o in (decision.helo, decision.mail_from) if o)
        fields["lookup_ms"] = round(lookup * 1000)
        self.services.metrics.verdicts.labels(
            outcome.identity.value, outcome.result.value, decision.intended.value
        ).inc()
        log.info("verdict %s", format_fields(fields), extra={"fields": fields})


def _deciding_outcome(decision: Decision) -> SpfOutcome | None:
    if decision.decided_by is Identity.HELO:
        return decision.helo
    return decision.report


def format_fields(fields: dict[str, object]) -> str:
    """key=value pairs; values with spaces or quotes are double-quoted."""
    parts = []
    for key, value in fields.items():
        text = clean(str(value if value is not None else "-"), 400)
        if not text or any(c in text for c in ' "='):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def client_address(family: int, hostaddr: Any) -> IPAddress | None:
    """The client IP from libmilter's connect arguments.

    An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 client it
    maps (RFC 4291 section 2.5.5.2) and is evaluated as such.
    """
    if family not in (socket.AF_INET, socket.AF_INET6) or not hostaddr:
        return None
    # libmilter passes (address, port, ...); some drivers pass the bare text.
    text = hostaddr if isinstance(hostaddr, str) else hostaddr[0]
    address = ipaddress.ip_address(str(text).split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def reverse_path(argument: str) -> str:
    """The address in a MAIL FROM argument, without angle brackets.

    Source routes (RFC 5321 section 4.1.2, "@a,@b:user@c") are dropped.
    """
    address = argument.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if address.startswith("@") and ":" in address:
        address = address.split(":", 1)[1]
    return address.strip()


def factory(source: ConfigSource, services: Services) -> Callable[[], SpfMilter]:
    """A zero-argument constructor of the per-connection object."""
    return functools.partial(SpfMilter, source, services)


# The callbacks registered with libmilter: pymilter's C module name, the
# SpfMilter method it calls.  envfrom, envrcpt and header get bytes from the
# C module and are decoded by the methods of Milter.Base that end in _bytes.
_CALLBACKS = {
    "connect": "connect",
    "helo": "hello",
    "envfrom": "envfrom_bytes",
    "envrcpt": "envrcpt_bytes",
    "header": "header_bytes",
    "eoh": "eoh",
    "body": "body",
    "eom": "eom",
    "abort": "abort",
    "close": "close",
}


def serve(name: str, spec: str, timeout: int, make: Callable[[], SpfMilter]) -> None:
    """Listen on `spec` and serve connections until libmilter stops.

    Like pymilter's runmilter, with callbacks that cannot raise: each one
    finds (or makes) the connection's object and calls its guarded method,
    and any failure on the way is a tempfail.  That makes pymilter's
    exception policy reach only what fails in its C module before any
    Python code runs, which is the conversion of a callback's arguments: an
    8-bit HELO (not UTF-8) fails there.  With the default policy that
    tempfails the whole connection on every retry; with CONTINUE the HELO
    callback is skipped and the connection goes on with the HELO it had (none
    before a first HELO: a HELO that is not a domain, RFC 7208 section 2.3).
    """
    lowlevel = Milter.milter
    lowlevel.set_exception_policy(lowlevel.CONTINUE)
    for callback, method in _CALLBACKS.items():
        setter = getattr(lowlevel, f"set_{callback}_callback")
        setter(functools.partial(_dispatch, make, method))
    lowlevel.setconn(spec)
    lowlevel.settimeout(timeout)
    lowlevel.register(name, negotiate=functools.partial(_dispatch, make, "negotiate"))
    lowlevel.opensocket(True)  # removes a stale socket left by a crash
    lowlevel.main()


def _dispatch(make: Callable[[], SpfMilter], method: str, ctx: Any, *args: Any) -> int:
    try:
        connection = ctx.getpriv()
        if connection is None:
            # Made at negotiation; an MTA that does not negotiate starts
            # with connect.
            connection = make()
            connection._setctx(ctx)
        result: int = getattr(connection, method)(*args)
        if method == "close":
            connection._setctx(None)
        return result
    except Exception:
        log.exception("internal error in the %s callback; tempfailed", method)
        return TEMPFAIL
