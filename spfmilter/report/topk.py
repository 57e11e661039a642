"""Counting the most frequent of an unbounded set of names in bounded memory.

This module owns the report's one approximate structure: Space-Saving
(Metwally, Agrawal and El Abbadi, 2005) in a batched form.  Sender domains
and clients of a month of logs can run into millions (spam comes from
everywhere, with made-up domains); the report keeps at most twice
`capacity` of them.  When that many are kept, the `capacity` heaviest stay
and the rest are dropped; the heaviest weight dropped so far is the floor.
A name seen again after it was dropped, or for the first time after a
drop, starts at the floor (its error) plus one.  So, for every name kept,
its true weight lies between `weight - error` and `weight`, its other
counts (those its record adds up while kept) may miss at most `error`, and
any name not kept weighed at most the floor; a name heavier than the
floor is always kept.  Until the first drop every count is exact.

Two structures fed from two parts of a stream merge into one that keeps
the same promises for the whole (Agarwal et al., "Mergeable summaries",
2012): a name one side lacks may have weighed up to that side's floor
there, which its merged weight and error take on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Weighed(Protocol):
    """A record the structure can rank: its weight, and how much of it
    may be inherited from names dropped before (the error)."""

    weight: int
    error: int


R = TypeVar("R", bound=Weighed)


class TopK(Generic[R]):
    """Records by name, at most 2 * `capacity` of them; `new()` makes a
    record of weight and error 0."""

    def __init__(self, capacity: int, new: Callable[[], R]) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.floor = 0
        self._new = new
        self._records: dict[str, R] = {}

    def hit(self, name: str) -> R:
        """The record of `name`, its weight one more."""
        record = self._records.get(name)
        if record is None:
            if len(self._records) >= 2 * self.capacity:
                self._drop()
            record = self._new()
            record.weight = record.error = self.floor
            self._records[name] = record
        record.weight += 1
        return record

    def merge(self, other: TopK[R], add: Callable[[R, R], None]) -> None:
        """Take in what `other` counted; `add(mine, theirs)` adds a record's
        own counts (its weight and error are added here)."""
        for name, theirs in other._records.items():
            mine = self._records.get(name)
            if mine is None:
                mine = self._records[name] = self._new()
                mine.weight = mine.error = self.floor
            mine.weight += theirs.weight
            mine.error += theirs.error
            add(mine, theirs)
        for name, mine in self._records.items():
            if name not in other._records:
                mine.weight += other.floor
                mine.error += other.floor
        # Every record now weighs at least the sum of the floors.
        self.floor += other.floor
        if len(self._records) > 2 * self.capacity:
            self._drop()

    def _drop(self) -> None:
        ranked = sorted(self._records.items(), key=lambda item: item[1].weight, reverse=True)
        # The floor never goes down: every record weighs at least the old
        # floor (those made since started above it), so the heaviest
        # dropped does too.
        self.floor = ranked[self.capacity][1].weight
        self._records = dict(ranked[: self.capacity])

    @property
    def exact(self) -> bool:
        """Whether no name was ever dropped (every count is exact)."""
        return self.floor == 0

    def __len__(self) -> int:
        return len(self._records)

    def ranked(self, key: Callable[[R], int] | None = None) -> list[tuple[str, R]]:
        """Name and record, heaviest first (by `key`, default the weight);
        ties by name."""
        rank = key or (lambda record: record.weight)
        return sorted(self._records.items(), key=lambda item: (-rank(item[1]), item[0]))
