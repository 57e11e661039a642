"""The milter adapter: libmilter's callbacks in, a Session's values out.

This module owns the translation between libmilter and spfmilter: it
registers its own callbacks with pymilter's C module (serve), unpacks their
arguments (client address, reverse-path, macros that may not be UTF-8),
calls the connection's Session, and turns the Steps and HeaderChanges it
returns into setreply / REJECT / TEMPFAIL and header changes.  It holds the
one error boundary: an unexpected exception in a callback is logged with a
traceback and the transaction is tempfailed.  Only it and daemon import
Milter.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import Milter

from spfmilter.config.schema import Config
from spfmilter.core.headers import reply_text
from spfmilter.core.model import Action, IPAddress, Macro, Step
from spfmilter.core.session import Services, Session

log = logging.getLogger("spfmilter.milter")

# libmilter's reply codes, typed (pymilter has no annotations).
CONTINUE: int = Milter.CONTINUE
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL

_TROUBLE = Step(Action.DEFER)  # the fail-safe: tempfail, with the reply below


class ConfigSource(Protocol):
    """Anything that hands out the current configuration (a snapshot)."""

    @property
    def config(self) -> Config: ...


class Activity:
    """Counts callbacks in progress, so that a stop can let them finish.

    Entered and left around every callback, so as cheap as can be: a plain
    lock, and a stop that polls rather than a condition notified each time.
    """

    POLL = 0.05  # seconds between looks while a stop waits

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._busy = 0
        self._lock = threading.Lock()
        self._clock = clock

    def __enter__(self) -> None:
        with self._lock:
            self._busy += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._busy -= 1

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no callback runs; False if `timeout` passed first."""
        deadline = self._clock() + timeout
        while self._busy:
            if self._clock() >= deadline:
                return False
            time.sleep(self.POLL)
        return True


F = TypeVar("F", bound=Callable[..., Any])


def _boundary(callback: F) -> F:
    """The error boundary: an exception never escapes a callback.

    libmilter would turn it into a tempfail anyway; here it is logged with
    the connection id and the reply says why.
    """

    @functools.wraps(callback)
    def guarded(self: SpfMilter, *args: Any) -> Any:
        try:
            with self.activity:
                return callback(self, *args)
        except Exception:
            conn = self.session.conn
            log.exception(
                "internal error in %s: conn=%s client_ip=%s; transaction tempfailed",
                callback.__name__,
                self.session.id,
                conn.client_ip if conn else None,
            )
            self.session.services.metrics.errors.inc()
            return self._answer(_TROUBLE)

    return guarded  # type: ignore[return-value]


def _no_reply(callback: F) -> F:
    """The error boundary of a step the MTA does not wait for (connect,
    HELO: SPF is decided at MAIL FROM and RCPT, so the MTA is told not to
    wait, a round trip saved on each).  An exception is logged and the
    connection's next MAIL FROM is tempfailed instead."""

    @functools.wraps(callback)
    def guarded(self: SpfMilter, *args: Any) -> Any:
        try:
            with self.activity:
                callback(self, *args)
        except Exception:
            log.exception(
                "internal error in %s: conn=%s; its transactions are tempfailed",
                callback.__name__,
                self.session.id,
            )
            self.session.services.metrics.errors.inc()
            self.broken = True
        return CONTINUE

    # pymilter's decorator: negotiated as a step without reply (SMFIP_NR_*).
    return Milter.noreply(guarded)  # type: ignore[no-any-return]


class SpfMilter(Milter.Base):  # type: ignore[misc]
    """libmilter's side of one SMTP connection: its Session does the work."""

    def __init__(self, source: ConfigSource, services: Services, activity: Activity) -> None:
        self.session = Session(source.config, services)
        self.activity = activity
        # A step without reply failed: MAIL FROM tempfails from then on.
        self.broken = False

    def negotiate(self, opts: list[int]) -> int:
        """Protocol steps, as pymilter's decorators ask, and no headers at
        all when the Session does not need them (nothing to read per header:
        libmilter then does not even pass them over the socket)."""
        offered = opts[1]
        status: int = super().negotiate(opts)
        if status == CONTINUE and not self.session.wants_headers:
            opts[1] |= offered & Milter.P_NOHDRS
        return status

    @_no_reply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> None:
        """The client's address, and the MTA's name for itself (macro j)."""
        self.session.connect(client_address(family, hostaddr), hostname or "", self._macro("j"))

    @_no_reply
    def hello(self, heloname: str) -> None:
        """HELO/EHLO."""
        # Without connection facts MAIL FROM tempfails: nothing to keep here.
        if self.session.conn is not None or self._recover_connection():
            self.session.hello(heloname or "")

    @_boundary
    def envfrom(self, mail_from: str, *params: str) -> int:
        """MAIL FROM: the transaction is evaluated here."""
        if self.broken or (self.session.conn is None and not self._recover_connection()):
            return self._answer(_TROUBLE)
        sent = (Macro(m.name, self._macro(m.name)) for m in self.session.config.skip.macros)
        step = self.session.mail(reverse_path(mail_from), self._macro("{auth_authen}"), tuple(sent))
        return self._answer(step)

    @_boundary
    def envrcpt(self, recipient: str, *params: str) -> int:
        """RCPT TO."""
        return self._answer(self.session.rcpt(recipient))

    @Milter.noreply  # type: ignore[untyped-decorator]
    def header(self, name: str, value: str) -> int:
        """A header: no reply is sent for it (a round trip saved per header)."""
        self.session.header(name, value)
        return CONTINUE

    @_boundary
    def eom(self) -> int:
        """End of message: the header changes (RFC 8601 section 5 deletions,
        then the result header at the top)."""
        changes = self.session.end_of_message(self._macro("i"))
        for name, index in changes.delete:
            self.chgheader(name, index, "")
        for name, value in changes.insert:
            self.addheader(name, value, 0)
        return CONTINUE

    @_boundary
    def abort(self) -> int:
        """The client gave up on the transaction (RSET, QUIT, error)."""
        self.session.abort(self._macro("i"))
        return CONTINUE

    def close(self) -> int:
        """The SMTP connection ended."""
        try:
            self.session.close(self._macro("i"))
        except Exception:  # the connection is gone either way; say why
            log.exception("conn=%s: cannot log the verdict at close", self.session.id)
        return CONTINUE

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def body(self, chunk: bytes) -> int:
        """Not needed: SPF is decided by the envelope."""
        return CONTINUE

    # --- translation ------------------------------------------------------

    def _answer(self, step: Step) -> int:
        if step.action is Action.ACCEPT:
            return CONTINUE
        reply = step.reply
        code, status, text = (
            (reply.code, reply.status, reply.text)
            if reply is not None
            else (451, "4.3.0", "Temporary SPF checking problem; try again later")
        )
        try:
            self.setreply(str(code), status, reply_text(text))
        except Exception:  # the reply text is best effort; the verdict stands
            log.warning("conn=%s: MTA refused the reply text %r", self.session.id, text)
        return REJECT if step.action is Action.REJECT else TEMPFAIL

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
            ip = mapped(ipaddress.ip_address(self._macro("{client_addr}")))
        except ValueError:
            log.error(
                "conn=%s: the MTA's connect information could not be read and it sent no "
                "{client_addr}; transaction tempfailed",
                self.session.id,
            )
            return False
        log.warning(
            "conn=%s: the MTA's connect information could not be read; client %s from "
            "macro {client_addr}",
            self.session.id,
            ip,
        )
        self.session.connect(ip, "", self._macro("j"))
        return True


def mapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 client it
    maps (RFC 4291 section 2.5.5.2) and is evaluated as such."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(family: int, hostaddr: Any) -> IPAddress | None:
    """The client IP from libmilter's connect arguments."""
    if family not in (socket.AF_INET, socket.AF_INET6) or not hostaddr:
        return None
    # libmilter passes (address, port, ...); some drivers pass the bare text.
    text = hostaddr if isinstance(hostaddr, str) else hostaddr[0]
    return mapped(ipaddress.ip_address(str(text).split("%", 1)[0]))


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


def factory(
    source: ConfigSource, services: Services, activity: Activity
) -> Callable[[], SpfMilter]:
    """A zero-argument constructor of the per-connection object."""
    return functools.partial(SpfMilter, source, services, activity)


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


def serve(name: str, make: Callable[[], SpfMilter]) -> None:
    """Serve connections on the socket daemon opened until libmilter stops.

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
    for callback, method in _CALLBACKS.items():
        setter = getattr(lowlevel, f"set_{callback}_callback")
        setter(functools.partial(_dispatch, make, method))
    lowlevel.register(name, negotiate=functools.partial(_dispatch, make, "negotiate"))
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
