"""Worker processes: forked on one listening socket, supervised, replaced.

This module owns the process tree of a daemon with [milter] workers above
one (and how many "auto" starts): the parent forks the workers after it opened libmilter's listening
socket (each worker accepts from it and runs its own libmilter), then only
supervises: SIGTERM, SIGINT and SIGHUP stop every worker and wait for them
(in-flight callbacks finish), SIGUSR1 is passed on so that each worker
re-reads the configuration, and a worker that dies is replaced in the same
metrics slot, unless workers keep dying (then the daemon stops, and the
service manager decides).  The parent runs no milter thread of its own.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("spfmilter.workers")

# A worker body: given its slot, serves until stopped; returns an exit status.
Body = Callable[[int], int]

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# Signals the supervisor takes with sigwaitinfo(): they must be blocked in
# every thread before the first thread starts (daemon.run does it).
SUPERVISED = STOP_SIGNALS | {signal.SIGUSR1, signal.SIGCHLD}
# linux/prctl.h
PR_SET_PDEATHSIG = 1
# Workers dying this many times within CRASH_WINDOW seconds is a crash loop.
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
# Most workers "auto" starts: one per CPU up to this.  Each costs tens of
# MiB and caches of its own; eight serve several thousand transactions a
# second, more than the SMTP processes of one MTA send.
AUTO_WORKERS = 8


def worker_count(workers: int, cpus: int | None) -> int:
    """How many workers a [milter] workers value starts on `cpus` CPUs
    (0 is auto)."""
    return workers or min(cpus or 1, AUTO_WORKERS)


@dataclass
class Supervisor:
    """Runs `count` workers of `body`; `on_exit(slot)` tidies a dead one's
    slot; `stop_grace` bounds the wait for workers at a stop."""

    body: Body
    count: int
    on_exit: Callable[[int], None]
    stop_grace: float
    on_reload: Callable[[], object] = lambda: None
    clock: Callable[[], float] = time.monotonic
    workers: dict[int, int] = field(default_factory=dict)  # pid -> slot
    deaths: list[float] = field(default_factory=list)

    def run(self) -> int:
        """Start the workers and supervise them until a stop signal."""
        for slot in range(self.count):
            self._spawn(slot)
        while True:
            info = signal.sigwaitinfo(SUPERVISED)
            if info.si_signo in STOP_SIGNALS:
                return self._stop(0)
            if info.si_signo == signal.SIGUSR1:
                self.on_reload()
                self._signal_all(signal.SIGUSR1)
                continue
            if not self._reap():
                return self._stop(1)

    def _spawn(self, slot: int) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            status = 1
            try:
                _die_with(supervisor)
                status = self.body(slot)
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(status)
        self.workers[pid] = slot
        log.info("worker %d started: pid=%d", slot, pid)

    def _reap(self) -> bool:
        """Replace the workers that exited; False in a crash loop."""
        while self.workers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return True
            slot = self.workers.pop(pid, None)
            if slot is None:
                continue
            self.on_exit(slot)
            now = self.clock()
            self.deaths = [t for t in self.deaths if now - t < CRASH_WINDOW] + [now]
            log.error(
                "worker %d (pid %d) ended: %s; %s",
                slot,
                pid,
                _status(status),
                "too many in a row, stopping"
                if len(self.deaths) >= CRASH_LIMIT
                else "replacing it",
            )
            if len(self.deaths) >= CRASH_LIMIT:
                return False
            self._spawn(slot)
        return True

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                continue  # ended meanwhile; reaped below

    def _stop(self, status: int) -> int:
        """Stop every worker, waiting for their callbacks in progress."""
        self._signal_all(signal.SIGTERM)
        deadline = self.clock() + self.stop_grace
        while self.workers and self.clock() < deadline:
            pid, code = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                signal.sigtimedwait({signal.SIGCHLD}, 0.2)
                continue
            slot = self.workers.pop(pid, None)
            if slot is not None:
                self.on_exit(slot)
                if code:
                    log.warning("worker %d (pid %d) stopped: %s", slot, pid, _status(code))
        if self.workers:
            log.error("workers still running after %g s: killing them", self.stop_grace)
            self._signal_all(signal.SIGKILL)
            for pid in list(self.workers):
                os.waitpid(pid, 0)
            return 1
        return status


def _die_with(supervisor: int) -> None:
    """SIGKILL this worker when its supervisor ends, however it ends: a
    supervisor killed outright must not leave workers holding the socket
    (a restarted daemon could not listen on an inet port), serving on
    without anyone to replace them or pass a reload on."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != supervisor:  # it ended before the prctl
        os._exit(1)


def _status(code: int) -> str:
    if os.WIFSIGNALED(code):
        return f"killed by signal {os.WTERMSIG(code)}"
    return f"exit status {os.waitstatus_to_exitcode(code)}"
