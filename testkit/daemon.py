"""The real spfmilter daemon as a subprocess on a real socket, for tests.

Owns starting it with a config file in a temp dir, waiting for readiness
(the socket accepts connections; no fixed sleeps), signalling it (a crash
too: SIGKILL), reading its log and what /proc says it holds (descriptors,
threads, RSS, copies of its sockets), and stopping exactly the process it
started, by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from spfmilter.config.loading import load_config
from spfmilter.process.workers import worker_count
from testkit import processes
from testkit.dnsserver import DNSTestServer
from testkit.net import free_port

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO",
    "Daemon",
    "ProcessStats",
    "Sections",
    "children",
    "config_text",
    "free_port",
    "process_stats",
    "sockets_of",
    "wait_for",
]

# Configuration sections: {section: {key: value}}.
Sections = Mapping[str, Mapping[str, str]]


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


# asm-generic/unistd.h: pidfd_getfd (x86-64 and arm64 alike).
SYS_PIDFD_GETFD = 438


def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll `predicate` (a callable returning bool) until true or time out."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass(frozen=True)
class ProcessStats:
    """What the kernel says one process holds right now."""

    fds: int  # entries in /proc/PID/fd
    threads: int  # "Threads:" of /proc/PID/status
    rss_kib: int  # "VmRSS:" of /proc/PID/status, in KiB


def process_stats(pid: int) -> ProcessStats:
    """Read a process's open descriptors, threads and resident memory."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return ProcessStats(
        fds=fds,
        threads=int(fields["Threads"]),
        rss_kib=int(fields["VmRSS"].split()[0]),
    )


def children(pid: int) -> list[int]:
    """The direct children of `pid` (a daemon's worker processes)."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.extend(int(child) for child in text.split())
    return found


def sockets_of(pid: int, port: int) -> list[socket.socket]:
    """Copies (pidfd_getfd, Linux 5.6) of the TCP sockets process `pid`
    holds on local `port`: the listening one and those accepted from it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue  # closed meanwhile
            sock = socket.socket(fileno=fd)
            if sock.family == socket.AF_INET and sock.getsockname()[1] == port:
                found.append(sock)
            else:
                sock.close()
    finally:
        os.close(pidfd)
    return found


WORKER_RELOADED = re.compile(r"worker \d+: configuration reloaded")


class Daemon:
    """One spfmilter process.  `config` is the text of its config file.

    With `socket` None it listens on a free inet port on 127.0.0.1.
    """

    def __init__(self, workdir: Path, config: str, socket_spec: str | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        if socket_spec is None:
            self.port = free_port()
            socket_spec = f"inet:{self.port}@127.0.0.1"
        self.socket = socket_spec
        self.config_path = workdir / "spfmilter.cfg"
        self.config_path.write_text(config)
        self.log_path = workdir / "spfmilter.log"
        self.process: subprocess.Popen[bytes] | None = None
        # How the daemon is started; options follow.
        self.command = [sys.executable, "-m", "spfmilter"]
        # Added to its environment, and descriptors left open in it.
        self.env: dict[str, str] = {}
        self.pass_fds: tuple[int, ...] = ()
        # What runs that command line (in a namespace, say): whatever it
        # adds must exec it, so that the PID stays the daemon's.
        self.wrap: Callable[[list[str]], list[str]] = lambda argv: argv

    @property
    def postfix_socket(self) -> str:
        """The same socket in Postfix notation (inet:HOST:PORT, unix:PATH)."""
        if self.port:
            return f"inet:127.0.0.1:{self.port}"
        return self.socket

    def argv(self, *extra: str) -> list[str]:
        """The daemon's command line, with `extra` options."""
        return [*self.command, "--config", str(self.config_path), "--socket", self.socket, *extra]

    def start(self, *extra: str, timeout: float = 20) -> None:
        """Start and return once the socket accepts connections."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.wrap(self.argv(*extra)),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                pass_fds=self.pass_fds,
            )
        try:
            self.wait_started(timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"spfmilter did not start; log:\n{self.log_text()}") from None

    def wait_started(self, timeout: float) -> None:
        """Until the socket accepts connections and, when the configuration
        asks for workers, all of them run (the socket accepts as soon as the
        supervisor opened it, before it forks)."""
        wait_for(self._ready, timeout, f"spfmilter on {self.socket}")
        config = load_config(str(self.config_path))
        count = worker_count(config.milter.workers, os.cpu_count())
        if count > 1:
            wait_for(lambda: len(children(self.pid)) >= count, timeout, f"{count} workers")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"spfmilter exited with {self.process.returncode}; log:\n{self.log_text()}"
            )
        kind, _, rest = self.socket.partition(":")
        try:
            if kind == "unix":
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(rest)
            else:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
        except OSError:
            return False
        return True

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon (only to the process we started)."""
        assert self.process is not None
        self.process.send_signal(signum)

    @property
    def workers(self) -> int:
        """How many processes serve the socket, from the starting line."""
        found = re.search(r"spfmilter starting: .* workers=(\d+)", self.log_text())
        assert found, self.log_text()
        return int(found.group(1))

    def pids(self) -> list[int]:
        """The daemon's process, then its workers' (none with workers = 1)."""
        return [self.pid, *children(self.pid)]

    def cpu_seconds(self) -> float:
        """CPU seconds of the daemon's processes so far (its workers' included)."""
        ticks = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime + stime (proc(5))
        return ticks / os.sysconf("SC_CLK_TCK")

    def stats(self) -> ProcessStats:
        """Descriptors, threads and RSS of the running daemon, added up
        over its processes (with workers, the parent only supervises)."""
        each = [process_stats(pid) for pid in self.pids()]
        return ProcessStats(
            fds=sum(s.fds for s in each),
            threads=sum(s.threads for s in each),
            rss_kib=sum(s.rss_kib for s in each),
        )

    def steady_stats(self, timeout: float = 10) -> ProcessStats:
        """Stats once three reads in a row agree on descriptors and threads
        (a connection just closed may still be being torn down)."""
        reads: list[ProcessStats] = []

        def steady() -> bool:
            reads.append(self.stats())
            return len(reads) >= 3 and len({(r.fds, r.threads) for r in reads[-3:]}) == 1

        wait_for(steady, timeout, "the daemon's descriptors and threads to be steady")
        return reads[-1]

    def stats_back_to(
        self, baseline: ProcessStats, fd_slack: int, thread_slack: int, timeout: float = 10
    ) -> ProcessStats:
        """Poll until descriptors and threads are back within the slack of
        `baseline`; return the last read either way (the caller asserts)."""
        reads: list[ProcessStats] = []

        def back() -> bool:
            reads.append(self.stats())
            now = reads[-1]
            return (
                now.fds <= baseline.fds + fd_slack
                and now.threads <= baseline.threads + thread_slack
            )

        with contextlib.suppress(TimeoutError):
            wait_for(back, timeout, "the daemon's descriptors and threads to come back")
        return reads[-1]

    def kill(self, timeout: float = 10) -> None:
        """SIGKILL the process we started (a crash) and reap it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout)

    def reload(self, timeout: float = 10) -> str:
        """SIGUSR1; wait for the daemon's reload line and, when it has
        workers and the file was good, for each worker's; return the
        daemon's line."""
        before = len(self._reload_lines())
        workers = self.workers
        self.signal(signal.SIGUSR1)

        def done() -> bool:
            new = self._reload_lines()[before:]
            if not new:
                return False
            if workers == 1 or "reloaded" not in new[0]:
                return True
            return sum(bool(WORKER_RELOADED.search(line)) for line in new) >= workers

        wait_for(done, timeout, "reload log lines")
        return self._reload_lines()[before]

    def _reload_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if "reload" in line]

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, wait; SIGKILL only if it hangs.  Returns the exit status."""
        return processes.stop(self.process, timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def verdicts(self) -> list[str]:
        """The INFO verdict lines logged so far."""
        return [line for line in self.log_text().splitlines() if "verdict " in line]

    def unexpected(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """WARNING/ERROR/CRITICAL lines and tracebacks not matching `allowed`.

        The warning that the tests' `user = root` asks for is always allowed.
        """
        bad = re.compile(r"^(WARNING|ERROR|CRITICAL)\b|Traceback")
        allowed = (*allowed, r"^WARNING spfmilter.daemon: running as root")
        return [
            line
            for line in self.log_text().splitlines()
            if bad.search(line) and not any(re.search(a, line) for a in allowed)
        ]

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
