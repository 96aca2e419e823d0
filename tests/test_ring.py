"""ring.py: placement (vnodes, zones, balance, movement) and the LWW ring table."""

from __future__ import annotations

import itertools
import random

import pytest

from meshrag.ring import Ring, RingEntry, RingStatus, RingTable, node_tokens


def entry(node_id: str, status: RingStatus = RingStatus.NORMAL, zone: str = "z", version: int = 1) -> RingEntry:
    return RingEntry(node_id, f"name-{node_id}", zone, status, version)


def ring(*entries: RingEntry, partitions: int = 64, replicas: int = 3) -> Ring:
    return Ring(RingTable(entries), partitions, replicas)


def assignments(r: Ring) -> set[tuple[int, str]]:
    return {(pid, node) for pid in range(r.partitions) for node in r.target.owners(pid)}


def test_tokens_are_deterministic_and_depend_only_on_the_node_id() -> None:
    assert node_tokens("a") == node_tokens("a")
    assert node_tokens("a") != node_tokens("b")
    assert len(set(node_tokens("a"))) == len(node_tokens("a"))


@pytest.mark.parametrize("nodes", [1, 2, 3, 5])
def test_every_partition_has_min_n_and_nodes_distinct_owners(nodes: int) -> None:
    r = ring(*(entry(f"n{i}") for i in range(nodes)))
    for pid in range(r.partitions):
        owners = r.read_owners(pid)
        assert len(owners) == len(set(owners)) == min(3, nodes)


def test_replicas_span_distinct_zones_first() -> None:
    r = ring(*(entry(f"n{i}", zone=f"zone{i % 3}") for i in range(6)))
    for pid in range(r.partitions):
        assert {r.current.zones[node] for node in r.read_owners(pid)} == {"zone0", "zone1", "zone2"}


def test_with_fewer_zones_than_replicas_nodes_fill_the_list() -> None:
    r = ring(entry("a", zone="x"), entry("b", zone="x"), entry("c", zone="y"), entry("d", zone="y"))
    for pid in range(r.partitions):
        owners = r.read_owners(pid)
        assert len(owners) == 3 and {r.current.zones[n] for n in owners} == {"x", "y"}


def test_every_node_computes_the_same_placement_whatever_the_entry_order() -> None:
    entries = [entry(f"n{i}") for i in range(5)]
    shuffled = entries[:]
    random.Random(3).shuffle(shuffled)
    a, b = ring(*entries), ring(*shuffled)
    assert [a.read_owners(p) for p in range(64)] == [b.read_owners(p) for p in range(64)]


def test_a_fourth_node_takes_about_a_quarter_and_only_gains() -> None:
    three = ring(*(entry(f"n{i}") for i in range(3)), partitions=256)
    four = ring(*(entry(f"n{i}") for i in range(4)), partitions=256)
    before, after = assignments(three), assignments(four)
    gained = after - before
    assert all(node == "n3" for _, node in gained), "data moved between old nodes"
    assert 0.15 <= len(gained) / len(after) <= 0.35
    assert three.moves(four) == len(gained)


def test_removing_a_node_reassigns_only_its_own_assignments() -> None:
    four = ring(*(entry(f"n{i}") for i in range(4)), partitions=128)
    removed = ring(*(entry(f"n{i}") for i in range(3)), entry("n3", RingStatus.REMOVED), partitions=128)
    lost = assignments(four) - assignments(removed)
    assert {node for _, node in lost} == {"n3"}
    for pid in range(128):
        assert set(four.target.owners(pid)) - {"n3"} <= set(removed.target.owners(pid))


def test_balance_across_nodes_is_within_a_band() -> None:
    r = ring(*(entry(f"n{i}") for i in range(4)), partitions=256)
    counts = [len(r.partitions_of(f"n{i}")) for i in range(4)]
    assert all(0.6 * 192 <= count <= 1.4 * 192 for count in counts), counts  # 256 * 3 / 4 each


def test_a_joining_node_receives_writes_but_serves_no_reads_yet() -> None:
    r = ring(entry("a"), entry("b"), entry("c"), entry("d", RingStatus.JOINING), partitions=64)
    gaining = [pid for pid in range(64) if "d" in r.target.owners(pid)]
    assert gaining
    for pid in gaining:
        assert "d" in r.write_owners(pid)
        assert "d" not in r.read_owners(pid)
        assert r.pending(pid) == ["d"]
        assert set(r.write_owners(pid)) == set(r.current.owners(pid)) | {"d"}


def test_a_leaving_node_serves_reads_and_takes_writes_until_it_is_removed() -> None:
    r = ring(entry("a"), entry("b"), entry("c"), entry("d", RingStatus.LEAVING))
    held = [pid for pid in range(64) if "d" in r.current.owners(pid)]
    assert held
    for pid in held:
        assert "d" in r.read_owners(pid) and "d" in r.write_owners(pid)
        assert "d" not in r.target.owners(pid)
    assert r.partitions_of("d", "target") == []


def test_statuses_alone_decide_placement() -> None:
    """Liveness is not an input: a ring of the same statuses places the same way."""
    assert [ring(entry("a"), entry("b")).read_owners(p) for p in range(8)] == [
        ring(entry("b", version=9), entry("a", version=4)).read_owners(p) for p in range(8)
    ]


def test_an_empty_ring_owns_nothing() -> None:
    assert ring().write_owners(0) == [] and ring().read_owners(0) == []


def test_last_writer_wins_and_merge_order_does_not_matter() -> None:
    updates = [entry("a", RingStatus.JOINING, version=1), entry("a", RingStatus.NORMAL, version=5),
               entry("b", RingStatus.NORMAL, version=2), entry("b", RingStatus.LEAVING, version=7),
               entry("a", RingStatus.LEAVING, version=3)]
    fingerprints = {RingTable(order).fingerprint() for order in itertools.permutations(updates)}
    assert len(fingerprints) == 1
    table = RingTable(updates)
    assert table.get("a").status is RingStatus.NORMAL and table.get("b").status is RingStatus.LEAVING


def test_merge_is_idempotent_and_reports_what_it_adopted() -> None:
    table = RingTable([entry("a", version=3)])
    assert table.merge([entry("a", RingStatus.LEAVING, version=2)]) == []
    newer = entry("a", RingStatus.LEAVING, version=4)
    assert table.merge([newer]) == [newer]
    assert table.merge([newer]) == []


def test_equal_versions_resolve_to_the_later_lifecycle_status() -> None:
    a = RingTable([entry("x", RingStatus.NORMAL, version=5), entry("x", RingStatus.REMOVED, version=5)])
    b = RingTable([entry("x", RingStatus.REMOVED, version=5), entry("x", RingStatus.NORMAL, version=5)])
    assert a.get("x").status is b.get("x").status is RingStatus.REMOVED


def test_set_status_always_moves_the_version_forward() -> None:
    table = RingTable([entry("a", version=100)])
    updated = table.set_status("a", RingStatus.LEAVING, version=50)  # a lagging clock
    assert updated.version == 101 and table.get("a") == updated


def test_the_table_round_trips_through_plain_data() -> None:
    table = RingTable([entry("a"), entry("b", RingStatus.JOINING, zone="z2", version=9)])
    assert RingTable.from_list(table.to_list()).fingerprint() == table.fingerprint()
    assert RingTable.from_list(table.to_list()).entries() == table.entries()


def test_summary_counts_partitions_now_and_after_the_move() -> None:
    r = ring(entry("a"), entry("b"), entry("c"), entry("d", RingStatus.JOINING), partitions=32)
    summary = r.summary()
    assert summary["d"]["partitions"] == 0 and summary["d"]["target_partitions"] > 0
    assert summary["a"]["partitions"] == 32  # three current nodes, N=3: all of them
    assert sum(s["target_partitions"] for s in summary.values()) == 32 * 3
