"""Space-Saving's promises: exact until the first drop, then bounded error,
heavy names always kept, and bounded size whatever the stream."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from spfmilter.report.topk import TopK


class Record:
    def __init__(self) -> None:
        self.weight = self.error = self.extra = 0


def test_exact_until_full() -> None:
    top = TopK(3, Record)
    for name in "abacabadaaa":
        top.hit(name)
    assert top.exact
    assert [(name, r.weight, r.error) for name, r in top.ranked()] == [
        ("a", 7, 0),
        ("b", 2, 0),
        ("c", 1, 0),
        ("d", 1, 0),
    ]


def test_ties_rank_by_name_and_by_another_count() -> None:
    top = TopK(5, Record)
    for name in "bac":
        top.hit(name).extra = ord(name)
    assert [name for name, _ in top.ranked()] == ["a", "b", "c"]
    assert [name for name, _ in top.ranked(lambda r: r.extra)] == ["c", "b", "a"]


@pytest.mark.parametrize("seed", range(5))
def test_bounds_hold_on_a_long_tail(seed: int) -> None:
    rng = random.Random(seed)
    heavy = [f"heavy{n}" for n in range(5)]
    stream = [
        rng.choice(heavy) if rng.random() < 0.3 else f"tail{rng.randrange(5000)}"
        for _ in range(20_000)
    ]
    truth = Counter(stream)
    top = TopK(50, Record)
    largest = 0
    for name in stream:
        top.hit(name)
        largest = max(largest, len(top))
    assert largest <= 100  # never more than twice the capacity
    assert not top.exact
    kept = dict(top.ranked())
    for name, record in kept.items():
        assert record.weight - record.error <= truth[name] <= record.weight, name
        assert record.error <= top.floor
    for name, count in truth.items():
        if name not in kept:
            assert count <= top.floor, name
    # Heavier than the floor: always kept, and ranked first.
    assert all(truth[name] > top.floor for name in heavy)
    assert {name for name, _ in top.ranked()[:5]} == set(heavy)


def test_a_stream_of_distinct_names_stays_bounded() -> None:
    top = TopK(10, Record)
    for n in range(10_000):
        top.hit(f"spam{n}.example")
    assert len(top) <= 20
    assert top.floor >= 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        TopK(0, Record)
