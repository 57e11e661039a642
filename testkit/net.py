"""Loopback ports for the servers the tests start: a free TCP one to give a
server, a UDP and a TCP socket bound to one port (a DNS server's pair),
whether a server listens on a TCP port yet, and how many of a process's
descriptors are TCP sockets on a port (listening or connected).

Readiness is read from the kernel's socket table rather than probed with a
connection: a probe would be a real session for the server (an SMTP
session through the milter, a milter session OpenDMARC logs as an error).
"""

from __future__ import annotations

import os
import socket
import sys

# include/net/tcp_states.h: TCP_LISTEN, as /proc/net/tcp prints it.
_TCP_LISTEN = "0A"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.  Another
    process could take it before the caller binds it: the server then fails
    to start, loudly, rather than the test talking to a stranger."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tcp_listening(port: int, address: str = "127.0.0.1") -> bool:
    """Whether a socket listens on `address`:`port` (IPv4)."""
    # Lines read "sl local_address rem_address st ...": the address as one
    # 32-bit number in host byte order, the port big-endian, both in hex.
    host = int.from_bytes(socket.inet_aton(address), sys.byteorder)
    wanted = f"{host:08X}:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        return any(
            fields[1] == wanted and fields[3] == _TCP_LISTEN
            for fields in (line.split() for line in table)
        )


def sockets_on_port(pid: int, port: int) -> int:
    """How many descriptors of process `pid` are IPv4 TCP sockets whose
    local port is `port`: a server's listening socket and the connections
    it accepted."""
    inodes = set()
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)  # the heading
        for fields in (line.split() for line in table):
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue  # closed meanwhile
        count += target.startswith("socket:[") and target[8:-1] in inodes
    return count


def udp_and_tcp_on_one_port() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same port on 127.0.0.1, the TCP one
    not yet listening (the caller decides whether it will)."""
    for _ in range(50):  # the UDP port's TCP twin may be taken: try others
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket()
        try:
            tcp.bind(udp.getsockname())
        except OSError:
            udp.close()
            tcp.close()
            continue
        return udp, tcp
    raise RuntimeError("no port free for both UDP and TCP")
