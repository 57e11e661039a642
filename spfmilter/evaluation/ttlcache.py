"""A thread-safe cache whose entries expire and whose size is counted in bytes.

This module owns the one cache structure spfmilter keeps data in (DNS
answers, SPF results): entries live until their expiry time, the least
recently used go first when the bytes held exceed the bound, and one entry
may take at most an eighth of the bound, so that a few huge ones cannot
flush everything else.  Entries are stored as given: callers keep them plain
tuples of immutable values, which the garbage collector stops tracking.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    """Values by key until their expiry (a clock() time), within `limit` bytes."""

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        # key -> (expiry, size, value)
        self._entries: collections.OrderedDict[Hashable, tuple[float, int, V]] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """The bytes held now."""
        return self._bytes

    def get(self, key: Hashable) -> V | None:
        """The value for `key` if it has not expired; it becomes the most
        recently used."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry[2]

    def put(self, key: Hashable, value: V, ttl: float, size: int) -> None:
        """Keep `value` for `ttl` seconds, if it may be kept at all."""
        if ttl <= 0 or size * 8 > self.limit:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (self._clock() + ttl, size, value)
            self._bytes += size
            while self._bytes > self.limit:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: Hashable) -> None:
        self._bytes -= self._entries.pop(key)[1]
