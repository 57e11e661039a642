"""The per-process collaborators: the pool that evaluates MAIL FROM beside
HELO, a Session using it, and each worker's connection numbers."""

from __future__ import annotations

import ipaddress
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from spfmilter.config.schema import Config
from spfmilter.core.metrics import Metrics
from spfmilter.core.model import Action, Identity, SpfOutcome, SpfQuery, SpfResult
from spfmilter.core.session import Services, Session
from spfmilter.evaluation.evaluator import Evaluator
from spfmilter.evaluation.pool import IdlingPool
from spfmilter.evaluation.resolver import Record
from testkit.daemon import wait_for


def pool_threads() -> int:
    return sum(thread.name == "test-pool" for thread in threading.enumerate())


@pytest.fixture
def pool() -> Iterator[IdlingPool]:
    yield IdlingPool(3, 0.2, "test-pool")
    wait_for(lambda: pool_threads() == 0, 5, "the pool's threads to end")


def test_jobs_arriving_together_beside_one_idle_thread_each_get_one(pool: IdlingPool) -> None:
    # One idle thread takes one job: the others start threads of their own
    # (they waited for a thread to come free, a round trip each, before).
    assert pool.submit(lambda: 1).result(5) == 1
    wait_for(lambda: pool._waiting == 1, 5, "the thread to idle")
    release = threading.Event()
    started = [threading.Event() for _ in range(3)]

    def job(n: int) -> bool:
        started[n].set()
        return release.wait(5)

    futures = [pool.submit(job, n) for n in range(3)]
    assert all(event.wait(5) for event in started)
    release.set()
    assert all(future.result(5) for future in futures)


def test_threads_come_with_work_and_go_when_idle(pool: IdlingPool) -> None:
    release = threading.Event()
    futures = [pool.submit(release.wait, 5) for _ in range(5)]
    wait_for(lambda: pool_threads() == 3, 5, "three threads")  # the limit
    release.set()
    assert all(future.result(5) for future in futures)  # the queued two ran too
    wait_for(lambda: pool_threads() == 0, 5, "idle threads to end")
    assert pool.submit(lambda: 42).result(5) == 42  # and come back


def test_a_job_gets_its_positional_and_keyword_arguments(pool: IdlingPool) -> None:
    assert pool.submit("{}-{sep}-{}".format, "a", "b", sep="+").result(5) == "a-+-b"


def signal_then_wait(started: threading.Semaphore, release: threading.Event) -> bool:
    started.release()
    return release.wait(5)


def test_the_limit_holds_again_after_the_threads_went_idle(pool: IdlingPool) -> None:
    for _ in range(2):
        started = threading.Semaphore(0)
        release = threading.Event()
        futures = []
        for number in range(6):
            futures.append(pool.submit(signal_then_wait, started, release))
            if number < 3:
                # Running before the next comes: no thread is free for it.
                assert started.acquire(timeout=5)
        # submit() has started any thread it starts when it returns.
        assert pool_threads() == 3
        release.set()
        assert all(f.result(5) for f in futures)
        wait_for(lambda: pool_threads() == 0, 5, "idle threads to end")


def test_pool_threads_never_keep_the_process_alive(pool: IdlingPool) -> None:
    release = threading.Event()
    future = pool.submit(release.wait, 5)
    try:
        (thread,) = [t for t in threading.enumerate() if t.name == "test-pool"]
        assert thread.daemon
    finally:
        release.set()
    assert future.result(5)


def test_after_a_cancelled_job_the_thread_goes_on_with_the_next() -> None:
    pool = IdlingPool(1, 0.2, "test-pool")
    release = threading.Event()
    busy = pool.submit(release.wait, 5)
    cancelled = pool.submit(lambda: 1)
    after = pool.submit(lambda: 2)
    assert cancelled.cancel()
    release.set()
    assert busy.result(5) and after.result(5) == 2
    wait_for(lambda: pool_threads() == 0, 5, "the pool's threads to end")


class RacingQueue(queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]]):
    """A job queue where the jobs in `late` arrive just as a wait times out."""

    def __init__(self) -> None:
        self.late: list[tuple[Future[Any], Callable[[], Any]]] = []

    def get(
        self, block: bool = True, timeout: float | None = None
    ) -> tuple[Future[Any], Callable[[], Any]]:
        try:
            return super().get(block, timeout)
        except queue.Empty:
            # Submitted now, the job sees this thread still waiting.
            while self.late:
                self.put(self.late.pop())
            raise


def test_a_job_queued_as_the_idle_thread_gives_up_is_still_run() -> None:
    pool = IdlingPool(1, 1.0, "test-pool")
    jobs = RacingQueue()
    pool._jobs = jobs
    first = pool.submit(lambda: 1)
    assert first.result(5) == 1
    # The one thread is waiting for work; no new one starts for this job.
    late: Future[int] = Future()
    jobs.late.append((late, lambda: 2))
    assert late.result(5) == 2
    wait_for(lambda: pool_threads() == 0, 5, "the pool's threads to end")


def test_a_queued_job_can_be_cancelled_and_a_failure_reaches_the_caller(
    pool: IdlingPool,
) -> None:
    release = threading.Event()
    busy = [pool.submit(release.wait, 5) for _ in range(3)]
    queued = pool.submit(lambda: 1)
    assert queued.cancel()
    failing = pool.submit(lambda: 1 / 0)
    release.set()
    assert [f.result(5) for f in busy] == [True] * 3
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert queued.cancelled()


def test_idle_threads_take_new_jobs_without_more_threads() -> None:
    pool = IdlingPool(3, 2.0, "test-pool")
    release = threading.Event()
    busy = [pool.submit(release.wait, 5) for _ in range(2)]
    release.set()
    assert all(future.result(5) for future in busy)
    wait_for(lambda: pool._waiting == 2, 5, "both threads to idle")
    assert [pool.submit(lambda n=n: n).result(5) for n in range(2)] == [0, 1]
    quick = [pool.submit(lambda n=n: n) for n in range(2)]
    assert [future.result(5) for future in quick] == [0, 1]
    assert pool_threads() == 2  # two were idle: none more for two jobs
    wait_for(lambda: pool_threads() == 0, 10, "the pool's threads to end")


def test_after_its_threads_ended_an_idle_thread_still_takes_the_next_job(pool: IdlingPool) -> None:
    assert pool.submit(lambda: 1).result(5) == 1
    wait_for(lambda: pool_threads() == 0, 5, "the thread to end")
    pool._idle = 2.0  # from here on, no thread ends while the test looks
    assert pool.submit(lambda: 2).result(5) == 2
    wait_for(lambda: pool._waiting == 1, 5, "the thread to idle")
    assert pool.submit(lambda: 3).result(5) == 3
    assert pool_threads() == 1


class SlowChecker:
    """Each evaluation waits `seconds`; records which ran at the same time."""

    def __init__(self, seconds: float, results: dict[Identity, SpfResult]) -> None:
        self.seconds = seconds
        self.results = results
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()
        self.identities: list[Identity] = []

    def __call__(self, query: SpfQuery, lookup_time: float) -> SpfOutcome:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.identities.append(query.identity)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        sender = query.mail_from or f"postmaster@{query.helo}"
        return SpfOutcome(query.identity, self.results[query.identity], "example.org", sender)


def session(checker: SlowChecker, pool: IdlingPool | None) -> Session:
    def no_dns(name: str, qtype: str, budget: float | None) -> list[Record]:
        raise AssertionError("no DNS here")

    metrics = Metrics()
    evaluator = Evaluator(checker, no_dns, metrics, lookup_time=20.0, background=pool)
    made = Session(Config(), Services(evaluator, metrics))
    made.connect(ipaddress.ip_address("198.51.100.7"), "ptr.example.net", "mx")
    made.hello("mail.example.org")
    return made


def test_mail_from_is_evaluated_beside_helo(pool: IdlingPool) -> None:
    checker = SlowChecker(0.2, {Identity.HELO: SpfResult.PASS, Identity.MAIL_FROM: SpfResult.PASS})
    alone = session(checker, None)
    alone.mail("a@example.org", "")
    assert checker.most == 1  # one after the other without a pool
    beside = session(checker, pool)
    beside.mail("a@example.org", "")
    assert checker.most == 2
    assert beside.transaction is not None
    assert beside.transaction.decision.action is Action.ACCEPT
    # The next transaction on the connection reuses the HELO result: nothing
    # runs beside it.
    checker.most = 0
    beside.abort("")
    beside.mail("b@example.org", "")
    assert checker.most == 1 and checker.identities[-1] is Identity.MAIL_FROM


def test_helo_still_decides_first(pool: IdlingPool) -> None:
    checker = SlowChecker(0.05, {Identity.HELO: SpfResult.FAIL, Identity.MAIL_FROM: SpfResult.PASS})
    made = session(checker, pool)
    made.mail("a@example.org", "")
    assert made.transaction is not None
    decision = made.transaction.decision
    assert decision.action is Action.REJECT and decision.decided_by is Identity.HELO
    assert decision.mail_from is None  # not waited for


def test_workers_number_their_connections_apart() -> None:
    metrics = Metrics()
    evaluator = Evaluator(
        SlowChecker(0, {}), lambda name, qtype, budget: [], metrics, lookup_time=20.0
    )
    shared = Services(evaluator, metrics)
    numbers = [list(itertools.islice(shared.for_worker(w, 3).connection_ids, 3)) for w in range(3)]
    assert numbers == [[1, 4, 7], [2, 5, 8], [3, 6, 9]]
    assert next(shared.connection_ids) == 1  # the copy each worker starts from is left alone
