"""The /metrics listener: bounded connections, scrapes answered whatever else
connects, OpenMetrics on request, nothing held by a forked process."""

from __future__ import annotations

import os
import socket
import urllib.request

from spfmilter.core.metrics import Metrics
from spfmilter.process.exporter import Listener
from testkit.daemon import wait_for
from testkit.net import sockets_on_port
from tests.support.fakes import counted
from tests.support.prometheus import (
    PROMETHEUS_ACCEPT,
    openmetrics_families,
    sample,
    text_families,
)


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
        families = text_families(response.read().decode())
        assert sample(families, "spfmilter_internal_errors_total") == 1
    before = fds()
    # 40 clients that send half a request and wait: each newer one pushes
    # the oldest out, and the last 4 time out.
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
    assert closed == 40
    for sock in idle:
        sock.close()
    wait_for(lambda: fds() <= before, 5, "the listener to let go of its connections")
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200


def test_clients_holding_every_place_cannot_keep_a_scrape_out() -> None:
    listener = Listener(Metrics(), "127.0.0.1", 0, max_clients=4, client_seconds=60)
    listener.start()
    address = ("127.0.0.1", listener.port)
    url = f"http://{address[0]}:{address[1]}/metrics"
    hostile: list[socket.socket] = []
    try:
        for _ in range(20):
            # Four more that wait with half a request, as many as places.
            for _ in range(4):
                sock = socket.create_connection(address)
                sock.sendall(b"G")
                hostile.append(sock)
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
    finally:
        for sock in hostile:
            sock.close()


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    listener = Listener(counted(), "127.0.0.1", 0)
    listener.start()
    request = urllib.request.Request(
        f"http://127.0.0.1:{listener.port}/metrics", headers={"Accept": PROMETHEUS_ACCEPT}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"] == (
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        )
        text = response.read().decode()
    assert text.endswith("\n# EOF\n")
    families = openmetrics_families(text)
    assert sample(families, "spfmilter_connections_in_flight") == 1


def test_a_forked_process_holds_none_of_the_listeners_sockets() -> None:
    listener = Listener(Metrics(), "127.0.0.1", 0, client_seconds=60)
    listener.start()
    port = listener.port
    waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        for sock in waiting:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n")  # and the rest, some day
        me = os.getpid()
        wait_for(lambda: sockets_on_port(me, port) == 4, 5, "the listener to accept")
        pid = os.fork()
        if pid == 0:  # a worker: its exit status says how many it kept
            kept = 100
            try:
                kept = sockets_on_port(os.getpid(), port)
            finally:
                os._exit(min(kept, 100))
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert sockets_on_port(me, port) == 4  # the parent's are its own
    finally:
        for sock in waiting:
            sock.close()


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
