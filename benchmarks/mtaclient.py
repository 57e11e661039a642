"""The milter client as an MTA runs it over TCP.

This module owns the one way the benchmarks' client differs from the
testkit's: how it uses TCP.  The testkit's client sets TCP_NODELAY and
re-arms TCP_QUICKACK so that tests do not wait for delayed ACKs, and writes
every command at once.  An MTA does neither: Postfix (milter8.c) leaves
Nagle and delayed ACKs on and buffers macros, the command and any unanswered
headers in its stream until it reads a reply, so each round trip is one
write.  The inet workload measures a daemon through this client, which
leaves exactly the stall an MTA sees.
"""

from __future__ import annotations

import socket
import struct

from testkit.milterclient import SMFIC_QUIT, MilterClient, MilterError


class MtaLikeTcpClient(MilterClient):
    """The milter client as an MTA runs it over TCP.

    Nagle and delayed ACKs stay on, and everything up to the next reply goes
    out in one write.  libmilter writes an end-of-message modification and
    the final reply as separate packets, and with Nagle on its side the
    second waits for our delayed ACK of the first.
    """

    def __init__(self, spec: str, timeout: float = 30.0) -> None:
        super().__init__(spec, timeout)
        self._unsent = bytearray()

    def open(self) -> None:
        super().open()
        sock = self._sock
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            self._quickack = False

    def _send(self, command: bytes, payload: bytes, what: str) -> None:
        if self._sock is None:
            raise MilterError(f"{what}: not connected")
        # The wire format: length (command byte and payload), command, payload.
        self._unsent += struct.pack(">I", len(payload) + 1) + command + payload

    def _flush(self, what: str) -> None:
        if self._unsent and self._sock is not None:
            try:
                self._sock.sendall(self._unsent)
            except OSError as exc:
                raise MilterError(f"sending {what}: {exc}") from exc
            self._unsent.clear()

    def _receive(self, what: str) -> tuple[bytes, bytes]:
        self._flush(what)
        return super()._receive(what)

    def quit(self) -> None:
        try:
            self._send(SMFIC_QUIT, b"", "QUIT")
            self._flush("QUIT")
        finally:
            self.close()
