"""The partitions a node answers searches for (cluster/holdings.py)."""

from __future__ import annotations

import json
from pathlib import Path

from meshrag.cluster.holdings import HOLDINGS_FILE, Holdings
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable


def _ring(*node_ids: str, removed: tuple[str, ...] = ()) -> Ring:
    entries = [RingEntry(n, n, "z", RingStatus.NORMAL, 1) for n in node_ids]
    entries += [RingEntry(n, n, "z", RingStatus.REMOVED, 2) for n in removed]
    return Ring(RingTable(entries), 16, 2)


def _owned(ring: Ring, node_id: str) -> set[int]:
    return {pid for pid in range(ring.partitions) if ring.owns(node_id, pid)}


def test_marked_partitions_survive_a_restart(tmp_path: Path) -> None:
    holdings = Holdings(tmp_path)
    holdings.mark(3)
    holdings.mark(5)
    again = Holdings(tmp_path)
    again.load()
    assert 3 in again and 5 in again and 4 not in again


def test_a_partition_the_ring_moves_away_is_not_held_even_when_it_comes_back(tmp_path: Path) -> None:
    """The flake this fixes: n2 held a partition, lost it to n3's join (and with it the
    writes that followed), regained it when n3 was removed and answered from its stale copy."""
    two, three, back = _ring("n1", "n2"), _ring("n1", "n2", "n3"), _ring("n1", "n2", removed=("n3",))
    holdings = Holdings(tmp_path)
    for pid in _owned(two, "n2"):
        holdings.mark(pid)
    moved = _owned(two, "n2") - _owned(three, "n2")
    assert moved, "n3's join must take some of n2's partitions"
    assert holdings.release_unowned(_owned(three, "n2"))
    assert not any(pid in holdings for pid in moved)  # at once, in memory, before any file write
    holdings.release_unowned(_owned(back, "n2"))
    assert not any(pid in holdings for pid in moved)
    assert all(pid in holdings for pid in _owned(three, "n2"))


def test_release_touches_no_file_until_save(tmp_path: Path) -> None:
    holdings = Holdings(tmp_path)
    holdings.mark(1)
    holdings.mark(2)
    assert holdings.release_unowned({1})
    assert json.loads((tmp_path / HOLDINGS_FILE).read_text()) == [1, 2]
    holdings.save()
    assert json.loads((tmp_path / HOLDINGS_FILE).read_text()) == [1]
    assert not holdings.release_unowned({1})  # nothing more to release: no save needed


def test_an_unreadable_file_holds_nothing(tmp_path: Path) -> None:
    (tmp_path / HOLDINGS_FILE).write_text("{not json")
    holdings = Holdings(tmp_path)
    holdings.load()
    assert 0 not in holdings


def test_a_claim_from_a_pass_older_than_the_ring_does_not_hold_a_partition_moved_away(tmp_path: Path) -> None:
    """A repair pass decides with the ring it started with; its claim is checked against the ring
    as it is when the claim lands, so a partition released meanwhile is not held again."""
    two, three = _ring("n1", "n2"), _ring("n1", "n2", "n3")
    moved = sorted(_owned(two, "n2") - _owned(three, "n2"))
    holdings = Holdings(tmp_path)
    holdings.release_unowned(_owned(three, "n2"))  # the ring moved on while the pass ran
    assert not holdings.mark(moved[0], still_owned=lambda pid: pid in _owned(three, "n2"))
    assert moved[0] not in holdings
    kept = sorted(_owned(three, "n2"))[0]
    assert holdings.mark(kept, still_owned=lambda pid: pid in _owned(three, "n2")) and kept in holdings
