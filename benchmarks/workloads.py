"""The comparison's workloads: who every transaction poses as, and the DNS
data each workload's senders need.

This module owns the mail the comparison sends: the client address and
recipient every transaction uses, the receiver's name (macro j), the warm
mix of ten sender domains whose records take the usual shapes, the cold
workload's never-repeated names, and the Workload values (connections,
DNS delay, socket type, fresh names) the driver runs.  Records are zone
data for the benchmark's DNS server; every record authorises the client.
"""

from __future__ import annotations

from dataclasses import dataclass

# The client every transaction poses as, authorised by every record below.
CLIENT_IP = "198.51.100.7"
CLIENT_NET = "198.51.100.0/24"
RCPT = "<user@example.net>"
# Sent as macro j, as an MTA does; spfmilter takes the receiver from it and
# pyspf-milter needs it (it reads j unconditionally).
RECEIVER = "mx.bench.example"

WARM, COLD, INET = "warm", "cold", "inet"
WORKLOAD_NAMES = (WARM, COLD, INET)


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    connections: int
    dns_delay: float  # seconds per DNS answer
    inet: bool
    fresh_names: bool


# The warm mix: 10 sender domains whose records take the usual shapes, each
# with its own HELO name (``a`` pointing at the client).  An evaluator
# without a cache needs 3.6 queries per transaction on average: 2 for the
# HELO name, 1 to 3 for the sender.
_SHARED_POLICY = "_spf.warm.example"
_WARM_SENDER_RECORDS: tuple[str, ...] = (
    f"v=spf1 ip4:{CLIENT_NET} -all",
    f"v=spf1 ip4:{CLIENT_NET} -all",
    f"v=spf1 ip4:192.0.2.0/24 ip4:{CLIENT_NET} ip6:2001:db8::/32 -all",
    f"v=spf1 ip4:{CLIENT_NET} ~all",
    "v=spf1 a -all",
    "v=spf1 mx -all",
    f"v=spf1 include:{_SHARED_POLICY} -all",
    f"v=spf1 ip4:192.0.2.0/24 include:{_SHARED_POLICY} ~all",
    f"v=spf1 redirect={_SHARED_POLICY}",
    f"v=spf1 ip4:{CLIENT_NET} ip4:203.0.113.0/24 -all",
)
WARM_MIX: tuple[tuple[str, str], ...] = tuple(
    (f"mx{i}.warm.example", f"d{i}.warm.example") for i in range(len(_WARM_SENDER_RECORDS))
)
_HELO_RECORD = "v=spf1 a -all"


def warm_zone() -> dict[str, list[object]]:
    zone: dict[str, list[object]] = {_SHARED_POLICY: [{"TXT": f"v=spf1 ip4:{CLIENT_NET} -all"}]}
    for (helo, domain), record in zip(WARM_MIX, _WARM_SENDER_RECORDS, strict=True):
        zone[helo] = [{"TXT": _HELO_RECORD}, {"A": CLIENT_IP}]
        entries: list[object] = [{"TXT": record}, {"A": CLIENT_IP}]
        if " mx " in record:
            entries.append({"MX": [10, f"mx.{domain}"]})
            zone[f"mx.{domain}"] = [{"A": CLIENT_IP}]
        zone[domain] = entries
    return zone


def cold_identity(n: int) -> tuple[str, str]:
    """The n-th new (HELO name, sender domain) pair of the cold workload."""
    return f"h{n}.cold.example", f"s{n}.cold.example"


def cold_zone(start: int, stop: int) -> dict[str, list[object]]:
    """Records for cold identities start..stop-1: both ``v=spf1 a -all``."""
    zone: dict[str, list[object]] = {}
    for n in range(start, stop):
        for name in cold_identity(n):
            zone[name] = [{"TXT": _HELO_RECORD}, {"A": CLIENT_IP}]
    return zone


def comparison_workloads(
    warm_connections: int, cold_connections: int, cold_delay_ms: float
) -> list[Workload]:
    """The warm, cold and inet workloads, in that order."""
    return [
        Workload(
            WARM,
            f"{len(WARM_MIX)}-sender mix, DNS 0 ms, {warm_connections} connections",
            warm_connections,
            0.0,
            False,
            False,
        ),
        Workload(
            COLD,
            "new HELO name and sender domain every transaction (2 TXT + 2 A), "
            f"DNS {cold_delay_ms:g} ms, {cold_connections} connections",
            cold_connections,
            cold_delay_ms / 1000,
            False,
            True,
        ),
        Workload(
            INET,
            f"inet socket, 1 connection, client with delayed ACKs, {len(WARM_MIX)}-sender mix",
            1,
            0.0,
            True,
            False,
        ),
    ]


# Many transactions with new names, for the resident-size series.
RSS_WORKLOAD = Workload(
    "rss", "new names every transaction, DNS 0 ms, 8 connections", 8, 0.0, False, True
)
