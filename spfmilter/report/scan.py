"""Reading every input into one Tally, on all the cores the machine gives.

This module owns the order of the work and its spread over processes.  The
inputs are read here, in the order given (reading and decompressing are
the cheap part).  The first SEQUENTIAL bytes are counted here too, so that
a small input never waits for a process to start; past them, batches go to
worker processes, one per core, through a queue of QUEUED batches per
worker, so that memory stays bounded however fast the reading.  Each worker
counts into a Tally of its own, and those are merged at the end: the
counts are sums, and TopK merges keep their promises.  Workers are
spawned (a fresh interpreter that imports only the report) and ignore
SIGINT, which the report's own process answers.  A worker that fails
makes the report fail, and whenever the report stops early (an unreadable
input, an interrupt) its workers are ended through their own handles.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import traceback
from collections.abc import Iterable, Sequence
from multiprocessing.context import SpawnProcess

from spfmilter.report.inputs import Batch, Input, batches, count, lines
from spfmilter.report.progress import Progress
from spfmilter.report.tally import Tally

SEQUENTIAL = 32 << 20  # bytes counted here before workers start
QUEUED = 2  # batches waiting per worker
POLL = 1.0  # seconds between looks at the workers' health while waiting
# Seconds a worker that handed its Tally back has to exit by itself: ended
# while exiting, it could leave its queue's semaphore registered with the
# resource tracker, which then warns of a leak.
EXIT_GRACE = 10.0


class WorkerError(Exception):
    """A worker process failed; the message says how."""


def scan(
    inputs: Sequence[Input], reject: Iterable[str], progress: Progress, processes: int
) -> Tally:
    """Count every batch of every input, in `processes` processes at most."""
    reject = frozenset(reject)
    tally = Tally(reject)
    pool: _Pool | None = None
    read = 0
    try:
        for source in inputs:
            for batch, size in batches(source):
                if pool is None and processes > 1 and read >= SEQUENTIAL:
                    pool = _Pool(processes, reject)
                if pool is None:
                    tally.feed(lines(batch))
                else:
                    pool.put(batch)
                read += size
                progress.advance(count(batch), size, source.name)
        if pool is not None:
            for part in pool.finish():
                tally.merge(part)
    finally:
        if pool is not None:
            pool.stop()
    return tally


class _Pool:
    """Worker processes fed through one bounded queue."""

    def __init__(self, processes: int, reject: frozenset[str]) -> None:
        context = multiprocessing.get_context("spawn")
        self._tasks: multiprocessing.Queue[Batch | None] = context.Queue(QUEUED * processes)
        self._results: multiprocessing.Queue[Tally | str] = context.Queue()
        self._workers: list[SpawnProcess] = [
            context.Process(target=_work, args=(reject, self._tasks, self._results), daemon=True)
            for _ in range(processes)
        ]
        for worker in self._workers:
            worker.start()
        self._finished = False

    def put(self, batch: Batch | None) -> None:
        """Queue a batch (None: no more), waiting while the queue is full."""
        while True:
            try:
                self._tasks.put(batch, timeout=POLL)
                return
            except queue.Full:
                self._check()

    def finish(self) -> list[Tally]:
        """Each worker's Tally, once it has counted all it was given."""
        for _ in self._workers:
            self.put(None)
        parts: list[Tally] = []
        while len(parts) < len(self._workers):
            try:
                result = self._results.get(timeout=POLL)
            except queue.Empty:
                self._check()
                continue
            if isinstance(result, str):
                raise WorkerError(result)
            parts.append(result)
        self._finished = True
        return parts

    def _check(self) -> None:
        for worker in self._workers:
            if worker.exitcode is not None and worker.exitcode != 0:
                raise WorkerError(f"report worker {worker.pid} exited with {worker.exitcode}")

    def stop(self) -> None:
        """End the workers (at once, unless they have all handed their Tally
        back: then they may exit by themselves first) and reap them."""
        if self._finished:
            for worker in self._workers:
                worker.join(EXIT_GRACE)
        for worker in self._workers:
            if worker.is_alive():
                worker.terminate()
        for worker in self._workers:
            worker.join()
        for channel in (self._tasks, self._results):
            channel.cancel_join_thread()  # what is still queued is not wanted
            channel.close()


def _work(
    reject: frozenset[str],
    tasks: multiprocessing.Queue[Batch | None],
    results: multiprocessing.Queue[Tally | str],
) -> None:
    """A worker: count batches until None, then hand the Tally back (or
    the traceback of what went wrong)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        tally = Tally(reject)
        while (batch := tasks.get()) is not None:
            tally.feed(lines(batch))
        results.put(tally)
    except Exception:
        results.put(traceback.format_exc())
