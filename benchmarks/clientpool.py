"""Client worker processes that drive transactions at a target and check them.

This module owns the client side of a run: one transaction as an MTA makes
it for one SMTP session with one message (negotiate, macro j, connect,
HELO, MAIL, RCPT, DATA, one header, EOH, body, EOM, QUIT), the check that
every reply is CONTINUE and the message got exactly the one expected header,
the threads of one worker running a Job for a duration or a count, and the
pool of spawned worker processes that run one Job each at once.

Client connections run in spawned worker processes, so that neither the
GIL of the benchmark process (which serves DNS) nor one client process
limits the rate.  Every failure is counted and sampled, never raised from a
worker: a run with errors is reported as failed.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

from benchmarks.mtaclient import MtaLikeTcpClient
from benchmarks.targets import Expectation
from benchmarks.workloads import CLIENT_IP, RCPT, RECEIVER, cold_identity
from testkit.milterclient import MilterClient, Response, TransactionResult

# A reply slower than this means something is broken, not slow.
CLIENT_TIMEOUT = 60.0
ERROR_SAMPLES = 5  # error messages kept per run
PASS = "pass"  # the SPF result every workload's sender gets


@dataclass(frozen=True)
class Job:
    """What one client worker process does in one run.

    Transaction i (counted over the job's threads) uses mix[i % len(mix)],
    or, with names = (start, stop), cold identity start + i, failing once
    past stop.  The job ends at duration seconds or after count
    transactions, whichever is set and comes first.
    """

    spec: str
    threads: int
    expect: Expectation
    mta_tcp: bool  # MtaLikeTcpClient rather than MilterClient
    duration: float = 0.0
    count: int = 0
    mix: tuple[tuple[str, str], ...] = ()
    names: tuple[int, int] | None = None


@dataclass(frozen=True)
class ClientResult:
    started: float  # time.monotonic(), comparable across processes
    finished: float
    deadline: float  # math.inf for a count-limited job
    in_time: int  # transactions that completed by the deadline
    latencies: list[float]  # seconds, successful transactions only
    errors: int
    error_samples: list[str]
    cpu: float  # this worker's CPU seconds


class BadReply(Exception):
    """The milter answered, but not as a passing message must be answered."""


class PoolExhausted(Exception):
    """The cold workload ran out of prepared names."""


def check_reply(what: str, response: Response) -> None:
    if response.kind != "continue":
        raise BadReply(f"{what}: {response.kind} {response.text or ''}".rstrip())


def check_transaction(
    expect: Expectation,
    result: TransactionResult,
    helo: str,
    domain: str,
    connect: Response,
    verdict: str,
) -> None:
    """Raise BadReply unless every step went on and the message got exactly
    the one header expected, saying verdict for this sender."""
    check_reply("connect", connect)
    if result.aborted:
        raise BadReply(f"transaction stopped early: {result.final}")
    steps: list[tuple[str, Response | None]] = [
        ("MAIL", result.mail),
        *(("RCPT", response) for _, response in result.rcpts),
        ("DATA", result.data),
        *(("header", response) for response in result.headers),
        ("EOH", result.eoh),
        *(("body", response) for response in result.body),
        ("EOM", result.eom.response if result.eom else None),
    ]
    for what, response in steps:
        if response is None:
            raise BadReply(f"{what}: no reply")
        check_reply(what, response)
    assert result.eom is not None
    changes = result.eom.modifications
    if len(changes) != 1:
        raise BadReply(f"{len(changes)} modifications, expected one header: {changes}")
    (change,) = changes
    if (
        change.action not in ("addheader", "insheader")
        or change.name != expect.header
        or not expect.check(change.value or "", helo, domain, verdict)
    ):
        raise BadReply(f"unexpected header for {helo}/{domain}: {change}")


def start_session(client: MilterClient, helo: str) -> Response:
    """Negotiate, connect and say HELO as an MTA does; the reply to connect."""
    client.negotiate()
    client.macros("C", {"j": RECEIVER})
    # Hostname = HELO name: pyspf-milter checks the connect hostname as HELO.
    connect = client.connect(helo, CLIENT_IP)
    check_reply("HELO", client.helo(helo))
    return connect


def one_transaction(job: Job, helo: str, domain: str, n: int) -> float:
    """One milter connection for one message; returns its seconds, raises if wrong."""
    client_type = MtaLikeTcpClient if job.mta_tcp else MilterClient
    start = time.perf_counter()
    with client_type(job.spec, timeout=CLIENT_TIMEOUT) as client:
        connect = start_session(client, helo)
        result = client.transaction(f"<user{n}@{domain}>", [RCPT])
    elapsed = time.perf_counter() - start
    check_transaction(job.expect, result, helo, domain, connect, PASS)
    return elapsed


def run_job(job: Job) -> ClientResult:
    """Run job's threads to the end; every failure is counted, never raised."""
    lock = threading.Lock()
    counter = itertools.count()
    latencies: list[float] = []
    samples: list[str] = []
    errors = 0
    in_time = 0
    started = time.monotonic()
    deadline = started + job.duration if job.duration else math.inf

    def next_index() -> int | None:
        with lock:
            if time.monotonic() >= deadline:
                return None
            index = next(counter)
        return None if job.count and index >= job.count else index

    def identity(index: int) -> tuple[str, str]:
        if job.names is None:
            return job.mix[index % len(job.mix)]
        start, stop = job.names
        if start + index >= stop:
            raise PoolExhausted(f"cold names {start}..{stop - 1} used up; raise the pool size")
        return cold_identity(start + index)

    def loop() -> None:
        nonlocal errors, in_time
        while (index := next_index()) is not None:
            try:
                helo, domain = identity(index)
                elapsed = one_transaction(job, helo, domain, index)
            # Every failure, of any kind, is counted and reported as an error.
            except Exception as exc:
                with lock:
                    errors += 1
                    if len(samples) < ERROR_SAMPLES:
                        samples.append(f"{type(exc).__name__}: {exc}")
                if isinstance(exc, PoolExhausted):
                    return
                continue
            finished = time.monotonic()
            with lock:
                latencies.append(elapsed)
                in_time += finished <= deadline

    cpu = time.process_time()
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(job.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ClientResult(
        started=started,
        finished=time.monotonic(),
        deadline=deadline,
        in_time=in_time,
        latencies=latencies,
        errors=errors,
        error_samples=samples,
        cpu=time.process_time() - cpu,
    )


def _client_worker(conn: Connection) -> None:
    """A client worker process: run each Job received, send back its result."""
    while (job := conn.recv()) is not None:
        try:
            conn.send(run_job(job))
        except Exception:  # reported to the parent, which fails the run
            conn.send(traceback.format_exc())


class ClientPool:
    """Spawned client worker processes; run() gives each one job at once."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        for i in range(processes):
            parent, child = context.Pipe()
            worker = context.Process(
                target=_client_worker, args=(child,), name=f"bench-client-{i}", daemon=True
            )
            worker.start()
            child.close()
            self._workers.append((worker, parent))

    @property
    def size(self) -> int:
        return len(self._workers)

    def run(self, jobs: Sequence[Job]) -> list[ClientResult]:
        if len(jobs) > len(self._workers):
            raise ValueError(f"{len(jobs)} jobs for {len(self._workers)} workers")
        for (_, conn), job in zip(self._workers, jobs, strict=False):
            conn.send(job)
        results = []
        for worker, conn in self._workers[: len(jobs)]:
            try:
                result = conn.recv()
            except EOFError:
                raise RuntimeError(f"client worker {worker.pid} died") from None
            if isinstance(result, str):
                raise RuntimeError(f"client worker {worker.pid} failed:\n{result}")
            results.append(result)
        return results

    def close(self) -> None:
        for worker, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(None)
            worker.join(10)
            if worker.is_alive():
                worker.terminate()  # SIGTERM to that worker's PID
                worker.join(5)
            conn.close()
        self._workers = []


def split(total: int, parts: int) -> list[int]:
    """total as parts near-equal non-negative integers, larger ones first."""
    return [total // parts + (i < total % parts) for i in range(parts)]
