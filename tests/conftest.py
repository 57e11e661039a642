"""Shared fixtures: the test DNS server and the real daemon on a temp socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.daemon import Daemon, Sections, config_text
from testkit.dnsserver import ZONES, DNSTestServer, load_zone_file

MakeDaemon = Callable[..., Daemon]


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DNSTestServer]:
    """An authoritative DNS server on 127.0.0.1 serving testkit/zones/core.yaml."""
    with DNSTestServer(load_zone_file(ZONES / "core.yaml"), ttl=60) as server:
        yield server


@pytest.fixture
def make_daemon(tmp_path: Path, dns_server: DNSTestServer) -> Iterator[MakeDaemon]:
    """Start real daemons; each is stopped at teardown and must not have
    logged a WARNING, ERROR or traceback other than the `allowed` patterns."""
    started: list[tuple[Daemon, tuple[str, ...]]] = []

    def make(
        sections: Sections | None = None,
        *,
        socket: str | None = None,
        allowed: tuple[str, ...] = (),
        start: bool = True,
    ) -> Daemon:
        daemon = Daemon(
            tmp_path / f"daemon{len(started)}", config_text(dns_server, sections), socket
        )
        started.append((daemon, allowed))
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon, allowed in started:
        daemon.stop()
        assert daemon.unexpected(allowed) == [], daemon.log_text()
