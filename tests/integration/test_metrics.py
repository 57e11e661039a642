"""/metrics of the real daemon, as Prometheus's own readers see it.

Each test starts the daemon with [metrics] listen on a loopback port and
reads what it serves with promtool and prometheus-client's parsers
(tests/support/prometheus.py): every family typed and documented, the counts
of real transactions, scrapes that keep being answered beside clients that
hold connections open or send a byte at a time, no scraper's connection
kept by a worker forked after it, and many scrapes under load each
consistent.
"""

from __future__ import annotations

import http.client
import os
import resource
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from spfmilter.process.exporter import MAX_CLIENTS
from testkit.daemon import Daemon, children, free_port, process_stats, wait_for
from testkit.milterclient import MilterError, one_transaction
from testkit.net import sockets_on_port
from tests.conftest import MakeDaemon
from tests.support.prometheus import (
    Scrape,
    family_types,
    histogram_problems,
    promtool_check,
    sample,
    scrape,
)

PASS = ("198.51.100.7", "helo-pass.example.org", "a@spf-pass.example.org")
FAIL = ("203.0.113.5", "helo-none.example.org", "m@spf-fail-noexp.example.org")
KILLED = (r"^ERROR spfmilter.workers: worker \d \(pid \d+\) ended: killed by signal 9",)


def with_metrics(
    make_daemon: MakeDaemon, workers: int, **sections: dict[str, str]
) -> tuple[Daemon, int]:
    """A daemon with `workers` serving /metrics; and its metrics port."""
    port = free_port()
    daemon = make_daemon(
        {
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "milter": {"workers": str(workers)},
            **sections,
        },
        allowed=KILLED,
    )
    return daemon, port


def test_prometheus_reads_every_family_typed_with_real_counts(make_daemon: MakeDaemon) -> None:
    # One process, so that the second pass meets the first one's results
    # (each worker has caches of its own; test_workers adds up counts
    # across workers).  The rescue is on: the MAIL FROM fail, which has no
    # signature, is refused at end of message and counted as not rescued.
    daemon, port = with_metrics(make_daemon, 1, rescue={"dkim": "yes"})
    for _ in range(2):
        one_transaction(daemon.socket, *PASS)
    one_transaction(daemon.socket, *FAIL)
    one_transaction(daemon.socket, "127.0.0.1", "localhost", "root@localhost")
    daemon.reload()

    text = scrape(port)
    assert text.content_type == "text/plain; version=0.0.4; charset=utf-8"
    checked = promtool_check(text.text)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
    openmetrics = scrape(port, openmetrics=True)
    assert openmetrics.openmetrics
    for answer in (text, openmetrics):
        families = answer.families()
        kinds = {family.name: family.type for family in families}
        assert kinds == family_types(openmetrics=answer.openmetrics)
        assert all(family.documentation for family in families)
        assert histogram_problems(families) == []
        verdict = "spfmilter_verdicts_total"
        passes = {"action": "accept", "identity": "mailfrom", "result": "pass"}
        fails = {"action": "reject", "identity": "mailfrom", "result": "fail"}
        assert sample(families, verdict, **passes) == 2
        assert sample(families, verdict, **fails) == 1
        assert sample(families, "spfmilter_skips_total", reason="localhost") == 1
        assert sample(families, "spfmilter_rescues_total", kind="none") == 1
        assert sample(families, "spfmilter_rescues_total", kind="dkim") == 0
        assert sample(families, "spfmilter_connections_in_flight") == 0
        assert sample(families, "spfmilter_internal_errors_total") == 0
        assert sample(families, "spfmilter_config_reloads_total", outcome="ok") == 1
        # The second pass reuses the first one's results (HELO and MAIL FROM).
        assert sample(families, "spfmilter_result_cache_hits_total") >= 2
        assert sample(families, "spfmilter_result_cache_misses_total") >= 3
        txt_answers = {"qtype": "TXT", "outcome": "answer"}
        assert sample(families, "spfmilter_dns_queries_total", **txt_answers) >= 2
        assert sample(families, "spfmilter_dns_query_seconds_count", qtype="TXT") >= 2


def test_metrics_clients_cannot_starve_the_milter(make_daemon: MakeDaemon) -> None:
    # 80 scrapers that send half a request and wait used to hold 80 threads
    # and descriptors until the milter could not accept its MTA.
    daemon, port = with_metrics(make_daemon, 1)
    scrape(port)
    before = process_stats(daemon.pid)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(80)]
    try:
        for sock in idle:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        during = process_stats(daemon.pid)
        result = one_transaction(daemon.socket, *PASS)
        assert result.eom is not None and result.eom.modifications[0].name == "Received-SPF"
    finally:
        for sock in idle:
            sock.close()
    assert during.threads == before.threads
    # The listener's bound, whatever came: MAX_CLIENTS held, and for a moment
    # one more, accepted before the oldest gives way to it.
    assert during.fds <= before.fds + MAX_CLIENTS + 1


# ---------------------------------------------------------------- hostile clients

DRIP_SECONDS = 0.05


class Hostile:
    """Connections to a port that never finish a request, kept up by one
    thread: `dripping` ones send a byte every DRIP_SECONDS, `idle` ones
    nothing; each one the server closes is opened again at once."""

    def __init__(self, port: int, dripping: int, idle: int) -> None:
        self._address = ("127.0.0.1", port)
        self._kinds = [True] * dripping + [False] * idle
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile")
        self.reopened = 0

    def __enter__(self) -> Hostile:
        for dripping in self._kinds:
            self._open(dripping)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            assert isinstance(key.fileobj, socket.socket)
            key.fileobj.close()
        self._selector.close()

    def _open(self, dripping: bool) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(self._address)  # completes in the background
        self._selector.register(sock, selectors.EVENT_READ, dripping)

    def _run(self) -> None:
        drip = 0.0
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=DRIP_SECONDS / 2):
                self._reopen(key)  # readable: closed by the server
            if time.monotonic() >= drip:
                drip = time.monotonic() + DRIP_SECONDS
                for key in list(self._selector.get_map().values()):
                    if key.data:
                        try:
                            assert isinstance(key.fileobj, socket.socket)
                            key.fileobj.send(b"G")
                        except OSError:
                            self._reopen(key)

    def _reopen(self, key: selectors.SelectorKey) -> None:
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        self._selector.unregister(sock)
        sock.close()
        self._open(key.data)
        self.reopened += 1


@contextmanager
def descriptors(needed: int) -> Iterator[None]:
    """Room for `needed` descriptors in this process while the block runs:
    the soft limit (often 1,024) raised, and put back after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        yield
        return
    assert hard == resource.RLIM_INFINITY or hard >= needed, f"RLIMIT_NOFILE hard {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


SCRAPES = 48


@pytest.mark.parametrize(("dripping", "idle"), [(8, 0), (0, 1000)], ids=["8-dripping", "1000-idle"])
def test_scrapes_are_answered_beside_hostile_connections(
    make_daemon: MakeDaemon, dripping: int, idle: int
) -> None:
    daemon, port = with_metrics(make_daemon, 2)
    scrape(port)
    before = process_stats(daemon.pid)
    failures: list[str] = []
    scrapes = most_fds = 0
    # Until the daemon has let go of hostile connections too (timed out or
    # pushed out), so that the scrapes met it holding them.
    enough = min(dripping + idle, 2 * MAX_CLIENTS)
    deadline = time.monotonic() + 60
    with descriptors(dripping + idle + 256), Hostile(port, dripping, idle) as hostile:
        while (scrapes < SCRAPES or hostile.reopened < enough) and time.monotonic() < deadline:
            scrapes += 1
            try:
                families = scrape(port, openmetrics=True, timeout=5).families()
                assert sample(families, "spfmilter_connections_in_flight") == 0
            except (OSError, http.client.HTTPException) as error:
                failures.append(repr(error))
            most_fds = max(most_fds, process_stats(daemon.pid).fds)
        reopened = hostile.reopened
    print(f"\n{scrapes - len(failures)} of {scrapes} scrapes answered; {reopened} let go")
    assert failures == [], f"{len(failures)} of {scrapes} scrapes failed: {failures[:3]}"
    assert reopened >= enough
    # One descriptor per connection held, and the scraper's own.
    assert most_fds <= before.fds + MAX_CLIENTS + 1, (before, most_fds)
    assert process_stats(daemon.pid).threads == before.threads


# ---------------------------------------------------------------- workers


def test_a_respawned_worker_holds_no_scrapers_connection(make_daemon: MakeDaemon) -> None:
    daemon, port = with_metrics(make_daemon, 2)
    waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        for sock in waiting:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n")  # and the rest, some day
        # The supervisor serves /metrics: its listening socket and the four.
        wait_for(lambda: sockets_on_port(daemon.pid, port) == 5, 10, "the four to be accepted")
        first, second = children(daemon.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(set(children(daemon.pid)) - {first, second}) == 1, 10, "a new worker")
        (replacement,) = set(children(daemon.pid)) - {second}
        held = {pid: sockets_on_port(pid, port) for pid in (replacement, second)}
        assert held == {replacement: 0, second: 0}
        assert sockets_on_port(daemon.pid, port) == 5
    finally:
        for sock in waiting:
            sock.close()
    assert scrape(port).families()


# ---------------------------------------------------------------- under load

LOAD_CLIENTS = 4
LOAD_SCRAPES = 300


@contextmanager
def load(daemon: Daemon) -> Iterator[list[str]]:
    """Client threads sending transactions until the block ends; yields the
    list of errors they met."""
    errors: list[str] = []
    more = threading.Event()
    more.set()

    def client(n: int) -> None:
        while more.is_set() and len(errors) < 10:
            try:
                result = one_transaction(daemon.socket, *(PASS if n % 2 else FAIL))
            except MilterError as error:
                errors.append(repr(error))
                continue
            if result.final.kind not in ("continue", "replycode"):
                errors.append(str(result.final))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        yield errors
    finally:
        more.clear()
        for thread in threads:
            thread.join(30)


def test_scrapes_under_load_are_each_consistent(make_daemon: MakeDaemon) -> None:
    # No caches: every lookup is a DNS query, observed by the histogram.
    daemon, port = with_metrics(make_daemon, 2, dns={"cache_size": "0"})
    problems: list[str] = []
    last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    answers: list[Scrape] = []
    with load(daemon) as errors:
        for n in range(LOAD_SCRAPES):
            answer = scrape(port, openmetrics=n % 2 == 0)
            answers.append(answer)
            families = answer.families()
            problems += histogram_problems(families)
            for family in families:
                if family.type != "counter":
                    continue
                for found in family.samples:
                    key = (found.name, tuple(sorted(found.labels.items())))
                    if found.value < last.get(key, 0.0):
                        problems.append(f"{key} went down: {last[key]} -> {found.value}")
                    last[key] = found.value
    assert errors == []
    queries = sum(v for (name, _), v in last.items() if name == "spfmilter_dns_queries_total")
    print(f"\n{LOAD_SCRAPES} scrapes beside {queries:.0f} DNS queries: {len(problems)} problems")
    assert problems == [], f"{len(problems)} problems, first: {problems[:3]}"
    assert queries >= LOAD_SCRAPES  # the scrapes met the workers at work
    for answer in answers[-2:]:
        if not answer.openmetrics:
            assert promtool_check(answer.text).returncode == 0
