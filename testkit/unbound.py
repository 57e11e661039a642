"""Debian's Unbound as a private caching resolver in front of the test DNS server.

This module owns the fleet recipe's resolver for tests: one ``unbound``
process in the foreground, started with a private configuration in a temp
directory and stopped by its PID (never the system's Unbound, which this
module does not touch), listening on a free port of 127.0.0.1, forwarding
the test zones to one authoritative server and refusing everything else
itself, so that it never sends a query beyond 127.0.0.0/8.  It also reads
Unbound's log of the queries it received and how it answered them (from its
cache or not).

Configuration notes (unbound.conf(5), Unbound 1.17 in Debian 12):

- ``local-zone: "." refuse`` answers every name outside the forwarded zones
  with REFUSED before the iterator runs, so the root hints are never primed;
  each forwarded zone needs its own ``transparent`` local zone to get past
  it.  ``outgoing-interface: 127.0.0.1`` makes any other destination
  unroutable anyway.
- ``do-not-query-localhost: no``: Unbound otherwise refuses to send queries
  to 127.0.0.0/8, where the test server listens.
- ``module-config: "iterator"`` leaves the validator out: the test zones are
  unsigned and no trust anchor is configured.
- Unbound has built-in local zones that answer without asking anyone, among
  them the reverse zones of the documentation networks (113.0.203.in-addr.arpa
  and others) and ``test.``, ``invalid.``, ``localhost.``: forwarding one of
  those needs ``local-zone: "NAME" nodefault`` as well.
- Its clock has whole seconds: a record is served (with TTL 0 at the end) for
  at least its TTL and at most one second more after it was fetched.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from dnslib import DNSRecord

from testkit import processes
from testkit.daemon import free_port, wait_for

_START_ATTEMPTS = 5  # the free TCP port's UDP twin may be taken: try another
_PROBE_TIMEOUT = 0.1  # seconds one readiness query may take (loopback)

# log-queries and log-replies lines (verbosity 1): "info: CLIENT NAME. TYPE
# CLASS" and "info: CLIENT NAME. TYPE CLASS RCODE SECONDS CACHED SIZE".
_QUERY = re.compile(r" info: (\S+) (\S+) (\S+) IN$")
_REPLY = re.compile(r" info: (\S+) (\S+) (\S+) IN ([A-Z]+) ([0-9.]+) ([01]) ([0-9]+)$")


@dataclass(frozen=True)
class Reply:
    """One answer Unbound gave a client, from its log-replies line."""

    name: str  # lower-cased, without the trailing dot
    qtype: str  # "TXT", "A", ...
    rcode: str  # "NOERROR", "NXDOMAIN", "REFUSED", ...
    cached: bool  # answered from Unbound's cache, without asking upstream


def binary() -> str | None:
    """The unbound daemon (Debian: /usr/sbin/unbound), or None."""
    return shutil.which("unbound") or shutil.which("unbound", path="/usr/sbin:/usr/local/sbin")


def config_text(port: int, workdir: Path, upstream: str, zones: Sequence[str]) -> str:
    """A complete unbound.conf: listen on 127.0.0.1:port, forward zones to upstream.

    upstream is "IP:PORT" (the test server's nameserver property).
    """
    host, _, upstream_port = upstream.rpartition(":")
    lines = [
        "server:",
        f"    interface: 127.0.0.1@{port}",
        "    do-ip6: no",
        "    interface-automatic: no",
        "    outgoing-interface: 127.0.0.1",
        "    access-control: 127.0.0.0/8 allow",
        '    username: ""',
        '    chroot: ""',
        f'    directory: "{workdir}"',
        '    logfile: ""',
        "    use-syslog: no",
        "    verbosity: 1",
        "    log-queries: yes",
        "    log-replies: yes",
        "    num-threads: 1",
        '    module-config: "iterator"',
        "    do-not-query-localhost: no",
        "    qname-minimisation: no",
        "    prefetch: no",
        "    serve-expired: no",
        '    local-zone: "." refuse',
        *(f'    local-zone: "{zone}" transparent' for zone in zones),
        "remote-control:",
        "    control-enable: no",
    ]
    for zone in zones:
        lines += [
            "forward-zone:",
            f'    name: "{zone}"',
            f"    forward-addr: {host}@{upstream_port}",
        ]
    return "\n".join(lines) + "\n"


class Unbound:
    """One unbound process forwarding `zones` ("example.org." ...) to `upstream`."""

    def __init__(self, workdir: Path, upstream: str, zones: Sequence[str]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.upstream = upstream
        self.zones = tuple(zones)
        self.port = 0
        self.config_path = workdir / "unbound.conf"
        self.log_path = workdir / "unbound.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """The address as "HOST:PORT", as [dns] nameservers takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> None:
        """Start in the foreground and return once it answers a query."""
        executable = binary()
        if executable is None:
            raise FileNotFoundError("unbound is not installed (Debian package unbound)")
        for _ in range(_START_ATTEMPTS):
            self.port = free_port()
            self.config_path.write_text(
                config_text(self.port, self.workdir, self.upstream, self.zones)
            )
            self.log_path.write_bytes(b"")
            self._check_config(executable)
            with self.log_path.open("ab") as log:
                # -d: stay in the foreground; -p: no PID file (we hold the PID).
                self.process = subprocess.Popen(
                    [executable, "-d", "-p", "-c", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_for(self._ready, timeout, f"unbound on {self.nameserver}")
                return
            except _Exited:
                if "address already in use" not in self.log_text().lower():
                    raise RuntimeError(f"unbound exited; log:\n{self.log_text()}") from None
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"unbound did not answer; log:\n{self.log_text()}") from None
        raise RuntimeError(f"unbound found no free port; log:\n{self.log_text()}")

    def _check_config(self, executable: str) -> None:
        """unbound-checkconf, which names the line of a mistake (if installed)."""
        checker = Path(executable).with_name("unbound-checkconf")
        if not checker.exists():
            return
        processes.run([checker, self.config_path], what="unbound-checkconf", timeout=30)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise _Exited
        # localhost. is one of Unbound's own local zones: the probe never
        # reaches the test server.
        probe = DNSRecord.question("localhost.", "A")
        try:
            answer = DNSRecord.parse(probe.send("127.0.0.1", self.port, timeout=_PROBE_TIMEOUT))
        except OSError:
            return False
        return bool(answer.rr)

    def prime(self, name: str, qtype: str = "TXT", timeout: float = 60) -> None:
        """Have Unbound fetch `name` now and keep it in its cache (asked over
        TCP, so that an answer of any size arrives whole).

        On a busy machine the test server may take longer to build a huge
        answer than Unbound waits for it: Unbound then hangs up on us
        without an answer, and is asked again until `timeout`."""
        question = DNSRecord.question(name, qtype)
        deadline = time.monotonic() + timeout
        while True:
            # Never a timeout of 0 or less (a socket refuses it): the last
            # try, a second after the one before, gets what is left.
            left = max(deadline - time.monotonic(), 0.1)
            try:
                DNSRecord.parse(question.send("127.0.0.1", self.port, tcp=True, timeout=left))
                return
            except (OSError, struct.error):
                if time.monotonic() + 1 > deadline:
                    raise
                time.sleep(1)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM the process we started, wait; SIGKILL only if it hangs."""
        return processes.stop(self.process, timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def queries(self) -> list[tuple[str, str]]:
        """(name, type) of every query a client sent, in order."""
        found = []
        for line in self.log_text().splitlines():
            match = _QUERY.search(line)
            if match:
                found.append((match[2].rstrip(".").lower(), match[3]))
        return found

    def replies(self) -> list[Reply]:
        """Every answer given to a client, in order."""
        found = []
        for line in self.log_text().splitlines():
            match = _REPLY.search(line)
            if match:
                name = match[2].rstrip(".").lower()
                found.append(Reply(name, match[3], match[4], match[6] == "1"))
        return found

    def unexpected(self) -> list[str]:
        """Log lines at warning or error level."""
        return [
            line
            for line in self.log_text().splitlines()
            if re.search(r"\] unbound\[[0-9:]+\] (warning|error|fatal error):", line)
        ]

    def __enter__(self) -> Unbound:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Exited(Exception):
    """unbound ended while we waited for it to answer."""
