"""The coordinator's cache of cluster-wide term statistics, on virtual time."""

from __future__ import annotations

import pytest

from meshrag.clock import VirtualClock
from meshrag.cluster.bm25stats import TermStatsCache
from meshrag.store.lexical import TermStats


def test_an_empty_cache_misses_everything_and_has_no_statistics() -> None:
    cache = TermStatsCache(VirtualClock())
    assert cache.missing(["wing", "flow", "wing"]) == ["wing", "flow"]
    assert cache.global_stats(["wing"]) is None
    assert cache.global_stats([]) is None  # no totals yet


def test_stored_statistics_serve_until_they_expire() -> None:
    clock = VirtualClock()
    cache = TermStatsCache(clock, ttl_s=30.0)
    cache.store(TermStats(1000, 50_000, {"wing": 12, "flow": 40}), ["wing", "flow"])
    assert cache.missing(["flow", "wing"]) == []
    assert cache.global_stats(["flow", "wing"]) == TermStats(1000, 50_000, {"flow": 40, "wing": 12})
    assert cache.global_stats([]) == TermStats(1000, 50_000, {})
    clock.advance(29.9)
    assert cache.global_stats(["wing"]) == TermStats(1000, 50_000, {"wing": 12})
    clock.advance(0.1)
    assert cache.missing(["wing", "flow"]) == ["wing", "flow"]
    assert cache.global_stats(["wing"]) is None


def test_a_partial_hit_asks_only_for_the_missing_terms_then_serves_all() -> None:
    clock = VirtualClock()
    cache = TermStatsCache(clock, ttl_s=30.0)
    cache.store(TermStats(100, 5000, {"wing": 7}), ["wing"])
    clock.advance(10)
    assert cache.missing(["wing", "jet"]) == ["jet"]
    assert cache.global_stats(["wing", "jet"]) is None
    cache.store(TermStats(110, 5600, {"jet": 3}), ["jet"])  # the pre-pass for "jet" alone
    assert cache.global_stats(["wing", "jet"]) == TermStats(110, 5600, {"wing": 7, "jet": 3})  # newest totals
    clock.advance(25)  # "wing" is 35 s old, "jet" 25 s
    assert cache.missing(["wing", "jet"]) == ["wing"]
    assert cache.global_stats(["jet"]) == TermStats(110, 5600, {"jet": 3})


def test_an_asked_term_the_answer_does_not_mention_occurs_nowhere() -> None:
    cache = TermStatsCache(VirtualClock())
    cache.store(TermStats(100, 5000, {"wing": 7}), ["wing", "zyzzyva"])
    assert cache.global_stats(["zyzzyva"]) == TermStats(100, 5000, {"zyzzyva": 0})


def test_the_number_of_terms_is_bounded_dropping_the_oldest() -> None:
    clock = VirtualClock()
    cache = TermStatsCache(clock, ttl_s=30.0, max_terms=3)
    for i, term in enumerate(["a", "b", "c", "d"]):
        cache.store(TermStats(10, 100, {term: i}), [term])
        clock.advance(1)
    assert len(cache) == 3
    assert cache.missing(["a", "b", "c", "d"]) == ["a"]
    cache.store(TermStats(10, 100, {"b": 5}), ["b"])  # refreshed: now the newest
    cache.store(TermStats(10, 100, {"e": 1}), ["e"])
    assert cache.missing(["b", "c", "d", "e"]) == ["c"]
    cache.store(TermStats(10, 100, {}), ["x", "y", "z", "w"])  # more than fit at once
    assert len(cache) == 3 and cache.missing(["y", "z", "w"]) == []


def test_expired_entries_are_dropped_when_storing() -> None:
    clock = VirtualClock()
    cache = TermStatsCache(clock, ttl_s=5.0)
    cache.store(TermStats(10, 100, {}), [f"t{i}" for i in range(100)])
    clock.advance(6)
    cache.store(TermStats(10, 100, {}), ["fresh"])
    assert len(cache) == 1


def test_a_zero_ttl_asks_for_every_query() -> None:
    cache = TermStatsCache(VirtualClock(), ttl_s=0.0)
    cache.store(TermStats(10, 100, {"wing": 1}), ["wing"])
    assert cache.missing(["wing"]) == ["wing"] and cache.global_stats(["wing"]) is None


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        TermStatsCache(VirtualClock(), ttl_s=-1)
    with pytest.raises(ValueError, match="max_terms"):
        TermStatsCache(VirtualClock(), max_terms=0)
