"""cluster/writes.py: W of N acks, hints, unknown outcomes, owners, with real engines.

Each fake node is a real StorageEngine in tmp_path; the "network" is an async
function that writes into the target node's engine (after a delay, or failing,
or hanging), as httpx's MockTransport stands in for a server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import pytest

from meshrag.cluster.writes import ReplicatedWriter, WriteOutcomeUnknown, required_acks
from meshrag.errors import ValidationError
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable
from meshrag.store.engine import StorageEngine, partition_for
from meshrag.store.types import DocumentWrite
from tests.store.conftest import DIM, make_doc

P = 8


class FakeCluster:
    def __init__(self, root: Path, nodes: dict[str, RingStatus]) -> None:
        self.ring = Ring(RingTable(RingEntry(n, n, "z", s, 1) for n, s in nodes.items()), P, 3)
        self.engines = {n: StorageEngine(root / n, P, DIM) for n in nodes}
        for engine in self.engines.values():
            engine.open()
        self.alive = set(nodes)
        self.delay: dict[str, float] = {}
        self.failing: set[str] = set()
        self.called: list[str] = []
        self.hints: list[tuple[str, list[str]]] = []

    def writer(self, local: str = "a") -> ReplicatedWriter:
        async def apply_local(docs: list[DocumentWrite]) -> object:
            return self.engines[local].upsert(docs)

        async def send(node: str, docs: list[DocumentWrite]) -> object:
            self.called.append(node)
            await asyncio.sleep(self.delay.get(node, 0))
            if node in self.failing:
                raise ConnectionError(f"{node} refused")
            return self.engines[node].upsert(docs)

        async def hint(node: str, docs: list[DocumentWrite]) -> None:
            self.hints.append((node, [d.doc_id for d in docs]))

        return ReplicatedWriter(local, lambda: self.ring, self.alive.__contains__, apply_local, send, hint)

    def holders(self, doc_id: str) -> set[str]:
        return {n for n, e in self.engines.items() if e.get(doc_id) is not None}


@pytest.fixture
def make_cluster(tmp_path: Path) -> Callable[..., FakeCluster]:
    return lambda **nodes: FakeCluster(tmp_path, nodes or {n: RingStatus.NORMAL for n in "abc"})


@pytest.mark.parametrize(("level", "replicas", "needed"), [("one", 3, 1), ("quorum", 3, 2), ("quorum", 5, 3), ("all", 3, 3), ("quorum", 1, 1)])
def test_required_acks(level: str, replicas: int, needed: int) -> None:
    assert required_acks(level, replicas) == needed


def test_an_unknown_level_names_the_field() -> None:
    with pytest.raises(ValidationError) as failure:
        required_acks("most", 3)
    assert failure.value.field == "consistency"


async def test_quorum_answers_after_two_acks_and_the_slow_replica_still_gets_it(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.delay["c"] = 0.5
    writer = cluster.writer()
    started = asyncio.get_running_loop().time()
    outcome = await writer.write([make_doc("d1")], "quorum")
    assert asyncio.get_running_loop().time() - started < 0.4
    [acked] = outcome.acked.values()
    assert sorted(acked) == ["a", "b"]
    assert cluster.holders("d1") == {"a", "b"}
    await writer.drain()
    assert cluster.holders("d1") == {"a", "b", "c"}


async def test_one_answers_with_a_single_ack(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.delay.update(b=0.3, c=0.3)
    writer = cluster.writer()
    outcome = await writer.write([make_doc("d1")], "one")
    assert list(outcome.acked.values()) == [["a"]]
    await writer.drain()


async def test_each_document_goes_to_exactly_its_partitions_owners(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster(a=RingStatus.NORMAL, b=RingStatus.NORMAL, c=RingStatus.NORMAL, d=RingStatus.NORMAL, e=RingStatus.NORMAL)
    writer = cluster.writer()
    docs = [make_doc(f"d{i}") for i in range(20)]
    outcome = await writer.write(docs, "all")
    for doc in docs:
        pid = partition_for(doc.doc_id, P)
        assert cluster.holders(doc.doc_id) == set(cluster.ring.write_owners(pid))
        assert sorted(outcome.acked[pid]) == sorted(cluster.ring.write_owners(pid))
    assert len(cluster.called) == len(set(cluster.called)) <= 4, "one request per node"


async def test_a_dead_replica_is_hinted_not_called(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.alive.discard("c")
    writer = cluster.writer()
    await writer.write([make_doc("d1"), make_doc("d2")], "quorum")
    await writer.drain()
    assert "c" not in cluster.called
    assert cluster.hints == [("c", ["d1", "d2"])]


async def test_a_failing_replica_is_hinted(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.failing.add("b")
    writer = cluster.writer()
    await writer.write([make_doc("d1")], "quorum")
    await writer.drain()
    assert cluster.hints == [("b", ["d1"])]
    assert cluster.holders("d1") == {"a", "c"}


async def test_all_with_a_dead_replica_is_an_unknown_outcome_naming_who_took_it(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.alive.discard("c")
    with pytest.raises(WriteOutcomeUnknown) as failure:
        await cluster.writer().write([make_doc("d1")], "all")
    pid = partition_for("d1", P)
    assert sorted(failure.value.acked[pid]) == ["a", "b"]
    assert failure.value.status == 503 and failure.value.code == "write_outcome_unknown"
    assert "2/3 acks" in failure.value.message and "took it:" in failure.value.message
    assert cluster.holders("d1") == {"a", "b"}, "the replicas that took it keep it"
    assert cluster.hints == [("c", ["d1"])]


async def test_a_joining_owner_receives_writes_and_w_counts_current_owners(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster(a=RingStatus.NORMAL, b=RingStatus.NORMAL, c=RingStatus.NORMAL, d=RingStatus.JOINING)
    docs = [make_doc(f"d{i}") for i in range(30)]
    moving = [d for d in docs if "d" in cluster.ring.pending(partition_for(d.doc_id, P))]
    assert moving
    cluster.alive.discard("d")
    writer = cluster.writer()
    await writer.write(docs, "all")  # ALL of the 3 current owners: the joining one is hinted
    await writer.drain()
    assert {doc_id for node, ids in cluster.hints if node == "d" for doc_id in ids} == {d.doc_id for d in moving}
