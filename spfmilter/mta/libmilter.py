"""The milter adapter: libmilter's callbacks in, a Session's values out.

This module owns everything spfmilter says to libmilter: the registration
(its name, timeout, exception policy and callbacks), the listening socket
it opens, how it is stopped, and the translation of each callback: it
unpacks the arguments (client address, reverse-path, macros that may not be
UTF-8), calls the connection's Session, and turns the Steps and
HeaderChanges it returns into setreply / REJECT / TEMPFAIL and header
changes.  Every callback reaches the Session through one error boundary: an
unexpected exception is logged with the connection and a traceback,
counted, and answered with the one fail-safe reply.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import Milter

from spfmilter.config.schema import Config
from spfmilter.core.headers import reply_text
from spfmilter.core.model import Action, IPAddress, Macro, Reply, Step
from spfmilter.core.session import Services, Session

log = logging.getLogger("spfmilter.milter")

# libmilter's reply codes, typed (pymilter has no annotations).
CONTINUE: int = Milter.CONTINUE
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL
NOREPLY: int = Milter.NOREPLY
SKIP: int = Milter.SKIP

# What libmilter's calls raise when it refuses one (pymilter's MilterError).
LibmilterError: type[Exception] = Milter.milter.error

# The name the milter registers under, and libmilter's own timeout for
# talking to the MTA (seconds): longer than Postfix's
# milter_command_timeout, so that the MTA gives up first.
MILTER_NAME = "spfmilter"
MILTER_TIMEOUT = 600

# The answer to a transaction whose checking failed: deferred, neither
# accepted unchecked nor rejected (RFC 3463 4.3.0: other mail system
# status).
FAIL_SAFE = Step(
    Action.DEFER, Reply(451, "4.3.0", "Temporary SPF checking problem; try again later")
)


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


class SpfMilter(Milter.Base):  # type: ignore[misc]
    """libmilter's side of one SMTP connection: its Session does the work.

    Its callbacks are called through dispatch(), which holds the error
    boundary, and raise what they do not expect."""

    def __init__(self, source: ConfigSource, services: Services, activity: Activity) -> None:
        self.session = Session(source.config, services)
        self.activity = activity
        # A step without reply failed: MAIL FROM tempfails from then on.
        self.broken = False

    def negotiate(self, opts: list[int]) -> int:
        """Protocol steps, as pymilter's decorators ask, and no headers and
        no body at all when the Session does not need them (libmilter then
        does not even pass them over the socket).  When a rescue may hold a
        message: headers with the white space after their colon as sent
        (SMFIP_HDR_LEADSPC; DKIM signs it), and the body of the other
        transactions skipped (SMFIP_SKIP, which pymilter keeps when the MTA
        offers it)."""
        offered = opts[1]
        status: int = super().negotiate(opts)
        if status != CONTINUE:
            return status
        session = self.session
        if session.may_rescue:
            opts[1] |= offered & Milter.P_HDR_LEADSPC
        else:
            opts[1] |= offered & Milter.P_NOBODY
            if not session.wants_headers:
                opts[1] |= offered & Milter.P_NOHDRS
        self._protocol = opts[1]
        return status

    # SPF is decided at MAIL FROM and RCPT: the MTA is told not to wait for
    # connect and HELO (SMFIP_NR_*, pymilter's noreply), a round trip saved
    # on each, and nor for each header.

    @Milter.noreply  # type: ignore[untyped-decorator]
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        """The client's address, and the MTA's name for itself (macro j)."""
        self.session.connect(client_address(family, hostaddr), hostname or "", self._macro("j"))
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    def hello(self, heloname: str) -> int:
        """HELO/EHLO."""
        # Without connection facts MAIL FROM tempfails: nothing to keep here.
        if self.session.conn is not None or self._recover_connection():
            self.session.hello(heloname or "")
        return CONTINUE

    def envfrom(self, mail_from: str, *params: str) -> int:
        """MAIL FROM: the transaction is evaluated here."""
        if self.broken or (self.session.conn is None and not self._recover_connection()):
            return self._answer(FAIL_SAFE)
        sent = (Macro(m.name, self._macro(m.name)) for m in self.session.config.skip.macros)
        step = self.session.mail(reverse_path(mail_from), self._macro("{auth_authen}"), tuple(sent))
        return self._answer(step)

    def envrcpt(self, recipient: str, *params: str) -> int:
        """RCPT TO."""
        return self._answer(self.session.rcpt(recipient))

    @Milter.noreply  # type: ignore[untyped-decorator]
    def header(self, name: str, value: bytes) -> int:
        """A header of the message, its value as the MTA sent it (bytes:
        see below)."""
        if not self.session.wants_header:
            return CONTINUE  # with the rescue on, most transactions' fields
        text = value.decode("utf-8", "surrogateescape")
        if self._protocol & Milter.P_HDR_LEADSPC:
            text = text.lstrip(" \t")
        else:
            # An MTA without SMFIP_HDR_LEADSPC drops the space after the
            # colon; the usual one is put back for the message held.
            value = b" " + value
        self.session.header(name, text, value)
        return CONTINUE

    def eom(self) -> int:
        """End of message: a refusal when a MAIL FROM fail pending rescue was
        not rescued, else the header changes (RFC 8601 section 5 deletions,
        then the result header at the top)."""
        queue_id = self._macro("i")
        step = self.session.end_of_data(queue_id)
        if step.action is not Action.ACCEPT:
            return self._answer(step)
        changes = self.session.end_of_message(queue_id)
        for name, index in changes.delete:
            self.chgheader(name, index, "")
        for name, value in changes.insert:
            self.addheader(name, value, 0)
        return CONTINUE

    def abort(self) -> int:
        """The client gave up on the transaction (RSET, QUIT, error)."""
        self.session.abort(self._macro("i"))
        return CONTINUE

    def close(self) -> int:
        """The SMTP connection ended."""
        self.session.close(self._macro("i"))
        return CONTINUE

    def body(self, chunk: bytes) -> int:
        """A piece of the body: only a message held for a rescue wants it;
        for any other the MTA is told to skip the rest (SMFIP_SKIP).  Not
        called at all when no rescue is configured (SMFIP_NOBODY)."""
        if self.session.body(chunk):
            return CONTINUE
        return SKIP if self._protocol & Milter.P_SKIP else CONTINUE

    def failed(self, callback: str) -> int:
        """The answer to `callback` after an unexpected error in it (to be
        called while it is handled): logged with its traceback and counted.
        A transaction is tempfailed; after connect or HELO, which the MTA
        does not wait for, the connection's MAIL FROM is; after close,
        nothing is left to answer."""
        session = self.session
        session.services.metrics.errors.inc()
        if callback in _BEFORE_TRANSACTIONS:
            log.exception(
                "internal error in %s: conn=%s; its transactions are tempfailed",
                callback,
                session.id,
            )
            self.broken = True
            negotiated = self._protocol & Milter.OPTIONAL_CALLBACKS[callback][0]
            return NOREPLY if negotiated else CONTINUE
        conn = session.conn
        log.exception(
            "internal error in %s: conn=%s client_ip=%s; transaction tempfailed",
            callback,
            session.id,
            conn.client_ip if conn else None,
        )
        if callback == "close":
            return CONTINUE
        return self._answer(FAIL_SAFE)

    # --- translation ------------------------------------------------------

    def _answer(self, step: Step) -> int:
        if step.action is Action.ACCEPT:
            return CONTINUE
        reply = step.reply
        assert reply is not None  # a refusal always says why
        try:
            self.setreply(str(reply.code), reply.status, reply_text(reply.text))
        except LibmilterError:  # the reply text is best effort; the verdict stands
            log.warning("conn=%s: MTA refused the reply text %r", self.session.id, reply.text)
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
# C module; the first two are decoded by the methods of Milter.Base that end
# in _bytes, and header takes the bytes itself (a message held for a rescue
# must be byte-exact for DKIM, and most fields are not looked at).
_CALLBACKS = {
    "negotiate": "negotiate",
    "connect": "connect",
    "helo": "hello",
    "envfrom": "envfrom_bytes",
    "envrcpt": "envrcpt_bytes",
    "header": "header",
    "eoh": "eoh",
    "body": "body",
    "eom": "eom",
    "abort": "abort",
    "close": "close",
}
# The steps before any transaction, which the MTA does not wait for.
_BEFORE_TRANSACTIONS = ("connect", "hello")


def register(timeout: int = MILTER_TIMEOUT) -> None:
    """libmilter's settings, before it opens its socket.

    pymilter's exception policy reaches only what fails in its C module
    before any Python code runs, since every callback goes through
    dispatch(), which cannot raise: that is the conversion of a callback's
    arguments, and an 8-bit HELO (not UTF-8) fails there.  With the default
    policy that tempfails the whole connection on every retry; with
    CONTINUE the HELO callback is skipped and the connection goes on with
    the HELO it had (none before a first HELO: a HELO that is not a domain,
    RFC 7208 section 2.3).
    """
    lowlevel = Milter.milter
    lowlevel.set_exception_policy(lowlevel.CONTINUE)
    lowlevel.settimeout(timeout)
    lowlevel.register(MILTER_NAME)


def open_socket(spec: str) -> None:
    """Have libmilter open its listening socket on `spec`, removing a stale
    one a crash left."""
    lowlevel = Milter.milter
    lowlevel.setconn(spec)
    lowlevel.opensocket(True)


def callbacks(make: Callable[[], SpfMilter]) -> dict[str, Callable[..., int]]:
    """Every callback by its name in pymilter's C module, each finding (or
    making) the connection's object through dispatch()."""
    return {name: functools.partial(dispatch, make, method) for name, method in _CALLBACKS.items()}


def serve(make: Callable[[], SpfMilter]) -> None:
    """Serve connections on the socket libmilter opened until it stops
    (like pymilter's runmilter, with the callbacks above)."""
    lowlevel = Milter.milter
    table = callbacks(make)
    negotiate = table.pop("negotiate")
    for name, callback in table.items():
        getattr(lowlevel, f"set_{name}_callback")(callback)
    lowlevel.register(MILTER_NAME, negotiate=negotiate)
    lowlevel.main()


def stop() -> None:
    """Ask libmilter's loop to stop (smfi_stop)."""
    Milter.milter.stop()


def dispatch(make: Callable[[], SpfMilter], method: str, ctx: Any, *args: Any) -> int:
    """One libmilter callback: the connection's object (made at negotiation;
    an MTA that does not negotiate starts with connect) and its method.

    The error boundary: whatever fails on the way is the fail-safe answer
    (SpfMilter.failed), never an exception for libmilter, which would turn
    it into a tempfail of the whole connection or, under the exception
    policy above, skip the callback.
    """
    connection: SpfMilter | None = ctx.getpriv()
    try:
        if connection is None:
            connection = make()
            connection._setctx(ctx)
        with connection.activity:
            result: int = getattr(connection, method)(*args)
        return result
    except Exception:
        if connection is None:
            log.exception("internal error in the %s callback; tempfailed", method)
            return TEMPFAIL
        return connection.failed(method.removesuffix("_bytes"))
    finally:
        if method == "close" and connection is not None:
            connection._setctx(None)
