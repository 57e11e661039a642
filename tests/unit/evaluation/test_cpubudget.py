"""The CPU budget of one evaluation, garbage collections left out."""

from __future__ import annotations

import threading

from spfmilter.evaluation.cpubudget import CpuBudget


class ThreadClock:
    """A thread CPU clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_is_spent_only_beyond_its_seconds() -> None:
    clock = ThreadClock()
    budget = CpuBudget(1.0, clock)
    assert not budget.spent()  # no evaluation yet
    budget.start()
    clock.now = 11.0
    assert not budget.spent()  # exactly the budget: not beyond it
    clock.now = 11.5
    assert budget.spent()
    budget.stop()
    assert not budget.spent()


def test_a_thread_that_never_evaluated_has_not_spent_anything() -> None:
    budget = CpuBudget(1.0, ThreadClock())
    budget.start()
    spent: list[bool] = []
    thread = threading.Thread(target=lambda: spent.append(budget.spent()))
    thread.start()
    thread.join(5)
    assert spent == [False]


def test_a_garbage_collection_is_left_out_of_the_evaluations_cpu() -> None:
    clock = ThreadClock()
    budget = CpuBudget(1.0, clock)
    budget.start()  # deadline: 11 s of CPU, collections left out
    clock.now = 10.5
    budget.gc_phase("start", {})
    clock.now = 12.5
    budget.gc_phase("stop", {})  # 2 s collecting
    clock.now = 12.9
    assert not budget.spent()  # 0.9 s of work
    # A stop without its start (the callback installed mid-collection, or
    # the start seen already) adds nothing.
    budget.gc_phase("stop", {})
    assert not budget.spent()
    clock.now = 13.1
    assert budget.spent()  # 1.1 s of work


def test_a_collection_ending_before_any_was_seen_starting_adds_nothing() -> None:
    clock = ThreadClock()
    budget = CpuBudget(1.0, clock)
    budget.gc_phase("stop", {})
    budget.start()
    clock.now = 11.5
    assert budget.spent()
