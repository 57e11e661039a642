"""The MTA side of the milter protocol, version 6, for integration tests.

This module owns speaking to a running milter daemon the way sendmail or
Postfix would, so tests can drive the real spfmilter over a real socket
without an MTA: the wire framing, option negotiation (including honouring
the steps the milter asked not to receive, SMFIP_NO*, and the replies it
said it will not send, SMFIP_NR_*), one method per SMFIC_* command, the
collection of end-of-message modifications, a convenience that runs one
mail transaction and stops where an MTA would stop, and the header changes
applied as an MTA applies them, so that a message can go on to the next
milter of a chain.  For robustness tests it
also writes what no MTA would (raw bytes, packets that lie about their
length, abortive closes) and waits for the milter to hang up.

Wire format (libmilter mfdef.h, sendmail's milter.c and libmilter/engine.c
are the reference): every packet is a 4-byte big-endian length, then one
command or reply byte, then the payload; the length counts the command byte
but not itself.  Strings are NUL-terminated, integers 32-bit big-endian.
The module imports nothing from spfmilter and nothing outside the standard
library, so it tests the daemon strictly from the outside.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

# mfdef.h SMFI_PROT_VERSION: the protocol version this client speaks.
SMFI_PROT_VERSION = 6
# mfdef.h MILTER_CHUNK_SIZE: the largest body chunk an MTA sends.
MILTER_CHUNK_SIZE = 65535
# mfdef.h MILTER_MAX_DATA_SIZE: libmilter drops the connection when a
# command's payload is longer, unless a larger size was negotiated (which this
# client never offers).
MILTER_MAX_DATA_SIZE = 65535
# mfdef.h MILTER_MDS_1M: the largest reply a milter may send at all; a longer
# length field means the stream is out of step, not a real reply.
_MAX_REPLY_SIZE = 1024 * 1024 - 1

# mfdef.h SMFI_CURR_ACTS: every SMFIF_* action; offering all of them lets a
# milter register whatever flags it wants.
ALL_ACTIONS = 0x000001FF
# mfdef.h SMFI_V1_ACTS and SMFI_V1_PROT: what libmilter assumes an MTA
# offered when it sends 0 for the actions or the protocol mask.
SMFI_V1_ACTS = 0x0000000F
SMFI_V1_PROT = 0x0000003F

# mfdef.h SMFIP_*: protocol bits.  The SMFIP_NO* bits ask the MTA not to send
# a step; the SMFIP_NR_* bits say the milter will not reply to one.
SMFIP_NOCONNECT = 0x00000001
SMFIP_NOHELO = 0x00000002
SMFIP_NOMAIL = 0x00000004
SMFIP_NORCPT = 0x00000008
SMFIP_NOBODY = 0x00000010
SMFIP_NOHDRS = 0x00000020
SMFIP_NOEOH = 0x00000040
SMFIP_NR_HDR = 0x00000080
SMFIP_NOUNKNOWN = 0x00000100
SMFIP_NODATA = 0x00000200
SMFIP_SKIP = 0x00000400
SMFIP_RCPT_REJ = 0x00000800
SMFIP_NR_CONN = 0x00001000
SMFIP_NR_HELO = 0x00002000
SMFIP_NR_MAIL = 0x00004000
SMFIP_NR_RCPT = 0x00008000
SMFIP_NR_DATA = 0x00010000
SMFIP_NR_UNKN = 0x00020000
SMFIP_NR_EOH = 0x00040000
SMFIP_NR_BODY = 0x00080000
SMFIP_HDR_LEADSPC = 0x00100000
# mfdef.h SMFI_CURR_PROT: every protocol bit; this client can honour them all
# (it sends header values exactly as given, so SMFIP_HDR_LEADSPC costs
# nothing).  An offer of 0 gets the version 1 set, which has no SMFIP_NR_*.
ALL_PROTOCOL = 0x001FFFFF

# mfdef.h SMFIC_*: commands from the MTA.
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# mfdef.h SMFIR_*: replies that end the exchange for one command.
_FINAL_REPLIES = {
    b"c": "continue",  # SMFIR_CONTINUE
    b"a": "accept",  # SMFIR_ACCEPT
    b"r": "reject",  # SMFIR_REJECT
    b"t": "tempfail",  # SMFIR_TEMPFAIL
    b"d": "discard",  # SMFIR_DISCARD
    b"y": "replycode",  # SMFIR_REPLYCODE, payload "550 5.7.1 text\0"
    b"s": "skip",  # SMFIR_SKIP, only valid for body chunks
    b"f": "conn_fail",  # SMFIR_CONN_FAIL
    b"4": "shutdown",  # SMFIR_SHUTDOWN
}
SMFIR_REPLYCODE = b"y"
# mfdef.h SMFIR_PROGRESS: "still working", sent during end of message only.
SMFIR_PROGRESS = b"p"
# mfdef.h SMFIR_*: modification requests, valid only before the final reply
# to SMFIC_BODYEOB.
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_CHGHEADER = b"m"
SMFIR_REPLBODY = b"b"
_MODIFICATIONS = {
    SMFIR_ADDHEADER: "addheader",
    SMFIR_INSHEADER: "insheader",
    SMFIR_CHGHEADER: "chgheader",
    b"+": "addrcpt",  # SMFIR_ADDRCPT
    b"-": "delrcpt",  # SMFIR_DELRCPT
    b"2": "addrcpt_par",  # SMFIR_ADDRCPT_PAR
    b"e": "chgfrom",  # SMFIR_CHGFROM
    SMFIR_REPLBODY: "replbody",
    b"q": "quarantine",  # SMFIR_QUARANTINE
}

# For each step the milter may opt out of: the SMFIP_NO* bit that means "do
# not send it" and the SMFIP_NR_* bit that means "do not wait for a reply".
_STEP_FLAGS = {
    SMFIC_CONNECT: (SMFIP_NOCONNECT, SMFIP_NR_CONN),
    SMFIC_HELO: (SMFIP_NOHELO, SMFIP_NR_HELO),
    SMFIC_MAIL: (SMFIP_NOMAIL, SMFIP_NR_MAIL),
    SMFIC_RCPT: (SMFIP_NORCPT, SMFIP_NR_RCPT),
    SMFIC_DATA: (SMFIP_NODATA, SMFIP_NR_DATA),
    SMFIC_HEADER: (SMFIP_NOHDRS, SMFIP_NR_HDR),
    SMFIC_EOH: (SMFIP_NOEOH, SMFIP_NR_EOH),
    SMFIC_BODY: (SMFIP_NOBODY, SMFIP_NR_BODY),
    SMFIC_UNKNOWN: (SMFIP_NOUNKNOWN, SMFIP_NR_UNKN),
}

# mfapi.h SMFIM_*: the stage numbers in the macro lists of an SMFIC_OPTNEG
# reply (smfi_setsymlist), mapped to the SMFIC_MACRO stage letter.
_SYMLIST_STAGES = {0: "C", 1: "H", 2: "M", 3: "R", 4: "T", 5: "E", 6: "N"}

# Stage letters whose macros transaction() sends before the matching command:
# the message stages libmilter keeps macros for (engine.c st_macros silently
# drops any other letter).
_TRANSACTION_MACRO_STAGES = frozenset("MRTNE")

# struct linger {l_onoff = 1, l_linger = 0}: close() sends a reset.
_ABORTIVE_LINGER = struct.pack("ii", 1, 0)

_LENGTH = struct.Struct(">I")
_OPTNEG = struct.Struct(">III")
_PORT = struct.Struct(">H")


class MilterError(Exception):
    """The milter misbehaved, went silent, or the connection failed."""


def frame(command: bytes, payload: bytes = b"", *, length: int | None = None) -> bytes:
    """One packet as it goes on the wire: length, command byte, payload.

    length replaces the length field (which counts the command byte and the
    payload) so that tests can write packets that lie about their size.
    """
    if len(command) != 1:
        raise ValueError(f"a command is one byte, not {command!r}")
    return _LENGTH.pack(len(payload) + 1 if length is None else length) + command + payload


@dataclass(frozen=True)
class Response:
    """The milter's answer to one command.

    kind is the SMFIR_* reply as a word ("continue", "accept", "reject",
    "tempfail", "discard", "replycode", "skip", "conn_fail", "shutdown").  For
    "replycode", text is the reply exactly as the milter sent it without the
    NUL (e.g. "550 5.7.23 bad sender", lines joined by CRLF when multi-line)
    and code its first three characters.  synthetic is True when no reply was
    read because the step was not sent (SMFIP_NO*) or the milter does not
    answer it (SMFIP_NR_*); the MTA then assumes "continue".
    """

    kind: str
    code: str | None = None
    text: str | None = None
    synthetic: bool = False

    @property
    def proceeds(self) -> bool:
        """True if an MTA would go on to the next step of this message."""
        return self.kind in ("continue", "skip")


_ASSUMED_CONTINUE = Response("continue", synthetic=True)


@dataclass(frozen=True)
class Modification:
    """One change the milter requested before its end-of-message reply.

    Header changes (addheader, insheader, chgheader) fill name and value;
    insheader and chgheader also index (chgheader counts occurrences of name
    from 1, and an empty value deletes that occurrence).  Envelope and
    quarantine requests (addrcpt, delrcpt, addrcpt_par, chgfrom, quarantine)
    put the address or reason in value and any ESMTP arguments in args.
    replbody puts the chunk in body.
    """

    action: str
    name: str | None = None
    value: str | None = None
    index: int | None = None
    args: str | None = None
    body: bytes = b""


@dataclass
class EomResult:
    """The end-of-message exchange: the final reply and what came before it."""

    response: Response
    modifications: list[Modification] = field(default_factory=list)
    progress: int = 0  # SMFIR_PROGRESS packets seen


@dataclass
class TransactionResult:
    """Every reply of one MAIL ... end-of-message run, in order.

    final is the reply that decided the message: the end-of-message reply,
    the reply that made the run stop early, or for a run in which every
    recipient was refused, the last recipient's reply.  aborted says whether
    SMFIC_ABORT was sent because the run stopped early.  Steps never reached
    are None or empty.
    """

    final: Response
    mail: Response
    rcpts: list[tuple[str, Response]] = field(default_factory=list)
    data: Response | None = None
    headers: list[Response] = field(default_factory=list)
    eoh: Response | None = None
    body: list[Response] = field(default_factory=list)
    eom: EomResult | None = None
    aborted: bool = False


def _nul_terminated(*strings: str) -> bytes:
    """Encode strings as the protocol's consecutive NUL-terminated fields."""
    parts = []
    for string in strings:
        if "\0" in string:
            raise ValueError(f"NUL inside a milter protocol string: {string!r}")
        parts.append(string.encode("utf-8", "surrogateescape") + b"\0")
    return b"".join(parts)


def _fields(payload: bytes, what: str) -> list[str]:
    """Decode a payload of NUL-terminated strings."""
    if not payload.endswith(b"\0"):
        raise MilterError(f"{what}: payload is not NUL-terminated: {payload!r}")
    return [part.decode("utf-8", "surrogateescape") for part in payload[:-1].split(b"\0")]


def _parse_modification(reply: bytes, payload: bytes) -> Modification:
    action = _MODIFICATIONS[reply]
    if reply == SMFIR_REPLBODY:
        return Modification(action, body=payload)
    index = None
    if reply in (SMFIR_INSHEADER, SMFIR_CHGHEADER):
        if len(payload) < _LENGTH.size:
            raise MilterError(f"{action}: payload too short for an index: {payload!r}")
        (index,) = _LENGTH.unpack_from(payload)
        payload = payload[_LENGTH.size :]
    values = _fields(payload, action)
    if reply in (SMFIR_ADDHEADER, SMFIR_INSHEADER, SMFIR_CHGHEADER):
        if len(values) != 2:
            raise MilterError(f"{action}: expected name and value, got {values!r}")
        return Modification(action, name=values[0], value=values[1], index=index)
    if len(values) not in (1, 2):
        raise MilterError(f"{action}: expected one or two fields, got {values!r}")
    return Modification(action, value=values[0], args=values[1] if len(values) == 2 else None)


def _parse_spec(spec: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """Resolve libmilter socket notation: unix:/path, inet:PORT@HOST, inet6:PORT@HOST."""
    kind, colon, rest = spec.partition(":")
    if not colon:
        # libmilter takes a bare path as a unix socket.
        return socket.AF_UNIX, spec
    if kind in ("unix", "local"):
        return socket.AF_UNIX, rest
    if kind in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        if kind == "inet":
            return socket.AF_INET, (host or "127.0.0.1", int(port))
        return socket.AF_INET6, (host or "::1", int(port))
    raise ValueError(f"unsupported milter socket spec: {spec!r}")


class MilterClient:
    """One MTA-to-milter connection.

    Use as a context manager (connect the socket / QUIT and close), call
    negotiate() first, then the SMTP-stage methods in MTA order.  Each stage
    method returns the milter's Response; steps the milter opted out of are
    not sent and return a synthetic "continue".
    """

    def __init__(self, spec: str, timeout: float = 30.0) -> None:
        self.spec = spec
        self.timeout = timeout
        self.version = 0
        self.actions = 0
        self.protocol = 0
        # Macro names the milter asked for per stage letter (smfi_setsymlist).
        self.requested_macros: dict[str, tuple[str, ...]] = {}
        self._negotiated = False
        self._sock: socket.socket | None = None
        self._inbox = bytearray()
        self._quickack = False

    # -- connection -------------------------------------------------------

    def open(self) -> None:
        """Connect the socket to the milter."""
        family, address = _parse_spec(self.spec)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            raise MilterError(f"cannot connect to milter at {self.spec}: {exc}") from exc
        if family != socket.AF_UNIX:
            # Macros and no-reply commands are small writes followed by more
            # writes; without this, Nagle plus delayed ACK stalls each ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The same stall in the other direction: libmilter leaves Nagle on
            # and writes each end-of-message modification as its own packet,
            # so the final reply waits for our delayed ACK of the one before.
            self._quickack = hasattr(socket, "TCP_QUICKACK")
        self._sock = sock

    def close(self, *, reset: bool = False) -> None:
        """Close the socket without saying QUIT; safe to call twice.

        With reset the close is abortive (SO_LINGER 0): the milter sees a
        connection reset instead of an orderly end of stream.
        """
        if self._sock is not None:
            if reset:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORTIVE_LINGER)
            self._sock.close()
            self._sock = None
        self._inbox.clear()
        self._quickack = False

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After a failure the stream may be out of step; just hang up.
        if exc_type is None and self._sock is not None:
            self.quit()
        self.close()

    # -- framing ----------------------------------------------------------

    def _send(self, command: bytes, payload: bytes, what: str) -> None:
        if self._sock is None:
            raise MilterError(f"{what}: not connected")
        if len(payload) > MILTER_MAX_DATA_SIZE:
            raise ValueError(f"{what}: {len(payload)} bytes exceed MILTER_MAX_DATA_SIZE")
        self._send_bytes(frame(command, payload), what)

    def _send_bytes(self, data: bytes, what: str) -> None:
        if self._sock is None:
            raise MilterError(f"{what}: not connected")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise MilterError(f"sending {what}: {exc}") from exc

    def send_raw(self, data: bytes) -> None:
        """Write data exactly as given, framed or not, and wait for nothing.

        For robustness tests: build packets with frame(), or cut one short.
        """
        self._send_bytes(data, f"{len(data)} raw bytes")

    def read_response(self, what: str = "raw packets") -> Response:
        """Read the milter's final reply to what send_raw() sent."""
        reply, payload = self._receive(what)
        return self._final_reply(reply, payload, what)

    def wait_hangup(self, timeout: float) -> bytes:
        """Wait until the milter closes the connection; return what it sent first.

        A reset counts as closed.  Raises MilterError if the connection is
        still open after timeout seconds.  The socket is closed either way.
        """
        sock = self._sock
        if sock is None:
            raise MilterError("wait_hangup: not connected")
        received = bytes(self._inbox)
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MilterError(
                        f"milter kept the connection open for {timeout}s; it sent {received!r}"
                    )
                sock.settimeout(left)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    return received
                if not chunk:
                    return received
                received += chunk
        finally:
            self.close()

    def _receive_exactly(self, sock: socket.socket, size: int, what: str) -> bytes:
        # recv() may return any part of a packet, or several packets at once.
        while len(self._inbox) < size:
            try:
                if self._quickack:
                    # Linux clears TCP_QUICKACK by itself, so re-arm it per read.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                chunk = sock.recv(max(65536, size - len(self._inbox)))
            except TimeoutError as exc:
                # libmilter drops a command its state table does not allow
                # next (engine.c next_states) without any reply, so a
                # misordered sequence shows up as this timeout.
                raise MilterError(
                    f"timed out after {self.timeout}s waiting for the reply to {what}"
                    " (out of protocol order?)"
                ) from exc
            except OSError as exc:
                raise MilterError(f"receiving the reply to {what}: {exc}") from exc
            if not chunk:
                raise MilterError(f"milter hung up while the reply to {what} was pending")
            self._inbox += chunk
        data = bytes(self._inbox[:size])
        del self._inbox[:size]
        return data

    def _receive(self, what: str) -> tuple[bytes, bytes]:
        """Read one packet; return its reply byte and payload.

        Any failure hangs up: a reply arriving late would otherwise be taken
        as the answer to the next command.
        """
        sock = self._sock
        if sock is None:
            raise MilterError(f"{what}: not connected")
        try:
            (length,) = _LENGTH.unpack(self._receive_exactly(sock, _LENGTH.size, what))
            if not 1 <= length <= _MAX_REPLY_SIZE + 1:
                raise MilterError(f"implausible packet length {length} in the reply to {what}")
            packet = self._receive_exactly(sock, length, what)
        except MilterError:
            self.close()
            raise
        return packet[:1], packet[1:]

    def _final_reply(self, reply: bytes, payload: bytes, what: str) -> Response:
        kind = _FINAL_REPLIES.get(reply)
        if kind is None:
            raise MilterError(f"unexpected reply {reply!r} ({payload!r}) to {what}")
        if reply != SMFIR_REPLYCODE:
            return Response(kind)
        text = payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
        return Response(kind, code=text[:3], text=text)

    # -- negotiation and macros -------------------------------------------

    def negotiate(
        self, actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL
    ) -> tuple[int, int, int]:
        """SMFIC_OPTNEG: offer actions and protocol bits; return what was agreed.

        The agreed (version, actions, protocol) are also kept in the
        attributes of those names and steer every later command.
        """
        what = "OPTNEG"
        self._send(SMFIC_OPTNEG, _OPTNEG.pack(SMFI_PROT_VERSION, actions, protocol), what)
        reply, payload = self._receive(what)
        if reply != SMFIC_OPTNEG or len(payload) < _OPTNEG.size:
            raise MilterError(f"bad reply to OPTNEG: {reply!r} {payload!r}")
        version, agreed_actions, agreed_protocol = _OPTNEG.unpack_from(payload)
        # An MTA refuses a milter that wants more than was offered
        # (libmilter itself checks the same before answering).
        offered_actions = actions or SMFI_V1_ACTS
        offered_protocol = protocol or SMFI_V1_PROT
        if agreed_actions & ~offered_actions or agreed_protocol & ~offered_protocol:
            raise MilterError(
                f"milter wants actions {agreed_actions:#x} / protocol {agreed_protocol:#x}, "
                f"offered {offered_actions:#x} / {offered_protocol:#x}"
            )
        # After the three integers libmilter appends one (SMFIM_* stage, macro
        # list) pair per smfi_setsymlist call.
        rest = payload[_OPTNEG.size :]
        requested: dict[str, tuple[str, ...]] = {}
        while rest:
            if len(rest) < _LENGTH.size or b"\0" not in rest[_LENGTH.size :]:
                raise MilterError(f"malformed macro list in the OPTNEG reply: {rest!r}")
            (stage,) = _LENGTH.unpack_from(rest)
            names, _, rest = rest[_LENGTH.size :].partition(b"\0")
            letter = _SYMLIST_STAGES.get(stage, str(stage))
            requested[letter] = tuple(names.decode("utf-8", "surrogateescape").split())
        self.version, self.actions, self.protocol = version, agreed_actions, agreed_protocol
        self.requested_macros = requested
        self._negotiated = True
        return version, agreed_actions, agreed_protocol

    def macros(self, cmd: str, values: Mapping[str, str]) -> None:
        """SMFIC_MACRO: define macros for the stage whose command letter is cmd.

        Send them just before that stage's command, as an MTA does; names are
        given as the MTA spells them ("j", "{auth_authen}").  No reply.
        libmilter keeps one set per stage C, H, M, R, T, N, E until the same
        stage's macros come again or an earlier stage's command clears them,
        so values outlive a transaction unless they are sent again.
        """
        if len(cmd) != 1:
            raise ValueError(f"macro stage must be one command letter, not {cmd!r}")
        pairs = [text for item in values.items() for text in item]
        self._send(SMFIC_MACRO, cmd.encode("ascii") + _nul_terminated(*pairs), f"MACRO {cmd}")

    # -- SMTP stages ------------------------------------------------------

    def _step(self, command: bytes, payload: bytes, what: str) -> Response:
        """Send a stage command unless skipped (SMFIP_NO*); await a reply unless SMFIP_NR_*."""
        if not self._negotiated:
            raise MilterError(f"{what}: negotiate() must come first")
        not_sent, not_answered = _STEP_FLAGS[command]
        if self.protocol & not_sent:
            return _ASSUMED_CONTINUE
        self._send(command, payload, what)
        if self.protocol & not_answered:
            return _ASSUMED_CONTINUE
        reply, reply_payload = self._receive(what)
        return self._final_reply(reply, reply_payload, what)

    def connect(self, hostname: str, address: str | None, port: int = 25) -> Response:
        """SMFIC_CONNECT; family SMFIA_INET or SMFIA_INET6 from address, SMFIA_UNKNOWN for None."""
        payload = _nul_terminated(hostname)
        if address is None:
            payload += b"U"
        else:
            family = b"4" if ipaddress.ip_address(address).version == 4 else b"6"
            payload += family + _PORT.pack(port) + _nul_terminated(address)
        return self._step(SMFIC_CONNECT, payload, f"CONNECT {hostname} [{address}]")

    def helo(self, name: str) -> Response:
        """SMFIC_HELO with the HELO/EHLO argument."""
        return self._step(SMFIC_HELO, _nul_terminated(name), f"HELO {name}")

    def mail(self, sender: str, *esmtp: str) -> Response:
        """SMFIC_MAIL; sender with its angle brackets ("<a@b>", "<>"), then ESMTP args."""
        return self._step(SMFIC_MAIL, _nul_terminated(sender, *esmtp), f"MAIL {sender}")

    def rcpt(self, rcpt: str, *esmtp: str) -> Response:
        """SMFIC_RCPT; recipient with its angle brackets, then ESMTP args."""
        return self._step(SMFIC_RCPT, _nul_terminated(rcpt, *esmtp), f"RCPT {rcpt}")

    def data(self) -> Response:
        """SMFIC_DATA: the client said DATA."""
        return self._step(SMFIC_DATA, b"", "DATA")

    def header(self, name: str, value: str) -> Response:
        """SMFIC_HEADER; value is sent exactly as given."""
        return self._step(SMFIC_HEADER, _nul_terminated(name, value), f"HEADER {name}")

    def eoh(self) -> Response:
        """SMFIC_EOH: end of headers."""
        return self._step(SMFIC_EOH, b"", "EOH")

    def body(self, chunk: bytes) -> Response:
        """SMFIC_BODY with one chunk of at most MILTER_CHUNK_SIZE bytes."""
        return self._step(SMFIC_BODY, chunk, f"BODY ({len(chunk)} bytes)")

    def unknown(self, line: str) -> Response:
        """SMFIC_UNKNOWN: an SMTP command the MTA did not recognise."""
        return self._step(SMFIC_UNKNOWN, _nul_terminated(line), f"UNKNOWN {line}")

    def eom(self) -> EomResult:
        """SMFIC_BODYEOB: end of message; collect modifications up to the final reply."""
        what = "EOM"
        if not self._negotiated:
            raise MilterError(f"{what}: negotiate() must come first")
        self._send(SMFIC_BODYEOB, b"", what)
        modifications: list[Modification] = []
        progress = 0
        while True:
            reply, payload = self._receive(what)
            if reply in _MODIFICATIONS:
                modifications.append(_parse_modification(reply, payload))
            elif reply == SMFIR_PROGRESS:
                progress += 1
            else:
                return EomResult(self._final_reply(reply, payload, what), modifications, progress)

    def abort(self) -> None:
        """SMFIC_ABORT: forget the current message; the milter sends no reply."""
        self._send(SMFIC_ABORT, b"", "ABORT")

    def quit(self) -> None:
        """SMFIC_QUIT (no reply), then close the socket."""
        try:
            self._send(SMFIC_QUIT, b"", "QUIT")
        finally:
            self.close()

    # -- convenience ------------------------------------------------------

    def transaction(
        self,
        sender: str,
        rcpts: Sequence[str],
        headers: Iterable[tuple[str, str]] = (("Subject", "t"),),
        body: bytes = b"hi\r\n",
        macros: Mapping[str, Mapping[str, str]] | None = None,
    ) -> TransactionResult:
        """Run MAIL, RCPT..., DATA, headers, EOH, body, EOM as an MTA would.

        macros maps stage letters (M, R, T, N, E) to the macros sent before
        each command of that stage.  A refused recipient only drops
        that recipient; any other reply but continue/skip ends the message,
        as does refusal of every recipient, and then SMFIC_ABORT is sent so
        the connection is ready for the next MAIL.  A "skip" reply to a body
        chunk stops the body (SMFIR_SKIP) but not the message.
        """
        if isinstance(rcpts, str) or not rcpts:
            raise ValueError("rcpts must be a non-empty sequence of addresses")
        stage_macros = dict(macros or {})
        if not stage_macros.keys() <= _TRANSACTION_MACRO_STAGES:
            stages = "".join(sorted(_TRANSACTION_MACRO_STAGES))
            raise ValueError(f"transaction() sends macros only for the stages {stages}")

        def staged(letter: str) -> None:
            if letter in stage_macros:
                self.macros(letter, stage_macros[letter])

        def stop(result: TransactionResult, response: Response) -> TransactionResult:
            self.abort()
            result.final = response
            result.aborted = True
            return result

        staged("M")
        mail = self.mail(sender)
        result = TransactionResult(final=mail, mail=mail)
        if not mail.proceeds:
            return stop(result, mail)
        accepted = 0
        for rcpt in rcpts:
            staged("R")
            response = self.rcpt(rcpt)
            result.rcpts.append((rcpt, response))
            if response.proceeds:
                accepted += 1
            elif response.kind not in ("reject", "tempfail", "replycode"):
                # accept or discard settles the whole message (libmilter
                # leaves the transaction on accept, so nothing more is sent).
                return stop(result, response)
        if not accepted:
            return stop(result, result.rcpts[-1][1])
        staged("T")
        result.data = self.data()
        if not result.data.proceeds:
            return stop(result, result.data)
        for name, value in headers:
            response = self.header(name, value)
            result.headers.append(response)
            if not response.proceeds:
                return stop(result, response)
        staged("N")
        result.eoh = self.eoh()
        if not result.eoh.proceeds:
            return stop(result, result.eoh)
        for start in range(0, len(body), MILTER_CHUNK_SIZE):
            response = self.body(body[start : start + MILTER_CHUNK_SIZE])
            result.body.append(response)
            if response.kind == "skip":
                break
            if not response.proceeds:
                return stop(result, response)
        staged("E")
        result.eom = self.eom()
        result.final = result.eom.response
        return result


def apply_header_changes(
    headers: Sequence[tuple[str, str]], modifications: Iterable[Modification]
) -> list[tuple[str, str]]:
    """`headers` (name, value) as an MTA leaves them after a milter's header
    changes, applied in the order they came (libmilter's smfi_addheader,
    smfi_insheader, smfi_chgheader; sendmail and Postfix agree on these).

    addheader appends; insheader inserts before the header at its index (0:
    at the top; past the end: appends); chgheader replaces the index-th
    header of its name (counted from 1, names compared without case), or
    deletes it when the value is empty, or appends one when there are fewer.
    Modifications of the envelope or the body change no header.
    """
    result = list(headers)
    for change in modifications:
        if change.name is None or change.value is None:
            continue
        if change.action == "addheader":
            result.append((change.name, change.value))
        elif change.action == "insheader":
            assert change.index is not None
            result.insert(change.index, (change.name, change.value))
        elif change.action == "chgheader":
            assert change.index is not None
            named = [i for i, (name, _) in enumerate(result) if name.lower() == change.name.lower()]
            occurrence = max(change.index, 1)  # libmilter takes 0 for 1
            if occurrence > len(named):
                if change.value:
                    result.append((change.name, change.value))
            elif change.value:
                result[named[occurrence - 1]] = (change.name, change.value)
            else:
                del result[named[occurrence - 1]]
    return result


def one_transaction(
    spec: str, ip: str, helo: str, sender: str, *, mta_name: str | None = None
) -> TransactionResult:
    """A connection from `ip` saying `helo`, one message from `sender` to
    user@example.net, closed again; `mta_name` is sent as macro j."""
    with MilterClient(spec) as client:
        client.negotiate()
        if mta_name is not None:
            client.macros("C", {"j": mta_name})
        client.connect("client.example", ip)
        client.helo(helo)
        return client.transaction(f"<{sender}>", ["<user@example.net>"])
