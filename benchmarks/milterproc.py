"""Milter daemons as benchmark subjects, and what /proc says about them.

This module owns:

- MilterProcess: any milter command as a subprocess, ready once its socket
  answers a milter-protocol connection (polled, never a fixed sleep), stopped
  by its PID; BaselineDaemon is the bare pymilter baseline run that way;
- accounting from /proc: CPU seconds of one process or of a process and all
  its descendants, resident sizes, and a nearest-rank percentile.

Everything here sees a daemon from outside: its socket, its PID, /proc.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.daemon import REPO, wait_for
from testkit.milterclient import MilterClient, MilterError

# ---------------------------------------------------------------- processes


class MilterProcess:
    """One milter daemon started from argv, listening on socket_spec.

    Its output goes to log_path.  start() returns once the socket completes a
    connection, stop() sends SIGTERM to the PID it started (SIGKILL only if
    it hangs).  A command run through exec-ing wrappers (unshare, sh -c
    "exec ...") keeps the wrapper's PID, so that PID is the daemon's.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        socket_spec: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.socket = socket_spec
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.env,
            )
        try:
            wait_for(self._ready, timeout, f"{self.name} on {self.socket}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; log:\n{self.log_text()}") from None

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_text()}"
            )
        probe = MilterClient(self.socket, timeout=1)
        try:
            probe.open()
        except MilterError:
            return False
        probe.close()
        return True

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then wait; SIGKILL only if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            # libmilter's listener notices the stop when a connection wakes
            # it, and otherwise only every 5 s.
            with contextlib.suppress(RuntimeError):  # it exited meanwhile
                self._ready()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(0.1)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class BaselineDaemon(MilterProcess):
    """The bare pymilter baseline (python -m benchmarks.baseline) as a subprocess."""

    def __init__(self, socket_spec: str, log_path: Path) -> None:
        argv = [sys.executable, "-m", "benchmarks.baseline", socket_spec]
        super().__init__("baseline milter", argv, socket_spec, log_path)


# ---------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces).

    Index 0 is field 3 of proc(5) (state), so field N is at index N - 3.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()


def process_tree(root: int) -> list[int]:
    """root and all its living descendants (from the ppid field of /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])  # field 4
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # exited while we looked
        children.setdefault(ppid, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending += children.get(pid, [])
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU time of root and all its descendants, living and reaped.

    Each living process counts its own time (utime, stime) and that of the
    children it has waited for (cutime, cstime, fields 16 and 17), so worker
    processes that come and go are counted as long as their parent reaps them.
    """
    total = 0
    for pid in process_tree(root):
        try:
            fields = _stat_fields(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    """One process's resident size in MiB: now (VmRSS) and its peak (VmHWM)."""

    pid: int
    rss_mib: float
    peak_mib: float


def rss_mib(pid: int) -> tuple[float, float]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in MiB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def tree_memory(root: int) -> list[Memory]:
    """Resident sizes of root and each of its descendants."""
    sizes = []
    for pid in process_tree(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, KeyError):
            sizes.append(Memory(pid, *rss_mib(pid)))
    return sizes


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` at or below it."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]
