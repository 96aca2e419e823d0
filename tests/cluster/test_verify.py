"""cluster/verify.py: classifying each partition's replicas by digest, and what counts as repairing (pure)."""

from __future__ import annotations

from meshrag.cluster.node_report import NodeReport, PartitionDigest
from meshrag.cluster.verify import (
    DIVERGED, EXIT_DIFFERS, EXIT_IN_SYNC, EXIT_UNREACHABLE, IN_SYNC, REPAIRING, UNREACHABLE, classify, exit_status,
    repairing_partitions, verify_document,
)
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable

P = 8


def ring(statuses: dict[str, RingStatus] | None = None, replicas: int = 2) -> Ring:
    statuses = statuses or {"a": RingStatus.NORMAL, "b": RingStatus.NORMAL, "c": RingStatus.NORMAL}
    return Ring(RingTable(RingEntry(n, n.upper(), "z", s, 1) for n, s in statuses.items()), P, replicas)


def reports(r: Ring, root: str = "same", fingerprint: str = "fp") -> dict[str, NodeReport]:
    """Every node answering the same digest for every partition it read-owns."""
    out = {n: NodeReport(n, n.upper(), ring_fingerprint=fingerprint) for n in r.entries}
    for pid in range(r.partitions):
        for node in r.read_owners(pid):
            out[node].digests[pid] = PartitionDigest(root, 3, 0)
            out[node].held.append(pid)
    return out


def test_classify_equal_differing_and_missing_digests() -> None:
    assert classify(["x", "x", "x"], repairing=False) == IN_SYNC
    assert classify(["x", "y", "x"], repairing=False) == DIVERGED
    assert classify(["x", "y", "x"], repairing=True) == REPAIRING
    assert classify(["x", None, "x"], repairing=False) == UNREACHABLE
    assert classify([None, None], repairing=True) == UNREACHABLE
    assert classify([], repairing=False) == UNREACHABLE


def test_differing_digests_outrank_an_unreachable_replica() -> None:
    assert classify(["x", "y", None], repairing=False) == DIVERGED


def test_exit_status_in_sync_differs_or_unreachable() -> None:
    assert exit_status({IN_SYNC: 8}) == EXIT_IN_SYNC
    assert exit_status({IN_SYNC: 7, UNREACHABLE: 1}) == EXIT_UNREACHABLE
    assert exit_status({IN_SYNC: 6, UNREACHABLE: 1, DIVERGED: 1}) == EXIT_DIFFERS
    assert exit_status({IN_SYNC: 7, REPAIRING: 1}) == EXIT_DIFFERS


def test_a_quiet_cluster_with_equal_digests_is_all_in_sync() -> None:
    r = ring()
    document = verify_document(r, reports(r), "fp")
    assert [p["state"] for p in document["partitions"]] == [IN_SYNC] * P
    assert document["summary"] == {"partitions": P, "in_sync": P, "repairing": 0, "diverged": 0, "unreachable": 0,
                                   "unreachable_nodes": [], "exit_status": EXIT_IN_SYNC}
    replica = document["partitions"][0]["replicas"][0]
    assert set(replica) >= {"node", "digest", "documents"} and replica["documents"] == 3


def test_one_replica_with_another_digest_and_nothing_moving_is_diverged() -> None:
    r = ring()
    answers = reports(r)
    victim = r.read_owners(5)[1]
    answers[victim].digests[5] = PartitionDigest("other", 2, 0)
    document = verify_document(r, answers, "fp")
    states = {p["partition"]: p["state"] for p in document["partitions"]}
    assert states[5] == DIVERGED and [pid for pid, s in states.items() if s != IN_SYNC] == [5]
    assert document["summary"]["diverged"] == 1 and document["summary"]["exit_status"] == EXIT_DIFFERS


def test_a_dead_replica_makes_its_partitions_unreachable_and_is_named() -> None:
    r = ring()
    answers = reports(r)
    answers["c"] = NodeReport.unreachable("c", "C", "not alive in gossip")
    document = verify_document(r, answers, "fp")
    for partition in document["partitions"]:
        expected = UNREACHABLE if "c" in r.read_owners(partition["partition"]) else IN_SYNC
        assert partition["state"] == expected
    dead = next(rep for p in document["partitions"] for rep in p["replicas"] if rep["id"] == "c")
    assert dead["digest"] is None and dead["error"] == "not alive in gossip"
    assert document["summary"]["unreachable_nodes"] == ["C"] and document["summary"]["exit_status"] == EXIT_UNREACHABLE


def test_a_running_repair_pass_on_a_replica_makes_its_differing_partitions_repairing() -> None:
    r = ring()
    answers = reports(r)
    victim = r.read_owners(2)[0]
    answers[victim].digests[2] = PartitionDigest("other")
    answers[victim].repair = {"running": True}
    assert verify_document(r, answers, "fp")["partitions"][2]["state"] == REPAIRING
    assert repairing_partitions(r, answers, "fp") == {pid for pid in range(P) if victim in r.read_owners(pid)}


def test_hints_pending_for_a_replica_mark_its_partitions_repairing() -> None:
    r = ring()
    answers = reports(r)
    answers["a"].hints = {"b": {"hints": 1, "documents": 4, "bytes": 100}}
    assert repairing_partitions(r, answers, "fp") == {pid for pid in range(P) if "b" in r.read_owners(pid)}
    answers["a"].hints = {"b": {"hints": 0, "documents": 0, "bytes": 0}}
    assert repairing_partitions(r, answers, "fp") == set()


def test_a_joining_node_or_a_partition_held_for_hand_off_is_repairing() -> None:
    joining = ring({"a": RingStatus.NORMAL, "b": RingStatus.NORMAL, "c": RingStatus.JOINING})
    assert repairing_partitions(joining, reports(joining), "fp") == {pid for pid in range(P) if joining.pending(pid)}
    r = ring()
    answers = reports(r)
    not_owned = next(pid for pid in range(P) if "c" not in r.write_owners(pid))
    answers["c"].held.append(not_owned)  # still handing it off
    assert not_owned in repairing_partitions(r, answers, "fp")


def test_a_node_with_another_ring_table_makes_every_partition_repairing() -> None:
    r = ring()
    answers = reports(r)
    answers["b"].ring_fingerprint = "newer"
    assert repairing_partitions(r, answers, "fp") == set(range(P))


def test_node_reports_survive_the_wire() -> None:
    report = NodeReport("a", "A", digests={3: PartitionDigest("r", 5, 1), 4: PartitionDigest("e", None, None, held=False)},
                        held=[3], repair={"running": False, "passes": 2}, hints={"b": {"hints": 1, "documents": 2, "bytes": 3}},
                        ring_fingerprint="fp")
    assert NodeReport.from_wire(report.to_wire()) == report
