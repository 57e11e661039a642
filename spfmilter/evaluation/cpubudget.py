"""The CPU time one SPF evaluation may use, garbage collections left out.

This module owns the bound on an evaluation's CPU: a normal one takes
about a millisecond, but a hostile zone can make pyspf parse and match for
far longer.  The evaluation running in a thread gets a deadline on that
thread's CPU clock, which the evaluator checks before and after each DNS
lookup (the lookup parses its answer in the evaluating thread, so parsing
counts; what the DNS prefetch's threads spend for it is added).  A garbage
collection is charged to whichever thread happens to run it: its CPU is
measured through gc.callbacks and left out.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

# CPU seconds one evaluation may use.
CPU_BUDGET = 0.1


class CpuBudget:
    """`seconds` of CPU per evaluation, per thread; `cpu_clock` measures
    the calling thread's CPU time."""

    def __init__(
        self, seconds: float = CPU_BUDGET, cpu_clock: Callable[[], float] = time.thread_time
    ) -> None:
        self.seconds = seconds
        self._cpu_clock = cpu_clock
        # Per thread: the deadline of the evaluation running in it, and the
        # CPU its garbage collections took (gc_seconds, gc_started).
        self._local = threading.local()

    def install(self) -> None:
        """Measure garbage collections from now on (once, at start-up)."""
        if self.gc_phase not in gc.callbacks:
            gc.callbacks.append(self.gc_phase)

    def gc_phase(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks: account the CPU of a collection to the thread's GC."""
        now = self._cpu_clock()
        if phase == "start":
            self._local.gc_started = now
            return
        started = getattr(self._local, "gc_started", None)
        if started is not None:
            self._local.gc_seconds = self._gc_seconds() + now - started
            self._local.gc_started = None

    def start(self) -> None:
        """An evaluation starts in this thread."""
        self._local.deadline = self._work() + self.seconds

    def stop(self) -> None:
        """The evaluation in this thread is over."""
        self._local.deadline = None

    def spent(self, elsewhere: float = 0.0) -> bool:
        """Whether the evaluation in this thread has used up its budget,
        with `elsewhere` seconds of CPU spent for it in other threads."""
        deadline: float | None = getattr(self._local, "deadline", None)
        return deadline is not None and self._work() + elsewhere > deadline

    def _gc_seconds(self) -> float:
        seconds: float = getattr(self._local, "gc_seconds", 0.0)
        return seconds

    def _work(self) -> float:
        # This thread's CPU time, its garbage collections left out.
        return self._cpu_clock() - self._gc_seconds()
