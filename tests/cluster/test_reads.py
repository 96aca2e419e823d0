"""cluster/reads.py: replica order, reads at a consistency level with read-repair targets,
per-replica states and scatter-gather.

The peer calls are in-process async functions that answer, fail or record what
they were asked; the ring is a real Ring of 3-4 NORMAL nodes (P=8, N=3).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from meshrag.cluster.reads import NodeHits, ReadUnavailable, ReplicaReader
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable
from meshrag.ring import partition_for
from meshrag.store.types import DocState, Hit, StoredDocument

P = 8


def make_ring(*nodes: str, replicas: int = 3) -> Ring:
    return Ring(RingTable(RingEntry(n, n, "z", RingStatus.NORMAL, 1) for n in nodes), P, replicas)


def reader(local: str, ring: Ring, dead: frozenset[str] = frozenset()) -> ReplicaReader:
    return ReplicaReader(local, lambda: ring, lambda node: node not in dead)


def hit(pid: int, node: str) -> Hit:
    return Hit(f"{node}-{pid}", f"doc-{pid}", 1.0, "text", {}, 1, pid)


def stored(doc_id: str, node: str, version: int = 1, deleted: bool = False) -> StoredDocument:
    return StoredDocument(doc_id, version, node, f"{doc_id} as held by {node}", {}, deleted, (), partition_for(doc_id, P))


def pid_owned_by(ring: Ring, node: str) -> int:
    return next(pid for pid in range(P) if node in ring.read_owners(pid))


# ------------------------------------------------------------------ replica order
def test_this_node_comes_first_then_the_other_owners_in_ring_order() -> None:
    ring = make_ring("a", "b", "c", "d")
    for pid in range(P):
        owners = ring.read_owners(pid)
        expected = ["c"] + [n for n in owners if n != "c"] if "c" in owners else owners
        assert reader("c", ring).replicas_for(pid) == expected


def test_session_replicas_come_before_this_node() -> None:
    ring = make_ring("a", "b", "c", "d")
    pid = pid_owned_by(ring, "a")
    other = next(n for n in ring.read_owners(pid) if n != "a")
    order = reader("a", ring).replicas_for(pid, {pid: [other]})
    assert order[:2] == [other, "a"]
    assert sorted(order) == sorted(ring.read_owners(pid)), "every owner once"


def test_dead_replicas_are_skipped_even_when_the_session_names_them() -> None:
    ring = make_ring("a", "b", "c", "d")
    pid = pid_owned_by(ring, "a")
    dead = next(n for n in ring.read_owners(pid) if n != "a")
    order = reader("a", ring, dead=frozenset({dead})).replicas_for(pid, {pid: [dead]})
    assert dead not in order
    assert order == ["a"] + [n for n in ring.read_owners(pid) if n not in ("a", dead)]


def test_session_names_outside_the_ring_are_ignored() -> None:
    ring = make_ring("a", "b", "c", "d")
    assert reader("a", ring).replicas_for(0, {0: ["stranger"]}) == reader("a", ring).replicas_for(0)


# ------------------------------------------------------------------ get
async def test_get_at_one_fails_over_to_the_next_replica_when_the_first_raises() -> None:
    ring = make_ring("a", "b", "c")
    asked: list[str] = []

    async def get(node: str, doc_id: str) -> StoredDocument | None:
        asked.append(node)
        if node == "a":
            raise ConnectionError("a's store is broken")
        return stored(doc_id, node)

    found = await reader("a", ring).get("x", None, get, "one")
    expected_order = reader("a", ring).replicas_for(partition_for("x", P))
    assert asked == expected_order[:2]
    assert found.doc is not None and found.doc.content_hash == expected_order[1]


async def test_get_at_quorum_returns_the_newest_of_two_replicas_and_names_the_stale_one() -> None:
    ring = make_ring("a", "b", "c")
    versions = {"a": 1, "b": 5, "c": 3}
    asked: list[str] = []

    async def get(node: str, doc_id: str) -> StoredDocument | None:
        asked.append(node)
        return stored(doc_id, node, versions[node])

    found = await reader("a", ring).get("x", None, get, "quorum")
    first_two = reader("a", ring).replicas_for(partition_for("x", P))[:2]
    assert sorted(asked) == sorted(first_two), "quorum of 3 reads exactly 2 replicas"
    newest = max(first_two, key=versions.__getitem__)
    assert found.doc is not None and found.doc.version == versions[newest] and found.holder == newest
    assert found.stale == [n for n in first_two if n != newest]


async def test_a_replica_that_missed_the_write_does_not_hide_it() -> None:
    """The defect: the first replica's "not found" was the answer while two others held it."""
    ring = make_ring("a", "b", "c")

    async def get(node: str, doc_id: str) -> StoredDocument | None:
        return None if node == "a" else stored(doc_id, node, 7)

    for level in ("one", "quorum"):
        found = await reader("a", ring).get("x", None, get, level)
        assert found.doc is not None and found.doc.version == 7, level
        assert "a" in found.stale, "the replica that missed it is repaired"


async def test_a_tombstone_newer_than_a_copy_wins_the_read() -> None:
    ring = make_ring("a", "b", "c")

    async def get(node: str, doc_id: str) -> StoredDocument | None:
        return stored(doc_id, node, 9, deleted=True) if node == "b" else stored(doc_id, node, 4)

    found = await reader("a", ring).get("x", None, get, "all")
    assert found.doc is not None and found.doc.deleted and found.holder == "b"
    assert sorted(found.stale) == ["a", "c"]


async def test_a_document_nobody_holds_is_absent_after_asking_every_replica() -> None:
    ring = make_ring("a", "b", "c")
    asked: list[str] = []

    async def get(node: str, doc_id: str) -> StoredDocument | None:
        asked.append(node)
        return None

    found = await reader("a", ring).get("x", None, get, "quorum")
    assert found.doc is None and found.stale == []
    assert sorted(asked) == ["a", "b", "c"]


async def test_too_few_replicas_answering_is_unavailable_at_the_consistency_asked() -> None:
    ring = make_ring("a", "b", "c", "d")

    async def get(node: str, doc_id: str) -> StoredDocument | None:
        if node != "a":
            raise ConnectionError(node)
        return stored(doc_id, node)

    with pytest.raises(ReadUnavailable) as failure:
        await reader("a", ring).get("x", None, get, "quorum")
    assert failure.value.status == 503 and failure.value.field == "consistency"
    assert "1 of the 2 replicas needed answered" in failure.value.message
    assert (await reader("a", ring).get("x", None, get, "one")).doc is not None


# ------------------------------------------------------------------ states
async def test_states_ask_each_live_write_owner_once_for_the_ids_of_its_partitions() -> None:
    ring = make_ring("a", "b", "c", "d")
    ids = [f"doc{i}" for i in range(24)]
    calls: dict[str, list[list[str]]] = defaultdict(list)

    async def states(node: str, doc_ids: list[str]) -> dict[str, DocState]:
        calls[node].append(doc_ids)
        if node == "c":
            raise ConnectionError("c fails")
        return {doc_id: DocState(1, node, False) for doc_id in doc_ids}

    found = await reader("a", ring, dead=frozenset({"d"})).states_on_replicas(ids, states)
    assert set(calls) == {"a", "b", "c"}, "the dead node is not asked"
    for node, node_calls in calls.items():
        assert len(node_calls) == 1, f"{node} asked more than once"
        assert sorted(node_calls[0]) == sorted(i for i in ids if node in ring.write_owners(partition_for(i, P)))
    for doc_id in ids:
        answered_by = set(ring.write_owners(partition_for(doc_id, P))) - {"c", "d"}
        assert {state.content_hash for state in found.get(doc_id, [])} == answered_by


# ------------------------------------------------------------------ scatter
async def test_scatter_sends_one_call_per_node_and_fails_over_a_failed_nodes_partitions() -> None:
    ring = make_ring("a", "b", "c", "d")
    search_reader = reader("a", ring)
    order = {pid: search_reader.replicas_for(pid) for pid in range(P)}
    failing = next(order[pid][0] for pid in range(P) if order[pid][0] != "a")
    first_round: dict[str, list[int]] = defaultdict(list)
    for pid in range(P):
        first_round[order[pid][0]].append(pid)
    calls: list[tuple[str, list[int]]] = []

    async def search(node: str, pids: list[int]) -> NodeHits:
        calls.append((node, sorted(pids)))
        if node == failing:
            raise ConnectionError(f"{node} fails")
        return NodeHits({"dense": [hit(pid, node) for pid in pids], "bm25": [hit(pid, node) for pid in pids]})

    gathered = await search_reader.scatter(None, search)
    first_calls = len(first_round)
    assert dict(calls[:first_calls]) == first_round, "one call per node, each for the partitions it is first for"
    second_round: dict[str, list[int]] = defaultdict(list)
    for pid in first_round[failing]:
        second_round[order[pid][1]].append(pid)
    assert dict(calls[first_calls:]) == second_round
    assert gathered.coverage == 1.0 and gathered.missing == [] and gathered.answered == list(range(P))
    for kind in ("dense", "bm25"):
        assert sorted(h.partition for h in gathered.lists[kind]) == list(range(P))
    assert not [h for h in gathered.lists["dense"] if h.chunk_id.startswith(f"{failing}-")]
    assert failing not in gathered.nodes


async def test_partitions_with_no_replica_left_are_reported_missing() -> None:
    ring = make_ring("a", "b", "c", replicas=1)

    async def search(node: str, pids: list[int]) -> NodeHits:
        if node == "c":
            raise ConnectionError("c fails")
        return NodeHits({"dense": [hit(pid, node) for pid in pids]})

    gathered = await reader("a", ring, dead=frozenset({"b"})).scatter(None, search)
    lost = sorted(pid for pid in range(P) if ring.read_owners(pid)[0] in ("b", "c"))
    assert lost and len(lost) < P, "the ring must spread partitions over a, b and c"
    assert gathered.missing == lost
    assert gathered.answered == sorted(set(range(P)) - set(lost))
    assert gathered.coverage == round((P - len(lost)) / P, 4) < 1.0
    assert sorted(h.partition for h in gathered.lists["dense"]) == gathered.answered


async def test_scatter_over_chosen_partitions_asks_only_for_those() -> None:
    ring = make_ring("a", "b", "c", "d")
    asked: list[int] = []

    async def search(node: str, pids: list[int]) -> NodeHits:
        asked.extend(pids)
        return NodeHits({"dense": [hit(pid, node) for pid in pids]})

    gathered = await reader("a", ring).scatter(None, search, partitions=[1, 5])
    assert sorted(asked) == [1, 5]
    assert gathered.answered == [1, 5] and gathered.coverage == 1.0


async def test_gathered_nodes_lists_every_partition_each_node_answered() -> None:
    ring = make_ring("a", "b", "c", "d")
    search_reader = reader("outside", ring)  # not an owner: ring order decides, no local preference
    order = {pid: search_reader.replicas_for(pid) for pid in range(P)}
    firsts = {order[pid][0] for pid in range(P)}
    failing = next(
        node for node in sorted(firsts)
        if {order[pid][1] for pid in range(P) if order[pid][0] == node} & (firsts - {node})
    )
    answered: dict[str, set[int]] = defaultdict(set)

    async def search(node: str, pids: list[int]) -> NodeHits:
        if node == failing:
            raise ConnectionError(f"{node} fails")
        answered[node].update(pids)
        return NodeHits({"dense": [hit(pid, node) for pid in pids]})

    gathered = await search_reader.scatter(None, search)
    assert {node: set(pids) for node, pids in gathered.nodes.items()} == dict(answered)


async def test_a_partition_the_node_does_not_hold_is_asked_of_its_next_replica() -> None:
    """The defect: an empty answer from a node without the partition counted as coverage."""
    ring = make_ring("a", "b", "c")
    search_reader = reader("a", ring)
    order = {pid: search_reader.replicas_for(pid) for pid in range(P)}
    unheld_by_a = [pid for pid in range(P) if order[pid][0] == "a"][:2]
    assert unheld_by_a, "a must be first for some partitions"
    calls: list[tuple[str, list[int]]] = []

    async def search(node: str, pids: list[int]) -> NodeHits:
        calls.append((node, sorted(pids)))
        held = [pid for pid in pids if not (node == "a" and pid in unheld_by_a)]
        return NodeHits({"dense": [hit(pid, node) for pid in held]}, sorted(set(pids) - set(held)))

    gathered = await search_reader.scatter(None, search)
    assert gathered.coverage == 1.0 and gathered.answered == list(range(P))
    for pid in unheld_by_a:
        assert pid not in gathered.nodes["a"]
        assert any(pid in pids for node, pids in calls if node == order[pid][1]), "its next replica was asked"


async def test_a_partition_no_replica_holds_is_missing_not_covered() -> None:
    ring = make_ring("a", "b", "c")

    async def search(node: str, pids: list[int]) -> NodeHits:
        return NodeHits({"dense": [hit(pid, node) for pid in pids if pid != 3]}, [3] if 3 in pids else [])

    gathered = await reader("a", ring).scatter(None, search)
    assert gathered.missing == [3] and 3 not in gathered.answered and gathered.coverage < 1.0
