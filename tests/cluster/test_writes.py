"""cluster/writes.py: W of N acks, hints, unknown outcomes and write owners, with real engines.

Each fake node is a real StorageEngine in tmp_path; the "network" is an async
function that writes into the target node's engine, after a delay, failing, or
hung on a future the test holds (as httpx's MockTransport stands in for a server).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import pytest

from meshrag.cluster.writes import NotOwnerReply, Refused, ReplicatedWriter, WriteOutcome, WriteOutcomeUnknown, required_acks
from meshrag.errors import ValidationError
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable
from meshrag.ring import partition_for
from meshrag.store.engine import StorageEngine
from meshrag.store.types import DocumentWrite
from tests.store.conftest import DIM, make_doc

P = 8
N = 3
NORMAL = RingStatus.NORMAL


class FakeCluster:
    """Real engines per node id; ``send`` is the transport, ``hints`` the hint store."""

    def __init__(self, root: Path, nodes: dict[str, RingStatus]) -> None:
        self.ring = Ring(RingTable(RingEntry(n, n, "z", s, 1) for n, s in nodes.items()), P, N)
        self.engines = {n: StorageEngine(root / n, P, DIM) for n in nodes}
        for engine in self.engines.values():
            engine.open()
        self.alive = set(nodes)
        self.delay: dict[str, float] = {}
        self.failing: set[str] = set()
        self.held: dict[str, asyncio.Future[None]] = {}
        self.requests: list[tuple[str, list[str]]] = []  # (node, doc ids) per remote call
        self.hints: list[tuple[str, list[str]]] = []
        self.hint_error: Exception | None = None
        self.refusing: dict[str, Exception] = {}  # node -> what its apply raises (not-owner, refused)
        self.ring_refreshes: list[str] = []
        self.newer_ring: Ring | None = None  # what a refresh adopts

    def hold(self, node: str) -> asyncio.Future[None]:
        """Hang calls to ``node`` until the test resolves the future (an exception = a timeout)."""
        self.held[node] = asyncio.get_running_loop().create_future()
        return self.held[node]

    def writer(self, local: str = "a") -> ReplicatedWriter:
        async def apply_local(docs: list[DocumentWrite]) -> object:
            return self.engines[local].upsert(docs)

        async def send(node: str, docs: list[DocumentWrite]) -> object:
            self.requests.append((node, [d.doc_id for d in docs]))
            if node in self.held:
                await self.held[node]
            await asyncio.sleep(self.delay.get(node, 0))
            if node in self.failing:
                raise ConnectionError(f"{node} refused")
            if node in self.refusing:
                raise self.refusing[node]
            return self.engines[node].upsert(docs)

        async def refresh_ring(node: str) -> None:
            self.ring_refreshes.append(node)
            if self.newer_ring is not None:
                self.ring = self.newer_ring

        async def store_hint(node: str, docs: list[DocumentWrite]) -> None:
            if self.hint_error is not None:
                raise self.hint_error
            self.hints.append((node, [d.doc_id for d in docs]))

        return ReplicatedWriter(local, lambda: self.ring, self.alive.__contains__, apply_local, send, store_hint,
                                refresh_ring=refresh_ring)

    def holders(self, doc_id: str) -> set[str]:
        return {n for n, engine in self.engines.items() if engine.get(doc_id) is not None}

    def owners_of(self, doc_id: str) -> list[str]:
        return self.ring.write_owners(partition_for(doc_id, P))

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., FakeCluster]]:
    made: list[FakeCluster] = []

    def make(**nodes: RingStatus) -> FakeCluster:
        made.append(FakeCluster(tmp_path, nodes or {n: NORMAL for n in "abc"}))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()


def sorted_acks(outcome: WriteOutcome | WriteOutcomeUnknown) -> dict[int, list[str]]:
    return {pid: sorted(nodes) for pid, nodes in outcome.acked.items()}


def docs_named(count: int) -> list[DocumentWrite]:
    return [make_doc(f"d{i}") for i in range(count)]


# ------------------------------------------------------------------ required_acks
@pytest.mark.parametrize(
    ("level", "replicas", "needed"),
    [("one", 3, 1), ("quorum", 3, 2), ("quorum", 4, 3), ("quorum", 1, 1), ("all", 3, 3), ("all", 4, 4)],
)
def test_required_acks_for_each_level(level: str, replicas: int, needed: int) -> None:
    assert required_acks(level, replicas) == needed


def test_an_unknown_level_is_a_validation_error_on_the_consistency_field() -> None:
    with pytest.raises(ValidationError) as failure:
        required_acks("most", 3)
    assert failure.value.field == "consistency"


# ------------------------------------------------------------------ acknowledgements
async def test_quorum_answers_after_two_acks_and_the_slow_replica_still_gets_the_write(
    make_cluster: Callable[..., FakeCluster],
) -> None:
    cluster = make_cluster()
    slow_c = cluster.hold("c")
    writer = cluster.writer()
    outcome = await asyncio.wait_for(writer.write([make_doc("d1")], "quorum"), timeout=5)
    assert sorted_acks(outcome) == {partition_for("d1", P): ["a", "b"]}
    assert cluster.holders("d1") == {"a", "b"}, "c has not answered yet"
    slow_c.set_result(None)
    await writer.drain()
    assert cluster.holders("d1") == {"a", "b", "c"}
    assert cluster.hints == []


async def test_one_acknowledges_with_a_single_ack(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.delay.update(b=0.05, c=0.05)
    writer = cluster.writer()
    outcome = await writer.write([make_doc("d1")], "one")
    assert sorted_acks(outcome) == {partition_for("d1", P): ["a"]}
    await writer.drain()
    assert cluster.holders("d1") == {"a", "b", "c"}


async def test_acked_lists_the_acknowledging_replicas_of_each_partition(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster(a=NORMAL, b=NORMAL, c=NORMAL, d=NORMAL)
    slow_d = cluster.hold("d")
    docs = docs_named(40)
    writer = cluster.writer()
    outcome = await asyncio.wait_for(writer.write(docs, "quorum"), timeout=5)
    expected: dict[int, list[str]] = {}
    for doc in docs:
        pid = partition_for(doc.doc_id, P)
        expected[pid] = sorted(set(cluster.ring.write_owners(pid)) - {"d"})
    assert sorted_acks(outcome) == expected
    slow_d.set_result(None)
    await writer.drain()


async def test_each_document_goes_to_exactly_its_partitions_write_owners(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster(a=NORMAL, b=NORMAL, c=NORMAL, d=NORMAL)
    docs = docs_named(40)
    writer = cluster.writer()
    await writer.write(docs, "all")
    await writer.drain()
    for doc in docs:
        assert cluster.holders(doc.doc_id) == set(cluster.owners_of(doc.doc_id)), doc.doc_id
    nodes_called = [node for node, _ in cluster.requests]
    assert sorted(nodes_called) == sorted(set(nodes_called)), "one request per node"
    for node, ids in cluster.requests:
        assert sorted(ids) == sorted(d.doc_id for d in docs if node in cluster.owners_of(d.doc_id))


# ------------------------------------------------------------------ hints
async def test_a_dead_replica_is_hinted_not_called(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.alive.discard("c")
    writer = cluster.writer()
    outcome = await writer.write([make_doc("d1"), make_doc("d2")], "quorum")
    await writer.drain()
    assert "c" not in [node for node, _ in cluster.requests]
    assert cluster.hints == [("c", ["d1", "d2"])]
    assert "c" not in {node for nodes in outcome.acked.values() for node in nodes}
    assert cluster.holders("d1") == {"a", "b"}


async def test_a_failing_replica_is_hinted(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.failing.add("b")
    writer = cluster.writer()
    await writer.write([make_doc("d1")], "quorum")
    await writer.drain()
    assert ("b", ["d1"]) in cluster.requests
    assert cluster.hints == [("b", ["d1"])]
    assert cluster.holders("d1") == {"a", "c"}


async def test_a_hung_replica_does_not_delay_the_answer_and_is_hinted_when_its_call_times_out(
    make_cluster: Callable[..., FakeCluster],
) -> None:
    cluster = make_cluster()
    hung_c = cluster.hold("c")
    writer = cluster.writer()
    outcome = await asyncio.wait_for(writer.write([make_doc("d1")], "quorum"), timeout=5)
    assert sorted_acks(outcome) == {partition_for("d1", P): ["a", "b"]}
    assert cluster.hints == []
    hung_c.set_exception(TimeoutError("no answer within 10 s"))  # what the transport's timeout does
    await writer.drain()
    assert cluster.hints == [("c", ["d1"])]


async def test_a_failing_hint_store_does_not_turn_a_quorum_write_into_an_unknown_outcome(
    make_cluster: Callable[..., FakeCluster],
) -> None:
    cluster = make_cluster()
    cluster.alive.discard("c")
    cluster.hint_error = OSError("disk full")
    cluster.delay["b"] = 0.05  # b acknowledges, a little after c's hint failed
    writer = cluster.writer()
    try:
        outcome = await writer.write([make_doc("d1")], "quorum")
    finally:
        await writer.drain()
    assert sorted_acks(outcome) == {partition_for("d1", P): ["a", "b"]}


# ------------------------------------------------------------------ unknown outcomes
async def test_all_with_a_dead_replica_is_an_unknown_outcome_naming_who_took_it(
    make_cluster: Callable[..., FakeCluster],
) -> None:
    cluster = make_cluster()
    cluster.alive.discard("c")
    writer = cluster.writer()
    with pytest.raises(WriteOutcomeUnknown) as failure:
        await writer.write([make_doc("d1")], "all")
    await writer.drain()
    pid = partition_for("d1", P)
    assert sorted_acks(failure.value) == {pid: ["a", "b"]}
    assert failure.value.status == 503 and failure.value.code == "write_outcome_unknown"
    took = re.search(rf"partition {pid}: 2/3 acks \(took it: ([^)]*)\)", failure.value.message)
    assert took is not None, failure.value.message
    assert set(took.group(1).split(", ")) == {"a", "b"}
    assert cluster.holders("d1") == {"a", "b"}, "the replicas that took it keep it"
    assert cluster.hints == [("c", ["d1"])]


# ------------------------------------------------------------------ ring changes
async def test_a_joining_node_also_receives_the_writes_of_the_partitions_it_will_own(
    make_cluster: Callable[..., FakeCluster],
) -> None:
    cluster = make_cluster(a=NORMAL, b=NORMAL, c=NORMAL, d=RingStatus.JOINING)
    docs = docs_named(40)
    moving = {d.doc_id for d in docs if "d" in cluster.ring.pending(partition_for(d.doc_id, P))}
    assert moving, "some partitions must be moving to d"
    writer = cluster.writer()
    await writer.write(docs, "quorum")
    await writer.drain()
    assert {d.doc_id for d in docs if "d" in cluster.holders(d.doc_id)} == moving
    for doc in docs:
        current = cluster.ring.current.owners(partition_for(doc.doc_id, P))
        assert cluster.holders(doc.doc_id) == set(current) | ({"d"} if doc.doc_id in moving else set())


async def test_w_is_computed_from_the_current_owners_not_the_joining_one(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster(a=NORMAL, b=NORMAL, c=NORMAL, d=RingStatus.JOINING)
    slow_d = cluster.hold("d")
    docs = docs_named(40)
    writer = cluster.writer()
    # ALL of the 3 current owners: the answer must not wait for the joining 4th write owner.
    outcome = await asyncio.wait_for(writer.write(docs, "all"), timeout=5)
    per_partition: dict[int, list[str]] = defaultdict(list)
    for doc in docs:
        pid = partition_for(doc.doc_id, P)
        per_partition[pid] = sorted(cluster.ring.current.owners(pid))
    assert sorted_acks(outcome) == dict(per_partition)
    assert any("d" in cluster.ring.write_owners(pid) for pid in per_partition), "d must be a write owner somewhere"
    slow_d.set_result(None)
    await writer.drain()
    assert all("d" in cluster.holders(d.doc_id) for d in docs if "d" in cluster.owners_of(d.doc_id))


async def test_the_joining_owners_ack_does_not_stand_in_for_a_current_owners(
    make_cluster: Callable[..., FakeCluster],
) -> None:
    cluster = make_cluster(a=NORMAL, b=NORMAL, c=NORMAL, d=RingStatus.JOINING)
    docs = [d for d in docs_named(80) if "d" in cluster.ring.pending(partition_for(d.doc_id, P))
            and "c" in cluster.ring.current.owners(partition_for(d.doc_id, P))][:1]
    assert docs, "need a partition moving to d that c currently owns"
    slow_c = cluster.hold("c")
    writer = cluster.writer()
    write = asyncio.create_task(writer.write(docs, "all"))
    await asyncio.sleep(0.2)  # a, b and the joining d have acknowledged by now
    assert "d" in cluster.holders(docs[0].doc_id)
    assert not write.done(), "ALL answered without the current owner c"
    slow_c.set_result(None)
    outcome = await asyncio.wait_for(write, timeout=5)
    await writer.drain()
    assert set(sorted_acks(outcome)[partition_for(docs[0].doc_id, P)]) >= {"a", "b", "c"}


# ------------------------------------------------------------------ per-document answers
async def test_a_write_every_replica_found_stale_is_superseded_with_the_winning_version(
    make_cluster: Callable[..., FakeCluster],
) -> None:
    """The defect: replicas holding a newer version answered like an ack and the client heard "updated"."""
    cluster = make_cluster()
    for engine in cluster.engines.values():
        engine.upsert([make_doc("d1", version=50, texts=["the newer text"])])
    writer = cluster.writer()
    outcome = await writer.write([make_doc("d1", version=10), make_doc("d2", version=10)], "quorum")
    await writer.drain()
    assert outcome.superseded == {"d1": 50}, "d2 was new everywhere; d1 lost to version 50"
    assert {engine.get("d1").version for engine in cluster.engines.values()} == {50}  # type: ignore[union-attr]


async def test_one_replica_holding_a_newer_version_makes_the_write_superseded(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.engines["b"].upsert([make_doc("d1", version=70, texts=["the newer text"])])
    writer = cluster.writer()
    cluster.hold("c")  # a and b answer: a applied, b holds a newer version
    outcome = await asyncio.wait_for(writer.write([make_doc("d1", version=20)], "quorum"), timeout=5)
    assert outcome.superseded == {"d1": 70}
    cluster.held["c"].set_result(None)
    await writer.drain()


# ------------------------------------------------------------------ refusals
async def test_a_replica_refusing_for_good_gets_no_hint_and_is_named(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    cluster.refusing["c"] = Refused("HTTP 400: version is 3600.0 s ahead of this node's clock")
    writer = cluster.writer()
    with pytest.raises(WriteOutcomeUnknown) as failure:
        await writer.write([make_doc("d1")], "all")
    await writer.drain()
    assert cluster.hints == [], "a hint would be refused again: it must not be stored"
    assert "c refused: HTTP 400: version is 3600.0 s ahead" in failure.value.message


async def test_a_replica_that_is_no_longer_owner_makes_the_writer_refresh_its_ring_and_reach_the_new_owner(
    make_cluster: Callable[..., FakeCluster],
) -> None:
    """Item 3: a node that handed a partition off answers 409; the coordinator adopts the
    newer ring and sends to the node that owns it now, whose ack counts toward W."""
    cluster = make_cluster(a=NORMAL, b=NORMAL, c=NORMAL, d=NORMAL)
    doc = next(d for d in docs_named(80) if len(set(cluster.owners_of(d.doc_id)) - {"a"}) == 3)
    pid = partition_for(doc.doc_id, P)
    newcomer = "a"  # not an owner of this partition yet; a is also the coordinator
    leaver = sorted(cluster.ring.write_owners(pid))[0]
    cluster.newer_ring = Ring(RingTable(
        RingEntry(n, n, "z", RingStatus.REMOVED if n == leaver else NORMAL, 2) for n in "abcd"
    ), P, N)
    assert newcomer in cluster.newer_ring.write_owners(pid), "the coordinator takes over the leaver's copy"
    cluster.refusing[leaver] = NotOwnerReply(f"HTTP 409: {leaver} neither owns nor hands off partition {pid}")
    writer = cluster.writer()
    outcome = await asyncio.wait_for(writer.write([doc], "all"), timeout=5)
    await writer.drain()
    assert cluster.ring_refreshes == [leaver]
    assert sorted(outcome.acked[pid]) == sorted(cluster.newer_ring.write_owners(pid))
    assert cluster.holders(doc.doc_id) == set(cluster.newer_ring.write_owners(pid))
    assert cluster.hints == []
