"""The one door from the benchmarks into the test harness.

The benchmarks drive daemons with the same pieces the integration tests use:
the spfmilter daemon runner and its readiness polling, the authoritative DNS
server with a per-answer delay, and the MTA side of the milter protocol.
Those live with the tests today; every benchmark module takes them from
here, so that moving the harness out of the test tree changes this module
alone.
"""

from __future__ import annotations

from tests.support.daemon import REPO, Daemon, free_port, wait_for
from tests.support.dnsserver import DNSTestServer, QueryLogEntry, ZoneData, load_zone_file
from tests.support.milterclient import (
    SMFIC_QUIT,
    MilterClient,
    MilterError,
    Response,
    TransactionResult,
)

# Where the zone files of the integration tests are.
ZONES = REPO / "tests" / "zones"
# The DNS server as a command of its own: python -m DNS_SERVER_MODULE ZONE.yaml.
DNS_SERVER_MODULE = DNSTestServer.__module__

__all__ = [
    "DNS_SERVER_MODULE",
    "REPO",
    "SMFIC_QUIT",
    "ZONES",
    "DNSTestServer",
    "Daemon",
    "MilterClient",
    "MilterError",
    "QueryLogEntry",
    "Response",
    "TransactionResult",
    "ZoneData",
    "free_port",
    "load_zone_file",
    "wait_for",
]
