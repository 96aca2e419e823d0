"""cluster/reads.py: replica order, reads at a consistency level with read-repair targets,
per-replica states (search's scatter-gather: test_scatter.py, test_search.py).

The peer calls are in-process async functions that answer, fail or record what
they were asked; the ring is a real Ring of 3-4 NORMAL nodes (P=8, N=3).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from meshrag.cluster.reads import ReadUnavailable, ReplicaReader
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable
from meshrag.ring import partition_for
from meshrag.store.types import DocState, Hit, StoredDocument
from tests.virtual_loop import run_virtual

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


def frozen_and_answering(frozen: set[str], failing: set[str] = frozenset(), answer_s: float = 0.002, peer_timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    """A states call: frozen nodes answer nothing until the peer timeout, failing ones raise at once."""

    async def states(node: str, doc_ids: list[str]) -> dict[str, DocState]:
        if node in failing:
            raise ConnectionError(f"{node} refused")
        if node in frozen:
            await asyncio.sleep(peer_timeout_s)
            raise TimeoutError(f"{node}: no answer within {peer_timeout_s} s")
        await asyncio.sleep(answer_s)
        return {doc_id: DocState(1, node, False) for doc_id in doc_ids}

    return states


def test_states_go_on_without_a_frozen_owner_once_a_majority_answered_and_the_grace_passed() -> None:
    ring = make_ring("a", "b", "c")
    ids = [f"doc{i}" for i in range(12)]
    found, elapsed = run_virtual(reader("a", ring).states_on_replicas, ids, frozen_and_answering({"c"}), 0.1)
    assert elapsed == pytest.approx(0.002 + 0.1)  # not the 5 s peer timeout
    assert all({state.content_hash for state in found[doc_id]} == {"a", "b"} for doc_id in ids)


def test_states_wait_for_nobody_when_every_owner_answers() -> None:
    ring = make_ring("a", "b", "c")
    found, elapsed = run_virtual(reader("a", ring).states_on_replicas, ["x", "y"], frozen_and_answering(set()), 0.1)
    assert elapsed == pytest.approx(0.002)
    assert {state.content_hash for state in found["x"]} == {"a", "b", "c"}


def test_states_wait_for_a_frozen_owner_when_without_it_no_majority_answered() -> None:
    ring = make_ring("a", "b", "c")
    found, elapsed = run_virtual(reader("a", ring).states_on_replicas, ["x"], frozen_and_answering({"c"}, failing={"b"}), 0.1)
    assert elapsed == pytest.approx(5.0)  # one answer of three is no majority: the old wait
    assert {state.content_hash for state in found["x"]} == {"a"}


def frozen_get(frozen: set[str], asked: list[str], answer_s: float = 0.002, peer_timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    async def get(node: str, doc_id: str) -> StoredDocument | None:
        asked.append(node)
        if node in frozen:
            await asyncio.sleep(peer_timeout_s)
            raise TimeoutError(f"{node}: no answer within {peer_timeout_s} s")
        await asyncio.sleep(answer_s)
        return stored(doc_id, node)

    return get


def test_a_quorum_read_asks_the_next_replica_when_one_of_its_first_two_is_frozen() -> None:
    ring = make_ring("a", "b", "c")
    order = reader("a", ring).replicas_for(partition_for("x", P))
    asked: list[str] = []
    found, elapsed = run_virtual(reader("a", ring).get, "x", None, frozen_get({order[1]}, asked), "quorum", 0.25)
    assert asked == order  # the frozen second, then the third after the hedge delay
    assert elapsed == pytest.approx(0.25 + 0.002)  # not the 5 s peer timeout
    assert found.doc is not None and found.holder in {order[0], order[2]}


def test_a_healthy_quorum_read_asks_two_replicas_and_never_hedges() -> None:
    ring = make_ring("a", "b", "c")
    asked: list[str] = []
    found, elapsed = run_virtual(reader("a", ring).get, "x", None, frozen_get(set(), asked), "quorum", 0.25)
    assert len(asked) == 2 and elapsed == pytest.approx(0.002)
    assert found.doc is not None


# ------------------------------------------------------------------ sessions
async def test_a_session_read_never_falls_back_to_replicas_that_may_not_hold_its_writes() -> None:
    ring = make_ring("a", "b", "c")
    pid = partition_for("x", P)
    holder = next(n for n in ring.read_owners(pid) if n != "a")

    async def get(node: str, doc_id: str) -> StoredDocument | None:
        return stored(doc_id, node)

    with pytest.raises(ReadUnavailable) as failure:  # gossip holds the session's only replica dead
        await reader("a", ring, dead=frozenset({holder})).get("x", {pid: [holder]}, get, "one")
    assert failure.value.status == 503 and failure.value.field == "session"
    found = await reader("a", ring).get("x", {pid: [holder]}, get, "one")
    assert found.holder == holder


def test_a_hedge_that_answers_for_a_frozen_session_replica_is_not_taken_for_the_session() -> None:
    ring = make_ring("a", "b", "c")
    pid = partition_for("x", P)
    holder = next(n for n in ring.read_owners(pid) if n != "a")
    asked: list[str] = []
    with pytest.raises(ReadUnavailable, match="holding this session's writes"):
        run_virtual(reader("a", ring).get, "x", {pid: [holder]}, frozen_get({holder}, asked), "one", 0.25)
    assert asked[:2] == [holder, "a"]  # the hedge answered, and was not enough
