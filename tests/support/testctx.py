"""pymilter's TestCtx, calling spfmilter's adapter as libmilter does.

This module owns the fake libmilter of the adapter's tests: a TestCtx
(pymilter's stand-in for libmilter's context, which keeps replies, macros
and header changes) whose steps call the callbacks that
spfmilter.mta.libmilter registers, by their names in pymilter's C module and
with the arguments it passes (bytes for MAIL FROM, RCPT TO and header
values), so that every step meets the adapter's error boundary as it does
under libmilter.  It records where headers are inserted and changed.
"""

from __future__ import annotations

import io
import socket
from email.message import Message

import Milter
from Milter.testctx import TestCtx

from spfmilter.config.schema import Config
from spfmilter.core.session import Services
from spfmilter.mta import libmilter

# Every protocol step libmilter 1.0 knows, as an MTA offers them.
OFFERED_STEPS = 0x1FFFFF
# A step without its own macros: TestCtx then hands out every macro set.
ANY_STAGE = -1


class Source:
    """A configuration holder that never reloads."""

    def __init__(self, config: Config) -> None:
        self.config = config


class Ctx(TestCtx):  # type: ignore[misc]
    """One MTA connection to the adapter.  With `no_reply` the MTA lets
    connect and HELO go without a reply, as Postfix does; without it, it
    waits for every reply, as Sendmail 8.13 did."""

    _body: io.BytesIO | None
    _msg: Message | None

    def __init__(self, config: Config, services: Services, *, no_reply: bool = True) -> None:
        super().__init__()
        make = libmilter.factory(Source(config), services, libmilter.Activity())
        self.callbacks = libmilter.callbacks(make)
        self.offered = OFFERED_STEPS
        if not no_reply:
            self.offered &= ~(Milter.P_NR_CONN | Milter.P_NR_HELO)
        self.replies: list[tuple[str, str | None, str]] = []
        self.inserted: list[tuple[str, str, int]] = []
        self.changed: list[tuple[str, int, str]] = []

    def step(self, name: str, stage: int, *args: object) -> int:
        """libmilter's callback `name`, in protocol stage `stage`."""
        self._stage = stage
        result: int = self.callbacks[name](self, *args)
        return result

    # --- the steps, as TestCtx names them -------------------------------------

    def _negotiate(self) -> int:
        self._priv = None
        self._body = None
        self._opts = [Milter.CURR_ACTS, self.offered, 0, 0]
        result = self.step("negotiate", ANY_STAGE, self._opts)
        self._protocol = self._opts[1]
        return result

    def _connect(
        self, host: str = "localhost", helo: str = "spamrelay", ip: str = "198.51.100.7"
    ) -> int:
        self._negotiate()
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        result = self.step("connect", Milter.M_CONNECT, host, family, (ip, 25))
        if result not in (Milter.CONTINUE, Milter.NOREPLY):
            return result
        return self._helo(helo)

    def _helo(self, helo: str) -> int:
        return self.step("helo", Milter.M_HELO, helo)

    def _envfrom(self, *args: str) -> int:
        return self.step("envfrom", Milter.M_ENVFROM, *map(raw, args))

    def _envrcpt(self, recipient: str) -> int:
        return self.step("envrcpt", Milter.M_ENVRCPT, raw(recipient))

    def _header(self, name: str, value: str) -> int:
        return self.step("header", ANY_STAGE, name, raw(value))

    def _chunk(self, chunk: bytes) -> int:
        """A piece of the body (TestCtx's own _body is its buffer)."""
        return self.step("body", ANY_STAGE, chunk)

    def _eom(self) -> int:
        # TestCtx takes header changes only at end of message, into _msg.
        self._body = io.BytesIO()
        if self._msg is None:
            self._msg = Message()
        return self.step("eom", Milter.M_EOM)

    def _abort(self) -> int:
        return self.step("abort", Milter.M_EOM)

    def _close(self) -> int:
        return self.step("close", Milter.M_EOM)

    # --- what the milter asks of libmilter, kept ------------------------------

    def setreply(self, rcode: str, xcode: str | None, msg: str, *more: str) -> None:
        assert not more  # spfmilter's replies are one line
        self.replies.append((rcode, xcode, msg))
        super().setreply(rcode, xcode, msg)

    def addheader(self, field: str, value: str, idx: int) -> None:
        self.inserted.append((field, value, idx))
        super().addheader(field, value, idx)

    def chgheader(self, field: str, idx: int, value: str) -> None:
        self.changed.append((field, idx, value))
        super().chgheader(field, idx, value)


def raw(text: str) -> bytes:
    """Text as the bytes the MTA sent (any bytes: lone surrogates stand for
    bytes that are not UTF-8)."""
    return text.encode("utf-8", "surrogatepass")
