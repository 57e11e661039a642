"""The DNS every target resolves through, served twice from one zone.

spfmilter is told its nameserver in its config ([dns] nameservers, any
port); pyspf-milter resolves through the system resolver, port 53 of the
address in /etc/resolv.conf, which the benchmarks replace in a private mount
namespace with a loopback address of their own.  This module owns serving
the same zone on both, holding every answer back by the same delay (a
distant authoritative server), swapping in per-run names, counting the
queries asked, and checking that the loopback address is free.
"""

from __future__ import annotations

import ipaddress

from testkit.dnsserver import DNSTestServer, QueryLogEntry, ZoneData

# Long enough that no cached answer expires during a run.
DNS_TTL = 3600
# A loopback address for the DNS server that pyspf-milter's private
# resolv.conf names (port 53): not 127.0.0.53/54, which systemd-resolved uses.
SYSTEM_DNS_ADDRESS = "127.0.0.154"


class BenchDNS:
    """One zone served twice: 127.0.0.1:PORT for spfmilter's [dns]
    nameservers, and SYSTEM_ADDRESS:53 for pyspf-milter's private resolv.conf."""

    def __init__(self, zone: ZoneData, port: int, system_address: str) -> None:
        self.servers = [
            DNSTestServer(zone, host="127.0.0.1", port=port, ttl=DNS_TTL),
            DNSTestServer(zone, host=system_address, port=53, ttl=DNS_TTL),
        ]
        self.base_zone = dict(zone)

    @property
    def nameserver(self) -> str:
        return self.servers[0].nameserver

    @property
    def system_address(self) -> str:
        return self.servers[1].host

    def start(self) -> None:
        for server in self.servers:
            try:
                server.start()
            except OSError as exc:
                self.stop()
                raise SystemExit(f"cannot serve DNS on {server.host}:{server.port}: {exc}") from exc

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def set_delay(self, seconds: float) -> None:
        for server in self.servers:
            server.delay = seconds

    def set_extra_zone(self, extra: ZoneData) -> None:
        """Serve the base zone plus extra (which replaces the previous extra)."""
        zone = {**self.base_zone, **extra}
        for server in self.servers:
            server.set_zone(zone)

    def clear_queries(self) -> None:
        for server in self.servers:
            server.clear_queries()

    def queries(self) -> list[QueryLogEntry]:
        """What both servers were asked since clear_queries: (name, type, transport)."""
        return [query for server in self.servers for query in server.queries]

    def query_count(self) -> int:
        return len(self.queries())


def address_in_use(address: str) -> bool:
    """Whether any TCP or UDP socket on this host is bound to address (any port)."""
    wanted = ipaddress.IPv4Address(address).packed[::-1].hex().upper()
    for table in ("/proc/net/tcp", "/proc/net/udp"):
        with open(table, encoding="ascii") as lines:
            next(lines)  # the header
            if any(line.split()[1].split(":")[0] == wanted for line in lines):
                return True
    return False
