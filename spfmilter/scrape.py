"""The /metrics HTTP listener ([metrics] listen).

This module owns serving the exposition of spfmilter.metrics: one thread
that serves at most MAX_CLIENTS connections at a time, each for at most
CLIENT_SECONDS and MAX_REQUEST bytes, and closes any further connection at
once, so whatever scrapers or others do, it holds a bounded number of
descriptors and no more threads.  It imports metrics only.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time

from spfmilter.metrics import Metrics

log = logging.getLogger(__name__)

MAX_CLIENTS = 8
CLIENT_SECONDS = 5.0
MAX_REQUEST = 8192


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
        self._socket.listen(max_clients)
        self._socket.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._socket, selectors.EVENT_READ)
        # socket -> (deadline, bytes received, bytes still to send or None)
        self._clients: dict[socket.socket, tuple[float, bytearray, bytes | None]] = {}

    @property
    def port(self) -> int:
        """The port bound (useful when 0 was asked for)."""
        port: int = self._socket.getsockname()[1]
        return port

    def start(self) -> None:
        """Serve in a daemon thread."""
        threading.Thread(target=self._serve, name="metrics", daemon=True).start()

    def close(self) -> None:
        """Let go of the listening socket (a forked worker, whose copy of
        the serving thread does not exist)."""
        self._selector.close()
        self._socket.close()

    def _serve(self) -> None:
        paused_until = 0.0
        while True:
            now = time.monotonic()
            if paused_until and now > paused_until:
                self._selector.register(self._socket, selectors.EVENT_READ)
                paused_until = 0.0
            for key, events in self._selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._socket:
                    if not self._accept():
                        # Out of descriptors, say: stop accepting for a
                        # while rather than spin on the waiting connection.
                        self._selector.unregister(self._socket)
                        paused_until = time.monotonic() + 1.0
                    continue
                try:
                    if events & selectors.EVENT_READ:
                        self._read(sock)
                    else:
                        self._write(sock)
                except OSError:
                    self._close(sock)
            now = time.monotonic()
            for sock, (deadline, _, _) in list(self._clients.items()):
                if now > deadline:
                    self._close(sock)

    def _accept(self) -> bool:
        """Take one connection; False when accepting failed."""
        try:
            sock, _ = self._socket.accept()
        except BlockingIOError:
            return True
        except OSError as error:
            log.warning("metrics listener cannot accept a connection: %s", error)
            return False
        if len(self._clients) >= self._max_clients:
            sock.close()  # busy: the scraper tries again, nothing piles up
            return True
        sock.setblocking(False)
        self._clients[sock] = (time.monotonic() + self._client_seconds, bytearray(), None)
        self._selector.register(sock, selectors.EVENT_READ)
        return True

    def _read(self, sock: socket.socket) -> None:
        deadline, received, _ = self._clients[sock]
        chunk = sock.recv(4096)
        received += chunk
        if not chunk or len(received) > MAX_REQUEST:
            self._close(sock)
            return
        if b"\r\n\r\n" not in received and b"\n\n" not in received:
            return
        self._clients[sock] = (deadline, received, _response(bytes(received), self._metrics))
        self._selector.modify(sock, selectors.EVENT_WRITE)

    def _write(self, sock: socket.socket) -> None:
        deadline, received, pending = self._clients[sock]
        assert pending is not None
        sent = sock.send(pending)
        if sent == len(pending):
            self._close(sock)
        else:
            self._clients[sock] = (deadline, received, pending[sent:])

    def _close(self, sock: socket.socket) -> None:
        self._clients.pop(sock, None)
        self._selector.unregister(sock)
        sock.close()


def _response(request: bytes, metrics: Metrics) -> bytes:
    words = request.split(b"\r\n", 1)[0].split()
    if len(words) < 2 or words[0] not in (b"GET", b"HEAD"):
        status, body = "405 Method Not Allowed", "only GET\n"
    elif words[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
        status, body = "404 Not Found", "see /metrics\n"
    else:
        status, body = "200 OK", metrics.exposition()
    data = body.encode()
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (b"" if words[:1] == [b"HEAD"] else data)
