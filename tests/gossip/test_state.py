"""state.py: the version ordering and the member table's indexes."""

from __future__ import annotations

import random
from collections import Counter

from meshrag.gossip.state import MemberRecord, MemberState, MemberTable, supersedes


def record(node_id: str, generation: int = 1, incarnation: int = 0, state: MemberState = MemberState.ALIVE) -> MemberRecord:
    return MemberRecord(node_id, node_id, f"{node_id}:1", generation, incarnation, state, {}, b"\x80", since=0.0)


def test_a_new_generation_outranks_any_incarnation_of_the_previous_life() -> None:
    old_life = record("a", generation=3, incarnation=900, state=MemberState.DEAD)
    assert supersedes((4, 0), MemberState.ALIVE, old_life)
    assert not supersedes((3, 899), MemberState.ALIVE, record("a", 3, 900))


def test_at_equal_versions_the_more_final_state_wins() -> None:
    alive = record("a", 1, 5)
    assert supersedes((1, 5), MemberState.SUSPECT, alive)
    assert supersedes((1, 5), MemberState.DEAD, record("a", 1, 5, MemberState.SUSPECT))
    assert supersedes((1, 5), MemberState.LEFT, record("a", 1, 5, MemberState.DEAD))
    assert not supersedes((1, 5), MemberState.ALIVE, record("a", 1, 5, MemberState.SUSPECT))
    assert not supersedes((1, 5), MemberState.ALIVE, alive)


def test_live_index_and_ring_follow_state_changes() -> None:
    table = MemberTable(record("m"))
    for name in "dbca":
        table.add(record(name))
    assert table.live_count() == 5
    assert table.ring == ["a", "b", "c", "d", "m"]
    table.set_state(table.get("b"), MemberState.DEAD, wall=1.0, now=1.0)
    assert table.live_count() == 4
    assert table.ring == ["a", "c", "d", "m"]
    assert sorted(table.live_ids()) == ["a", "c", "d"]
    assert table.get("b").since == 1.0
    table.set_state(table.get("b"), MemberState.SUSPECT, wall=2.0, now=2.0)
    assert "b" in table.ring and table.live_count() == 5


def test_sampling_returns_distinct_live_members_and_honours_exclusions() -> None:
    table = MemberTable(record("self"))
    for index in range(50):
        table.add(record(f"n{index}", state=MemberState.DEAD if index % 5 == 0 else MemberState.ALIVE))
    rng = random.Random(1)
    counts: Counter[str] = Counter()
    for _ in range(2000):
        chosen = table.sample_live(rng, 3, exclude=("n1",))
        ids = [member.node_id for member in chosen]
        assert len(ids) == len(set(ids)) == 3
        assert "n1" not in ids and "self" not in ids
        assert all(table.get(i).state == MemberState.ALIVE for i in ids)
        counts.update(ids)
    assert len(counts) == 39  # every live member but n1 gets picked


def test_sampling_more_than_available_returns_all_of_them() -> None:
    table = MemberTable(record("self"))
    table.add(record("a"))
    table.add(record("b"))
    assert sorted(m.node_id for m in table.sample_live(random.Random(0), 5)) == ["a", "b"]
    assert table.sample_live(random.Random(0), 5, exclude=("a", "b")) == []
