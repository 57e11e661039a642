"""Prometheus metrics: their names, labels and buckets, their storage, and
the listener that serves them.

This module owns every metric spfmilter exports and how it is kept: each
series has a fixed place in one block of doubles (every label value is known
in advance), so that the block can be a shared memory mapping in which each
worker process counts in a slot of its own and a scrape adds the slots up.
The listener ([metrics] listen) is one thread that serves at most
MAX_CLIENTS connections at a time, each for at most CLIENT_SECONDS, and
closes any further connection at once: whatever scrapers or others do, it
holds a bounded number of descriptors and no more threads.  The Metrics
object is made once in daemon.py and passed to its users through their
constructors.  It imports the package version and the value enums of model.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Sequence

from spfmilter import __version__
from spfmilter.model import Action, Identity, SkipReason, SpfResult

log = logging.getLogger(__name__)

# DNS answers on a LAN resolver take about a millisecond, a cold recursive
# lookup tens to hundreds, and a timeout seconds.
DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)
# Every type spfmilter.dnswire can ask for.
QTYPES = ("A", "AAAA", "CNAME", "MX", "PTR", "SOA", "SPF", "TXT")
DNS_OUTCOMES = ("answer", "empty", "refused", "timeout", "failure", "error")

MAX_CLIENTS = 8
CLIENT_SECONDS = 5.0
MAX_REQUEST = 8192


class _Store:
    """Doubles in slots: one slot per process that counts."""

    def __init__(self, size: int, slots: int) -> None:
        self.size = size
        self.slots = slots
        # An anonymous shared mapping: a forked worker writes into the very
        # memory its parent reads.
        self._memory = mmap.mmap(-1, max(8, size * slots * 8))
        self.values = memoryview(self._memory).cast("d")
        self.base = 0
        self.lock = threading.Lock()

    def use_slot(self, slot: int) -> None:
        """Count in `slot` from now on (a worker after the fork)."""
        self.base = slot * self.size
        self.lock = threading.Lock()  # one the fork may have copied locked is dropped

    def add(self, index: int, amount: float) -> None:
        with self.lock:
            self.values[self.base + index] += amount

    def total(self, index: int) -> float:
        return sum(self.values[slot * self.size + index] for slot in range(self.slots))

    def reset_slot(self, slot: int, indexes: Iterable[int]) -> None:
        for index in indexes:
            self.values[slot * self.size + index] = 0.0


class _Series:
    """One labelled series: a place in the store."""

    def __init__(self, store: _Store, index: int) -> None:
        self._store = store
        self._index = index

    def inc(self, amount: float = 1.0) -> None:
        self._store.add(self._index, amount)

    def dec(self, amount: float = 1.0) -> None:
        self._store.add(self._index, -amount)

    def observe(self, value: float) -> None:
        raise TypeError("only histograms observe")


class _Histogram(_Series):
    """Buckets, then sum, then count, in consecutive places."""

    def __init__(self, store: _Store, index: int, buckets: Sequence[float]) -> None:
        super().__init__(store, index)
        self._buckets = buckets

    def observe(self, value: float) -> None:
        for offset, bound in enumerate(self._buckets):
            if value <= bound:
                self._store.add(self._index + offset, 1.0)
                break
        self._store.add(self._index + len(self._buckets), value)
        self._store.add(self._index + len(self._buckets) + 1, 1.0)


class Metric:
    """A metric with fixed label names and the values each label takes."""

    def __init__(
        self,
        name: str,
        kind: str,
        documentation: str,
        labels: Sequence[tuple[str, Sequence[str]]] = (),
        buckets: Sequence[float] = (),
    ) -> None:
        self.name = name
        self.kind = kind
        self.documentation = documentation
        self.label_names = tuple(label for label, _ in labels)
        self.combinations = list(itertools.product(*(values for _, values in labels)))
        self.buckets = tuple(buckets)
        self.width = len(self.buckets) + 2 if kind == "histogram" else 1
        self.index = 0
        self._series: dict[tuple[str, ...], _Series] = {}

    def bind(self, store: _Store, index: int) -> int:
        """Take places from `index` on; returns the next free place."""
        self.index = index
        for number, combination in enumerate(self.combinations):
            at = index + number * self.width
            self._series[combination] = (
                _Histogram(store, at, self.buckets)
                if self.kind == "histogram"
                else _Series(store, at)
            )
        return index + len(self.combinations) * self.width

    def labels(self, *values: str) -> _Series:
        """The series for these label values (in label-name order)."""
        return self._series[tuple(str(v) for v in values)]

    def inc(self, amount: float = 1.0) -> None:
        self._series[()].inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._series[()].dec(amount)


class Metrics:
    """The process's metrics.  `slots` is the number of processes counting."""

    def __init__(self, slots: int = 1) -> None:
        results = [r.value for r in SpfResult]
        actions = [a.value for a in Action if a is not Action.SKIP]
        self.verdicts = Metric(
            "spfmilter_verdicts",
            "counter",
            "Verdicts, by the identity that decided, its SPF result and the action",
            [("identity", [i.value for i in Identity]), ("result", results), ("action", actions)],
        )
        self.skips = Metric(
            "spfmilter_skips",
            "counter",
            "Transactions SPF was not applied to, by reason",
            [("reason", [r.value for r in SkipReason])],
        )
        self.dns_queries = Metric(
            "spfmilter_dns_queries",
            "counter",
            "DNS queries sent (cache misses), by type and outcome",
            [("qtype", QTYPES), ("outcome", DNS_OUTCOMES)],
        )
        self.dns_seconds = Metric(
            "spfmilter_dns_query_seconds",
            "histogram",
            "Time of DNS queries sent",
            [("qtype", QTYPES)],
            DNS_BUCKETS,
        )
        self.cache_hits = Metric(
            "spfmilter_dns_cache_hits", "counter", "Lookups answered by the shared cache"
        )
        self.cache_misses = Metric(
            "spfmilter_dns_cache_misses", "counter", "Lookups the shared cache could not answer"
        )
        self.result_cache_hits = Metric(
            "spfmilter_result_cache_hits",
            "counter",
            "SPF evaluations answered by a kept result of the same query",
        )
        self.result_cache_misses = Metric(
            "spfmilter_result_cache_misses", "counter", "SPF evaluations that had to be made"
        )
        self.connections = Metric(
            "spfmilter_connections_in_flight", "gauge", "SMTP connections being served"
        )
        self.errors = Metric(
            "spfmilter_internal_errors",
            "counter",
            "Callbacks that failed unexpectedly and were tempfailed",
        )
        self.reloads = Metric(
            "spfmilter_config_reloads",
            "counter",
            "Configuration reloads, by outcome",
            [("outcome", ("ok", "failed"))],
        )
        self.all = [
            self.verdicts,
            self.skips,
            self.dns_queries,
            self.dns_seconds,
            self.cache_hits,
            self.cache_misses,
            self.result_cache_hits,
            self.result_cache_misses,
            self.connections,
            self.errors,
            self.reloads,
        ]
        size = sum(len(m.combinations) * m.width for m in self.all)
        self._store = _Store(size, slots)
        index = 0
        for metric in self.all:
            index = metric.bind(self._store, index)

    def use_slot(self, slot: int) -> None:
        """Count in `slot` (a worker process after the fork)."""
        self._store.use_slot(slot)

    def clear_gauges(self, slot: int) -> None:
        """Zero the gauges of a slot whose process is gone."""
        for metric in self.all:
            if metric.kind == "gauge":
                self._store.reset_slot(slot, [metric.index])

    def value(self, name: str, **labels: str) -> float:
        """One sample by its exposition name (tests, and a look from outside)."""
        for metric in self.all:
            for sample, sample_labels, amount in self._samples(metric):
                if sample == name and sample_labels == labels:
                    return amount
        raise KeyError(f"no sample {name}{labels}")

    def exposition(self) -> str:
        """The text format (version 0.0.4) of every metric, slots added up."""
        out = []
        for metric in self.all:
            out.append(f"# HELP {metric.name} {metric.documentation}")
            out.append(f"# TYPE {metric.name} {metric.kind}")
            for sample, labels, amount in self._samples(metric):
                out.append(f"{sample}{_labels(labels)} {amount!r}")
        out.append("# HELP spfmilter_build Version of spfmilter")
        out.append("# TYPE spfmilter_build gauge")
        out.append(f'spfmilter_build_info{{version="{__version__}"}} 1.0')
        return "\n".join(out) + "\n"

    def _samples(self, metric: Metric) -> Iterable[tuple[str, dict[str, str], float]]:
        suffix = "_total" if metric.kind == "counter" else ""
        for number, combination in enumerate(metric.combinations):
            labels = dict(zip(metric.label_names, combination, strict=True))
            at = metric.index + number * metric.width
            if metric.kind != "histogram":
                yield metric.name + suffix, labels, self._store.total(at)
                continue
            running = 0.0
            for offset, bound in enumerate((*metric.buckets, float("inf"))):
                if offset < len(metric.buckets):
                    running += self._store.total(at + offset)
                else:
                    running = self._store.total(at + len(metric.buckets) + 1)
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                yield f"{metric.name}_bucket", {**labels, "le": le}, running
            yield f"{metric.name}_sum", labels, self._store.total(at + len(metric.buckets))
            yield f"{metric.name}_count", labels, self._store.total(at + len(metric.buckets) + 1)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    pairs = (f'{name}="{labels[name]}"' for name in sorted(labels))
    return "{" + ",".join(pairs) + "}"


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
