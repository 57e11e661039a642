"""Shared fixtures: the test DNS server and the real daemon on a temp socket."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.dnsserver import DNSTestServer, load_zone_file

ZONES = Path(__file__).parent / "zones"

Sections = Mapping[str, Mapping[str, str]]
MakeDaemon = Callable[..., Daemon]


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DNSTestServer]:
    """An authoritative DNS server on 127.0.0.1 serving tests/zones/core.yaml."""
    with DNSTestServer(load_zone_file(ZONES / "core.yaml"), ttl=60) as server:
        yield server


def config_text(dns_server: DNSTestServer, sections: Sections | None = None) -> str:
    """Config file text pointing [dns] at the test server, plus `sections`.

    Short DNS times make TIMEOUT names turn into temperror quickly.
    """
    merged: dict[str, dict[str, str]] = {
        # The tests run as root and rewrite config files the daemon must
        # re-read; the privilege drop has a test of its own.
        "milter": {"user": "root"},
        "dns": {"nameservers": dns_server.nameserver, "timeout": "0.5", "lookup_time": "2"},
    }
    for section, values in (sections or {}).items():
        merged.setdefault(section, {}).update(values)
    return "".join(
        f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
        for section, values in merged.items()
    )


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
