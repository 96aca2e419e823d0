"""cluster/partition_table.py: each partition's replicas, their roles and the partition's health."""

from __future__ import annotations

from meshrag.cluster.partition_table import FULL, TRANSFERRING, UNDER_REPLICATED, partition_table
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable


def ring(*statuses: tuple[str, RingStatus], replicas: int = 2) -> Ring:
    return Ring(RingTable(RingEntry(node_id, f"name-{node_id}", "z", status, 1) for node_id, status in statuses), 8, replicas)


NORMAL, JOINING, LEAVING = RingStatus.NORMAL, RingStatus.JOINING, RingStatus.LEAVING


def test_a_settled_ring_with_every_node_alive_is_full_and_names_the_read_owners() -> None:
    r = ring(("a", NORMAL), ("b", NORMAL), ("c", NORMAL))
    table = partition_table(r, lambda node: True)
    assert [row["partition"] for row in table] == list(range(8))
    for row in table:
        assert row["health"] == FULL
        assert [rep["id"] for rep in row["replicas"]] == r.read_owners(row["partition"])
        assert all(rep["name"] == f"name-{rep['id']}" and rep["role"] == "current" and rep["alive"] for rep in row["replicas"])


def test_a_dead_replica_makes_its_partitions_under_replicated_and_only_those() -> None:
    r = ring(("a", NORMAL), ("b", NORMAL), ("c", NORMAL))
    table = partition_table(r, lambda node: node != "b")
    for row in table:
        holds_b = "b" in [rep["id"] for rep in row["replicas"]]
        assert row["health"] == (UNDER_REPLICATED if holds_b else FULL)


def test_a_joining_node_is_an_incoming_replica_and_its_partitions_are_transferring() -> None:
    r = ring(("a", NORMAL), ("b", NORMAL), ("c", JOINING))
    table = partition_table(r, lambda node: True)
    moving = [row for row in table if any(rep["id"] == "c" for rep in row["replicas"])]
    assert moving, "c is a target owner of some partition"
    for row in moving:
        assert row["health"] == TRANSFERRING
        assert next(rep for rep in row["replicas"] if rep["id"] == "c")["role"] == "incoming"
        assert any(rep["role"] == "outgoing" for rep in row["replicas"])  # whom c replaces hands it off


def test_a_partition_whose_only_other_replica_is_leaving_and_dead_is_under_replicated() -> None:
    r = ring(("a", NORMAL), ("b", LEAVING), ("c", NORMAL))
    table = partition_table(r, lambda node: node != "b")
    rows_with_b = [row for row in table if any(rep["id"] == "b" for rep in row["replicas"])]
    assert rows_with_b and all(row["health"] == UNDER_REPLICATED for row in rows_with_b)
    assert all(next(rep for rep in row["replicas"] if rep["id"] == "b")["role"] == "outgoing" for row in rows_with_b)
