"""Metrics: the exposition text, slots added up, and the bounded listener."""

from __future__ import annotations

import os
import socket
import urllib.request

import pytest

from spfmilter import __version__
from spfmilter.metrics import Metrics
from spfmilter.scrape import Listener
from tests.support.daemon import wait_for


def test_exposition_counters_gauges_and_labels() -> None:
    metrics = Metrics()
    metrics.verdicts.labels("mailfrom", "pass", "accept").inc()
    metrics.verdicts.labels("mailfrom", "pass", "accept").inc()
    metrics.connections.inc()
    metrics.connections.inc()
    metrics.connections.dec()
    text = metrics.exposition()
    assert "# TYPE spfmilter_verdicts counter\n" in text
    assert (
        'spfmilter_verdicts_total{action="accept",identity="mailfrom",result="pass"} 2.0\n' in text
    )
    assert 'spfmilter_verdicts_total{action="defer",identity="helo",result="fail"} 0.0\n' in text
    assert "spfmilter_connections_in_flight 1.0\n" in text
    assert 'spfmilter_skips_total{reason="localhost"} 0.0\n' in text
    assert f'spfmilter_build_info{{version="{__version__}"}} 1.0\n' in text
    assert metrics.value("spfmilter_connections_in_flight") == 1.0
    with pytest.raises(KeyError):
        metrics.verdicts.labels("mailfrom", "pass", "skip")


def test_histogram_buckets_are_cumulative() -> None:
    metrics = Metrics()
    for seconds in (0.0005, 0.003, 0.003, 30.0):
        metrics.dns_seconds.labels("TXT").observe(seconds)
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="0.001") == 1
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="0.0025") == 1
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="0.005") == 3
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="20.0") == 3
    assert metrics.value("spfmilter_dns_query_seconds_bucket", qtype="TXT", le="+Inf") == 4
    assert metrics.value("spfmilter_dns_query_seconds_count", qtype="TXT") == 4
    assert metrics.value("spfmilter_dns_query_seconds_sum", qtype="TXT") == pytest.approx(30.0065)
    assert metrics.value("spfmilter_dns_query_seconds_count", qtype="A") == 0


def test_slots_of_forked_workers_add_up() -> None:
    metrics = Metrics(slots=3)
    metrics.use_slot(1)
    metrics.errors.inc()
    metrics.connections.inc()
    pid = os.fork()
    if pid == 0:  # a worker counting in its own slot of the shared memory
        metrics.use_slot(2)
        metrics.errors.inc(5)
        metrics.connections.inc()
        os._exit(0)
    os.waitpid(pid, 0)
    assert metrics.value("spfmilter_internal_errors_total") == 6
    assert metrics.value("spfmilter_connections_in_flight") == 2
    metrics.clear_gauges(2)  # that worker is gone: its connections too
    assert metrics.value("spfmilter_connections_in_flight") == 1
    assert metrics.value("spfmilter_internal_errors_total") == 6


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_listener_serves_and_bounds_its_connections() -> None:
    metrics = Metrics()
    metrics.errors.inc()
    listener = Listener(metrics, "127.0.0.1", 0, max_clients=4, client_seconds=0.5)
    listener.start()
    url = f"http://127.0.0.1:{listener.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "spfmilter_internal_errors_total 1.0" in response.read().decode()
    before = fds()
    # 40 clients that send half a request and wait: 4 are held, the rest
    # closed at once, and the held ones time out.
    idle = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(40)]
    for sock in idle:
        sock.sendall(b"GET /metr")
    closed = 0
    for sock in idle:
        sock.settimeout(3)
        try:
            closed += sock.recv(1) == b""
        except ConnectionResetError:  # closed with our request unread
            closed += 1
    assert closed == 40  # 36 at once, 4 after their half second
    for sock in idle:
        sock.close()
    wait_for(lambda: fds() <= before, 5, "the listener to let go of its connections")
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200


def test_listener_answers_other_requests_without_metrics() -> None:
    listener = Listener(Metrics(), "127.0.0.1", 0, client_seconds=60)
    listener.start()
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
        sock.sendall(b"GET /other HTTP/1.0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.0 404 ")
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
        sock.sendall(b"POST /metrics HTTP/1.0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.0 405 ")
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
        # No end of headers within the size limit: closed at once, long
        # before the minute a client may take.
        sock.sendall(b"X" * 9000)
        assert sock.recv(100) == b""
