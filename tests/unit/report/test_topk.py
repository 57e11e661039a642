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


def add_extra(mine: Record, theirs: Record) -> None:
    mine.extra += theirs.extra


@pytest.mark.parametrize("seed", range(5))
def test_merged_parts_keep_the_bounds_of_the_whole(seed: int) -> None:
    rng = random.Random(seed)
    heavy = [f"heavy{n}" for n in range(4)]
    stream = [
        rng.choice(heavy) if rng.random() < 0.3 else f"tail{rng.randrange(3000)}"
        for _ in range(30_000)
    ]
    truth = Counter(stream)
    parts = [TopK(40, Record) for _ in range(3)]
    for n, name in enumerate(stream):
        record = parts[n % 3].hit(name)
        record.extra += 1  # counted while kept: may miss up to the error
    whole, *others = parts
    for other in others:
        whole.merge(other, add_extra)
    assert len(whole) <= 80
    kept = dict(whole.ranked())
    for name, record in kept.items():
        assert record.weight - record.error <= truth[name] <= record.weight, name
        assert truth[name] - record.error <= record.extra <= truth[name], name
    for name, count in truth.items():
        if name not in kept:
            assert count <= whole.floor, name
    assert {name for name, _ in whole.ranked()[:4]} == set(heavy)


def test_merging_exact_parts_is_exact() -> None:
    one, two = TopK(10, Record), TopK(10, Record)
    for name in "aab":
        one.hit(name).extra += 1
    for name in "bc":
        two.hit(name).extra += 2
    one.merge(two, add_extra)
    assert one.exact
    assert [(n, r.weight, r.error, r.extra) for n, r in one.ranked()] == [
        ("a", 2, 0, 2),
        ("b", 2, 0, 3),
        ("c", 1, 0, 2),
    ]
