"""Exact bounds of the prefetch: questions on their way at a time, the void
answers and term counts at n and n+1, the time budget handed to a lookup,
and the text of its one error line."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from spfmilter.evaluation.prefetch import Prefetcher, read_record
from spfmilter.evaluation.pyspf import spf_text
from spfmilter.evaluation.resolver import Record
from tests.support.fakedns import Inline
from tests.support.fakes import Held

V4 = ipaddress.ip_address("192.0.2.1")


def txt(name: str, text: str) -> list[Record]:
    return [((name, "TXT"), (text.encode(),))]


def a_terms(count: int) -> list[Record]:
    return txt("d.example", " ".join(["v=spf1"] + [f"a:h{k}.example" for k in range(count)]))


def answer(name: str, qtype: str, budget: float) -> Sequence[Record]:
    return [((name, qtype), "192.0.2.9")]


def void(name: str, qtype: str, budget: float) -> Sequence[Record]:
    return []


def run_one(pool: Held) -> None:
    """Answer the first question handed to the pool and not answered yet."""
    for future, job in pool.jobs:
        if not future.done():
            future.set_running_or_notify_cancel()
            future.set_result(job())
            return
    raise AssertionError("no question waiting")


def test_at_most_in_flight_questions_are_on_their_way() -> None:
    pool = Held()
    prefetch = Prefetcher(
        answer, lambda name, qtype: False, spf_text, pool, void_lookup_limit=2, in_flight=2
    ).start(V4, float("inf"))
    prefetch.read("d.example", a_terms(5))
    assert len(pool.jobs) == 2
    run_one(pool)  # one answered: one more goes
    assert len(pool.jobs) == 3
    run_one(pool)
    run_one(pool)
    run_one(pool)
    run_one(pool)
    assert len(pool.jobs) == 5 and all(future.done() for future, _ in pool.jobs)


@pytest.mark.parametrize("void_limit", [0, 1])
def test_no_question_goes_to_the_pool_after_one_void_answer_too_many(void_limit: int) -> None:
    pool = Held()
    prefetch = Prefetcher(
        void, lambda name, qtype: False, spf_text, pool, void_lookup_limit=void_limit, in_flight=1
    ).start(V4, float("inf"))
    prefetch.read("d.example", a_terms(4))
    for _ in range(void_limit + 1):
        run_one(pool)
    assert len(pool.jobs) == void_limit + 1
    assert all(future.done() for future, _ in pool.jobs)


def test_a_lookup_gets_the_time_left_until_the_deadline() -> None:
    budgets: list[float] = []

    def fetch(name: str, qtype: str, budget: float) -> Sequence[Record]:
        budgets.append(budget)
        return answer(name, qtype, budget)

    prefetch = Prefetcher(
        fetch, lambda name, qtype: False, spf_text, Inline(), void_lookup_limit=2, clock=lambda: 9.5
    ).start(V4, 10.0)
    prefetch.read("d.example", a_terms(1))
    assert budgets == [0.5]


@pytest.mark.parametrize(
    ("budget", "wanted", "terms"), [(2, ["x", "y"], 2), (3, ["x", "y", "r"], 3)]
)
def test_a_redirect_counts_as_a_term_at_the_limit(
    budget: int, wanted: list[str], terms: int
) -> None:
    record = b"v=spf1 a:x.example a:y.example redirect=r.example"
    reading = read_record(record, "d.example", "A", budget)
    assert [want.name for want in reading.wants] == [f"{name}.example" for name in wanted]
    assert reading.terms == terms


@pytest.mark.parametrize("tail", [b"moo", b"include", b"redirect=r.example redirect=s.example"])
def test_a_syntax_error_past_the_limit_still_means_nothing_is_asked(tail: bytes) -> None:
    # pyspf refuses the whole record before any lookup, wherever the error is.
    record = b"v=spf1 a:x.example a:y.example " + tail
    assert read_record(record, "d.example", "A", 1).wants == ()
