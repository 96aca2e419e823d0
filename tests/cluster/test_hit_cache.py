"""cluster/hit_cache.py: the text of a node's best candidates, kept for the fetch (virtual clock)."""

from __future__ import annotations

from meshrag.clock import VirtualClock
from meshrag.cluster.hit_cache import HitCache, in_order, key_of
from meshrag.store.types import Candidate, Hit


def hit(n: int, version: int = 1, score: float = 0.5) -> Hit:
    return Hit(f"d{n}#{version}#0", f"d{n}", score, f"text {n} v{version}", {"n": n}, version, n % 4)


def candidate(n: int, version: int = 1, score: float = 0.9) -> Candidate:
    return Candidate(f"d{n}#{version}#0", f"d{n}", score, version, n % 4)


def test_a_kept_hit_is_served_scored_as_its_candidate_and_the_rest_are_named_missing() -> None:
    cache = HitCache(VirtualClock())
    cache.put([hit(1), hit(2)])

    found, missing = cache.take([candidate(2, score=0.75), candidate(3)])

    assert list(found.values()) == [Hit("d2#1#0", "d2", 0.75, "text 2 v1", {"n": 2}, 1, 2)]
    assert missing == [candidate(3)]
    assert (cache.served, cache.missed) == (1, 1)


def test_another_version_of_the_chunk_is_a_miss() -> None:
    cache = HitCache(VirtualClock())
    cache.put([hit(1, version=1)])
    found, missing = cache.take([candidate(1, version=2)])
    assert found == {} and missing == [candidate(1, version=2)]


def test_an_entry_older_than_the_ttl_is_a_miss() -> None:
    clock = VirtualClock()
    cache = HitCache(clock, ttl_s=2.0)
    cache.put([hit(1)])
    clock.advance(1.9)
    assert cache.take([candidate(1)])[1] == []
    clock.advance(0.2)
    assert cache.take([candidate(1)])[1] == [candidate(1)]


def test_the_cache_keeps_at_most_max_entries_dropping_the_oldest() -> None:
    cache = HitCache(VirtualClock(), max_entries=3)
    cache.put([hit(1), hit(2), hit(3)])
    cache.put([hit(1)])  # refreshed: now the newest
    cache.put([hit(4)])
    assert len(cache) == 3
    found, missing = cache.take([candidate(n) for n in (1, 2, 3, 4)])
    assert missing == [candidate(2)]


def test_in_order_follows_the_candidates_and_leaves_out_those_without_a_hit() -> None:
    kept = {key_of(hit(3)): hit(3)}
    read = {key_of(hit(1)): hit(1)}
    assert [h.doc_id for h in in_order([candidate(3), candidate(2), candidate(1)], kept, read)] == ["d3", "d1"]
