"""The /metrics HTTP listener ([metrics] listen).

This module owns serving the exposition of spfmilter.core.metrics to scrapers,
whatever else connects to the port, from one thread with a bounded number
of descriptors and bytes.  The kernel hands a connection over only once its
first bytes came (TCP_DEFER_ACCEPT): a scraper's comes with its request and
is answered as it is accepted, while clients that connect and wait stay in
the kernel's backlog.  At most MAX_CLIENTS connections are held, each for at
most CLIENT_SECONDS and MAX_REQUEST bytes of request; one that comes when
they are all held takes the place of the oldest rather than being refused,
so clients that send a byte at a time cannot keep a scraper out either.
The listener's descriptors are let go in any process forked from the one
serving (a worker), and a fork never happens between accepting a connection
and recording it, so no worker keeps a scraper's connection open.
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass

from spfmilter.core.metrics import OPENMETRICS_TYPE, TEXT_TYPE, Metrics

log = logging.getLogger("spfmilter.scrape")

MAX_CLIENTS = 16
CLIENT_SECONDS = 5.0
MAX_REQUEST = 8192
# Connections the kernel keeps for the listener, those still waiting for
# their first bytes included: room for thousands of clients that connect and
# wait, beside which a scraper's is neither dropped nor let in by a SYN
# cookie before its request.  The kernel caps it at net.core.somaxconn.
BACKLOG = 4096
# How long accepting pauses when it failed (out of descriptors, say),
# rather than spin on the connection waiting.
ACCEPT_PAUSE = 1.0
TICK = 0.5


@dataclass(slots=True)
class _Client:
    deadline: float
    received: bytearray
    pending: bytes | None = None  # the response, until it is all sent


class Listener:
    """The /metrics HTTP listener: one thread, bounded connections."""

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        *,
        max_clients: int = MAX_CLIENTS,
        client_seconds: float = CLIENT_SECONDS,
    ) -> None:
        self._metrics = metrics
        self._max_clients = max_clients
        self._client_seconds = client_seconds
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        # Connections that sent nothing are handed over after about as
        # long as a client may take (whole seconds), to be timed out.
        wait = max(1, math.ceil(client_seconds))
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, wait)
        self._socket.listen(BACKLOG)
        self._socket.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._socket, selectors.EVENT_READ)
        # Oldest first (dicts keep insertion order): the next to give way.
        self._clients: dict[socket.socket, _Client] = {}
        # Held from accepting a connection until it is recorded, and across
        # a fork, so that a forked process knows every descriptor to close.
        self._accepting = threading.Lock()
        os.register_at_fork(
            before=self._accepting.acquire,
            after_in_parent=self._accepting.release,
            after_in_child=self._let_go,
        )

    @property
    def port(self) -> int:
        """The port bound (useful when 0 was asked for)."""
        port: int = self._socket.getsockname()[1]
        return port

    def start(self) -> None:
        """Serve in a daemon thread."""
        threading.Thread(target=self._serve, name="metrics", daemon=True).start()

    def _let_go(self) -> None:
        """In a forked process, where the serving thread does not exist:
        close the copies of the listener's descriptors."""
        for sock in self._clients:
            sock.close()
        self._clients.clear()
        self._selector.close()
        self._socket.close()
        self._accepting.release()  # for a fork of this process in its turn

    def _serve(self) -> None:
        resume = 0.0
        while True:
            if resume and time.monotonic() >= resume:
                self._selector.register(self._socket, selectors.EVENT_READ)
                resume = 0.0
            for key, _ in self._selector.select(timeout=TICK):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._socket:
                    if not self._accept():
                        self._selector.unregister(self._socket)
                        resume = time.monotonic() + ACCEPT_PAUSE
                elif sock in self._clients:  # not pushed out earlier in this turn
                    self._progress(sock, self._clients[sock])
            now = time.monotonic()
            for sock, client in list(self._clients.items()):
                if now > client.deadline:
                    self._close(sock)

    def _accept(self) -> bool:
        """Take one connection and serve what it sent already; False when
        accepting failed for want of resources."""
        with self._accepting:
            try:
                sock, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError, ConnectionError):
                return True  # gone before it was accepted
            except OSError as error:
                log.warning("metrics listener cannot accept a connection: %s", error)
                return False
            if len(self._clients) >= self._max_clients:
                self._close(next(iter(self._clients)))  # the oldest gives way
            sock.setblocking(False)
            client = _Client(time.monotonic() + self._client_seconds, bytearray())
            self._clients[sock] = client
            self._selector.register(sock, selectors.EVENT_READ)
        self._progress(sock, client)
        return True

    def _progress(self, sock: socket.socket, client: _Client) -> None:
        """Read the request or write the response, as far as the socket
        lets us now."""
        try:
            if client.pending is None:
                self._read(sock, client)
            if client.pending is not None:
                self._write(sock, client)
        except BlockingIOError:
            return  # the selector says when to go on
        except OSError:
            self._close(sock)

    def _read(self, sock: socket.socket, client: _Client) -> None:
        chunk = sock.recv(4096)
        client.received += chunk
        if not chunk or len(client.received) > MAX_REQUEST:
            self._close(sock)
            return
        head, ended, _ = bytes(client.received).replace(b"\r\n", b"\n").partition(b"\n\n")
        if ended:
            client.pending = _response(head, self._metrics)
            self._selector.modify(sock, selectors.EVENT_WRITE)

    def _write(self, sock: socket.socket, client: _Client) -> None:
        assert client.pending is not None
        sent = sock.send(client.pending)
        client.pending = client.pending[sent:]
        if not client.pending:
            self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        if self._clients.pop(sock, None) is not None:
            self._selector.unregister(sock)
            sock.close()


def _response(head: bytes, metrics: Metrics) -> bytes:
    """The whole HTTP response to a request whose head (request line and
    header lines, LF-separated) is `head`."""
    request, *lines = head.split(b"\n")
    words = request.split()
    content_type = "text/plain; charset=utf-8"
    if len(words) < 2 or words[0] not in (b"GET", b"HEAD"):
        status, body = "405 Method Not Allowed", "only GET\n"
    elif words[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
        status, body = "404 Not Found", "see /metrics\n"
    else:
        openmetrics = _accepts_openmetrics(lines)
        status, body = "200 OK", metrics.exposition(openmetrics)
        content_type = OPENMETRICS_TYPE if openmetrics else TEXT_TYPE
    data = body.encode()
    head_out = (
        f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head_out.encode() + (b"" if words[:1] == [b"HEAD"] else data)


def _accepts_openmetrics(lines: list[bytes]) -> bool:
    """Whether the Accept header lists OpenMetrics text (Prometheus lists it
    first, with the text format 0.0.4 as its fallback)."""
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"accept":
            kinds = (kind.split(b";", 1)[0].strip().lower() for kind in value.split(b","))
            if b"application/openmetrics-text" in kinds:
                return True
    return False
