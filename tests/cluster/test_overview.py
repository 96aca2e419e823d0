"""cluster/overview.py: ring balance, replication health, hints and transfer ETAs of `meshrag status` (pure)."""

from __future__ import annotations

from meshrag.cluster.node_report import NodeReport, PartitionDigest
from meshrag.cluster.overview import balanced, eta_s, pending_hints, replication, ring_balance, transfers
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable

P = 32


def ring(statuses: dict[str, RingStatus], replicas: int = 3, partitions: int = P) -> Ring:
    return Ring(RingTable(RingEntry(n, n.upper(), f"z{i}", s, 1) for i, (n, s) in enumerate(statuses.items())), partitions, replicas)


def normal(*names: str) -> dict[str, RingStatus]:
    return {n: RingStatus.NORMAL for n in names}


def test_copies_are_counted_from_preference_lists_and_sum_to_partitions_times_replicas() -> None:
    r = ring(normal("a", "b", "c", "d"))
    balance = ring_balance(r)
    by_node = {n["node"]: n for n in balance["nodes"]}
    for name, node_id in (("A", "a"), ("B", "b"), ("C", "c"), ("D", "d")):
        assert by_node[name]["copies"] == sum(node_id in r.read_owners(pid) for pid in range(P))
    assert balance["copies"] == balance["wanted_copies"] == P * 3
    assert balance["even_share"] == 24.0 and all(n["target"] == 24.0 for n in balance["nodes"])
    assert all(n["ratio"] == round(n["copies"] / 24, 3) for n in balance["nodes"])


def test_fewer_nodes_than_replicas_share_every_partition() -> None:
    balance = ring_balance(ring(normal("a", "b"), replicas=3))
    assert balance["even_share"] == P and [n["copies"] for n in balance["nodes"]] == [P, P]
    assert [n["ratio"] for n in balance["nodes"]] == [1.0, 1.0]


def test_a_joining_node_has_its_share_as_target_and_no_copies_yet_and_a_leaving_one_none() -> None:
    r = ring({"a": RingStatus.NORMAL, "b": RingStatus.NORMAL, "c": RingStatus.NORMAL, "d": RingStatus.JOINING,
              "e": RingStatus.LEAVING})
    nodes = {n["node"]: n for n in ring_balance(r)["nodes"]}
    assert nodes["D"]["target"] == 24.0 and nodes["D"]["copies"] == 0 and nodes["D"]["ratio"] == 0.0
    assert nodes["D"]["planned"] > 0  # where the target placement puts it
    assert nodes["E"]["target"] == 0.0 and nodes["E"]["ratio"] is None and nodes["E"]["planned"] == 0


def test_removed_nodes_are_left_out() -> None:
    r = ring({"a": RingStatus.NORMAL, "b": RingStatus.NORMAL, "gone": RingStatus.REMOVED}, replicas=2)
    assert [n["node"] for n in ring_balance(r)["nodes"]] == ["A", "B"]


def test_balanced_is_within_the_green_band() -> None:
    assert balanced(1.0) and balanced(0.8) and balanced(1.25)
    assert not balanced(0.79) and not balanced(1.3) and not balanced(None)


def _reports(r: Ring, root: str = "x") -> dict[str, NodeReport]:
    out = {n: NodeReport(n, n.upper()) for n in r.entries}
    for pid in range(r.partitions):
        for node in r.read_owners(pid):
            out[node].digests[pid] = PartitionDigest(root)
    return out


def test_replication_is_healthy_when_every_live_owner_agrees() -> None:
    r = ring(normal("a", "b", "c", "d"))
    health = replication(r, lambda n: True, _reports(r))
    assert health["wanted"] == 3 and health["healthy"] == P and health["under_replicated"] == []


def test_a_dead_owner_or_a_disagreeing_one_leaves_its_partitions_under_replicated() -> None:
    r = ring(normal("a", "b", "c", "d"))
    reports = _reports(r)
    health = replication(r, lambda n: n != "d", reports)
    expected = [pid for pid in range(P) if "d" in r.read_owners(pid)]
    assert [u["partition"] for u in health["under_replicated"]] == expected
    assert all(u["in_sync"] == 2 and u["live"] == 2 for u in health["under_replicated"])
    pid = next(p for p in range(P) if "d" not in r.read_owners(p))
    reports[r.read_owners(pid)[0]].digests[pid] = PartitionDigest("other")
    health = replication(r, lambda n: n != "d", reports)
    assert next(u for u in health["under_replicated"] if u["partition"] == pid)["in_sync"] == 2


def test_hints_are_summed_per_target_with_who_holds_them() -> None:
    reports = {"a": NodeReport("a", "A", hints={"c": {"hints": 2, "documents": 10, "bytes": 100}}),
               "b": NodeReport("b", "B", hints={"c": {"hints": 1, "documents": 5, "bytes": 50}}),
               "x": NodeReport.unreachable("x", "X", "timeout")}
    assert pending_hints(reports, str.upper) == {"C": {"id": "c", "hints": 3, "documents": 15, "bytes": 150, "from": {"A": 10, "B": 5}}}


def test_eta_is_what_is_left_at_the_rate_so_far_or_unknown() -> None:
    assert eta_s(done=4, total=12, elapsed_s=8.0) == 16.0  # 0.5 partitions/s, 8 left
    assert eta_s(done=0, total=12, elapsed_s=8.0) is None  # no rate yet
    assert eta_s(done=3, total=12, elapsed_s=0.0) is None
    assert eta_s(done=12, total=12, elapsed_s=5.0) == 0.0


def test_transfers_give_a_running_pass_a_rate_and_an_eta_and_mark_silent_nodes() -> None:
    running = NodeReport("a", "A", repair={"running": True, "reason": "triggered", "partitions_done": 5, "partitions_total": 15,
                                           "elapsed_s": 10.0, "docs_in": 40, "bytes_in": 1000})
    idle = NodeReport("b", "B", repair={"running": False, "partitions_done": 15, "partitions_total": 15, "elapsed_s": 0})
    rows = {t["node"]: t for t in transfers({"a": running, "b": idle, "c": NodeReport.unreachable("c", "C", "timeout")})}
    assert rows["A"]["rate_per_s"] == 0.5 and rows["A"]["eta_s"] == 20.0 and rows["A"]["docs_in"] == 40
    assert rows["B"]["eta_s"] is None and rows["B"]["rate_per_s"] is None
    assert rows["C"] == {"node": "C", "id": "c", "reachable": False, "error": "timeout"}
