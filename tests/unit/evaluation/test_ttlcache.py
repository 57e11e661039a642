"""The cache DNS answers and SPF results are kept in: expiry, the byte
bound with least recently used entries going first, and the cap on one
entry."""

from __future__ import annotations

from spfmilter.evaluation.ttlcache import TtlCache
from tests.support.fakes import Clock


def test_an_entry_lives_until_its_expiry() -> None:
    clock = Clock()
    cache: TtlCache[str] = TtlCache(800, clock)
    cache.put("a", "one", 10, 100)
    clock.now += 9.5
    assert cache.get("a") == "one"
    clock.now += 0.5  # expiry reached
    assert cache.get("a") is None and cache.bytes == 0


def test_a_key_put_again_replaces_its_value_and_its_size() -> None:
    cache: TtlCache[str] = TtlCache(800, Clock())
    cache.put("a", "one", 10, 100)
    cache.put("a", "two", 10, 60)
    assert cache.get("a") == "two" and cache.bytes == 60


def test_past_the_bound_the_least_recently_used_go_first() -> None:
    cache: TtlCache[str] = TtlCache(800, Clock())
    for key in "abcdefgh":
        cache.put(key, key, 10, 100)
    assert cache.bytes == 800
    assert cache.get("a") == "a"  # now the most recently used
    cache.put("i", "i", 10, 100)
    assert cache.get("b") is None and cache.get("a") == "a" and cache.bytes == 800


def test_what_may_not_be_kept_is_not() -> None:
    cache: TtlCache[str] = TtlCache(800, Clock())
    cache.put("expired", "x", 0, 10)
    cache.put("huge", "x", 10, 101)  # more than an eighth of the bound
    cache.put("eighth", "x", 10, 100)
    assert cache.get("expired") is None and cache.get("huge") is None
    assert cache.get("eighth") == "x" and cache.bytes == 100
