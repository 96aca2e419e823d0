"""cluster/reads.py: replica order, failover, per-replica states and scatter-gather."""

from __future__ import annotations

import pytest

from meshrag.cluster.reads import NoReplica, ReplicaReader
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable
from meshrag.store.engine import partition_for
from meshrag.store.types import DocState, Hit

P = 8


def make_ring(*nodes: str, replicas: int = 3) -> Ring:
    return Ring(RingTable(RingEntry(n, n, "z", RingStatus.NORMAL, 1) for n in nodes), P, replicas)


def reader(local: str, ring: Ring, dead: set[str] = frozenset()) -> ReplicaReader:  # type: ignore[assignment]
    return ReplicaReader(local, lambda: ring, lambda node: node not in dead)


def hit(pid: int, node: str) -> Hit:
    return Hit(f"{node}-{pid}", f"doc-{pid}", 1.0, "text", {}, 1, pid)


def test_this_node_comes_first_then_ring_order() -> None:
    ring = make_ring("a", "b", "c", "d")
    for pid in range(P):
        owners = ring.read_owners(pid)
        order = reader("c", ring).replicas_for(pid)
        assert order == (["c"] + [n for n in owners if n != "c"] if "c" in owners else owners)


def test_session_replicas_come_first_and_dead_ones_are_skipped() -> None:
    ring = make_ring("a", "b", "c", "d")
    pid = 0
    owners = ring.read_owners(pid)
    order = reader("a", ring, dead={owners[0]}).replicas_for(pid, {pid: [owners[-1]]})
    assert order[0] == owners[-1]
    assert owners[0] not in order


async def test_get_fails_over_to_the_next_replica() -> None:
    ring = make_ring("a", "b", "c")
    asked: list[str] = []

    async def get(node: str, doc_id: str) -> object:
        asked.append(node)
        if node == "a":
            raise ConnectionError("a is down")
        return f"{doc_id} from {node}"

    assert await reader("a", ring).get("x", None, get) == f"x from {asked[1]}"  # type: ignore[arg-type]
    assert asked[0] == "a" and len(asked) == 2


async def test_no_replica_answering_is_no_replica() -> None:
    async def get(node: str, doc_id: str) -> object:
        raise ConnectionError(node)

    with pytest.raises(NoReplica) as failure:
        await reader("a", make_ring("a", "b", "c")).get("x", None, get)  # type: ignore[arg-type]
    assert sorted(failure.value.tried) == ["a", "b", "c"]


async def test_states_come_from_every_live_owner() -> None:
    ring = make_ring("a", "b", "c", "d")
    ids = [f"doc{i}" for i in range(12)]

    async def states(node: str, doc_ids: list[str]) -> dict[str, DocState]:
        if node == "d":
            raise ConnectionError("d is down")
        return {doc_id: DocState(1, node, False) for doc_id in doc_ids}

    found = await reader("a", ring).states_on_replicas(ids, states)
    for doc_id in ids:
        owners = set(ring.write_owners(partition_for(doc_id, P))) - {"d"}
        assert {state.content_hash for state in found[doc_id]} == owners


async def test_scatter_asks_each_node_once_and_fails_over_its_partitions() -> None:
    ring = make_ring("a", "b", "c", "d")
    calls: list[tuple[str, list[int]]] = []

    async def search(node: str, pids: list[int]) -> dict[str, list[Hit]]:
        calls.append((node, pids))
        if node == "b":
            raise ConnectionError("b fails")
        return {"dense": [hit(pid, node) for pid in pids]}

    gathered = await reader("a", ring).scatter(None, search)
    first_round = calls[: len({node for node, _ in calls})]
    assert len({node for node, _ in first_round}) == len(first_round), "one request per node per round"
    assert gathered.coverage == 1.0 and gathered.missing == []
    assert sorted(h.partition for h in gathered.lists["dense"]) == list(range(P))
    assert "b" not in gathered.nodes


async def test_partitions_with_no_live_replica_are_reported_missing() -> None:
    ring = make_ring("a", "b", "c", replicas=1)

    async def search(node: str, pids: list[int]) -> dict[str, list[Hit]]:
        if node == "c":
            raise ConnectionError("c fails")
        return {"dense": [hit(pid, node) for pid in pids]}

    gathered = await reader("a", ring, dead={"b"}).scatter(None, search)
    lost = sorted(pid for pid in range(P) if ring.read_owners(pid)[0] in ("b", "c"))
    assert lost and gathered.missing == lost
    assert gathered.coverage == round((P - len(lost)) / P, 4)
