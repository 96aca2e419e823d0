"""cluster/repair.py: digests (pure), the rate limiter (virtual time) and sync between
real storage engines through an in-process stand-in for the /_mesh/repair routes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from meshrag.cluster.repair import (
    RateLimiter, Repairer, bucket_hashes, bucket_of, diff_entries, differing_buckets, is_newer, root_hash,
)
from meshrag.cluster.messages import wire_size
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable
from meshrag.store.engine import StorageEngine, partition_for
from meshrag.store.types import DigestEntry, DocumentWrite
from tests.store.conftest import DIM, make_doc

P = 4


def e(doc_id: str, version: int = 1, deleted: bool = False) -> DigestEntry:
    return DigestEntry(doc_id, version, deleted, "h")


# ------------------------------------------------------------------ digests
def test_bucket_hashes_ignore_order_and_a_new_version_changes_one_bucket() -> None:
    entries = [e(f"d{i}") for i in range(50)]
    assert bucket_hashes(entries) == bucket_hashes(list(reversed(entries)))
    changed = [e("d7", 2) if x.doc_id == "d7" else x for x in entries]
    assert differing_buckets(bucket_hashes(entries), bucket_hashes(changed)) == [bucket_of("d7")]
    assert root_hash(bucket_hashes(entries)) != root_hash(bucket_hashes(changed))


def test_an_empty_partition_has_empty_buckets() -> None:
    assert set(bucket_hashes([])) == {""}


def test_newer_version_wins_and_a_tombstone_wins_a_tie() -> None:
    assert is_newer(e("a", 2), e("a", 1)) and not is_newer(e("a", 1), e("a", 2))
    assert is_newer(e("a", 3, deleted=True), e("a", 3)) and not is_newer(e("a", 3), e("a", 3, deleted=True))


def test_diff_pulls_what_is_newer_there_and_pushes_what_is_newer_here() -> None:
    mine = {x.doc_id: x for x in [e("both"), e("mine-newer", 5), e("only-mine"), e("theirs-newer", 1)]}
    theirs = {x.doc_id: x for x in [e("both"), e("mine-newer", 4), e("only-theirs"), e("theirs-newer", 2)]}
    assert diff_entries(mine, theirs) == (["only-theirs", "theirs-newer"], ["mine-newer", "only-mine"])


# ------------------------------------------------------------------ rate limiter
class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_the_limiter_allows_one_second_of_burst_then_paces() -> None:
    clock = FakeTime()
    limiter = RateLimiter(1000, now=lambda: clock.now, sleep=clock.sleep)
    await limiter.take(1000)
    assert clock.slept == []
    await limiter.take(500)
    assert clock.slept == [pytest.approx(0.5)]
    for _ in range(10):
        await limiter.take(1000)
    assert clock.now == pytest.approx(10.5)  # 11 500 bytes at 1000/s after a 1000-byte burst


async def test_rate_zero_means_unlimited() -> None:
    clock = FakeTime()
    limiter = RateLimiter(0, now=lambda: clock.now, sleep=clock.sleep)
    await limiter.take(10**9)
    assert clock.slept == []


# ------------------------------------------------------------------ sync between real engines
class Replica:
    """A node's engine, seen as LocalReplica (its own side) and as the target of peer calls."""

    def __init__(self, root: Path, name: str) -> None:
        self.engine = StorageEngine(root / name, P, DIM)
        self.engine.open()
        self.fetched = 0
        self.received = 0

    def _entries(self, pid: int) -> list[DigestEntry]:
        try:
            return self.engine.partition(pid).digest_entries()
        except KeyError:
            return []

    async def held(self) -> list[int]:
        return self.engine.local_partitions()

    async def entries(self, pid: int) -> list[DigestEntry]:
        return self._entries(pid)

    async def export(self, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        return self.engine.partition(pid).export(doc_ids)

    async def apply(self, docs: list[DocumentWrite]) -> None:
        self.engine.upsert(docs)

    async def drop(self, pid: int) -> None:
        self.engine.drop_partition(pid)


class Peers:
    """The /_mesh/repair routes of other replicas, called in-process."""

    def __init__(self, replicas: dict[str, Replica]) -> None:
        self.replicas = replicas

    async def roots(self, node: str, pids: list[int]) -> dict[int, str]:
        return {pid: root_hash(bucket_hashes(self.replicas[node]._entries(pid))) for pid in pids}

    async def entries(self, node: str, pid: int, hashes: list[str]) -> tuple[list[int], list[DigestEntry]]:
        theirs = self.replicas[node]._entries(pid)
        differing = differing_buckets(bucket_hashes(theirs), hashes)
        return differing, [x for x in theirs if bucket_of(x.doc_id) in set(differing)]

    async def fetch(self, node: str, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        self.replicas[node].fetched += len(doc_ids)
        return self.replicas[node].engine.partition(pid).export(doc_ids)

    async def push(self, node: str, docs: list[DocumentWrite]) -> None:
        self.replicas[node].received += len(docs)
        self.replicas[node].engine.upsert(docs)


def make_ring(**statuses: RingStatus) -> Ring:
    return Ring(RingTable(RingEntry(n, n, "z", s, 1) for n, s in statuses.items()), P, 2)


def repairer(node: str, replicas: dict[str, Replica], ring: Callable[[], Ring], statuses: list[RingStatus],
             alive: Callable[[str], bool] = lambda n: True) -> Repairer:
    return Repairer(node, ring, alive, replicas[node], Peers(replicas), RateLimiter(0), wire_size, statuses.append)


@pytest.fixture
def replicas(tmp_path: Path) -> dict[str, Replica]:
    return {name: Replica(tmp_path, name) for name in ("a", "b", "c")}


def _docs_in(pid: int, count: int, prefix: str = "d") -> list[DocumentWrite]:
    docs = [make_doc(f"{prefix}{i}") for i in range(count * P * 3)]
    return [d for d in docs if partition_for(d.doc_id, P) == pid][:count]


async def test_divergent_replicas_converge_moving_only_the_differences(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    docs = _docs_in(1, 30)
    a.engine.upsert(docs)
    b.engine.upsert(docs[:25])
    b.engine.upsert([make_doc(docs[0].doc_id, 2, ["newer text on b"])])
    b.engine.upsert(_docs_in(1, 3, prefix="only-b"))
    result = await repairer("a", replicas, lambda: make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL), []).sync_partition(1, "b")
    assert (result.pulled, result.pushed) == (4, 5)
    assert a.engine.partition(1).digest_entries() == b.engine.partition(1).digest_entries()
    for doc in docs[1:]:  # vectors moved as they were: nothing re-embedded
        [mine] = a.engine.partition(1).export([doc.doc_id])
        [theirs] = b.engine.partition(1).export([doc.doc_id])
        assert all(np.array_equal(x.vector, y.vector) for x, y in zip(mine.chunks, theirs.chunks))


async def test_a_tombstone_beats_the_older_live_copy_in_both_directions(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    [doc] = _docs_in(2, 1)
    a.engine.upsert([doc])
    b.engine.upsert([doc])
    b.engine.delete(doc.doc_id, doc.version + 1)
    ring = lambda: make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL)  # noqa: E731
    await repairer("a", replicas, ring, []).sync_partition(2, "b")  # a pulls the tombstone
    await repairer("b", replicas, ring, []).sync_partition(2, "a")  # b must not pull the old doc back
    for replica in (a, b):
        stored = replica.engine.get(doc.doc_id)
        assert stored is not None and stored.deleted


async def test_push_never_pulls(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    a.engine.upsert(_docs_in(0, 5))
    b.engine.upsert(_docs_in(0, 4, prefix="b-only"))
    result = await repairer("a", replicas, lambda: make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL), []).sync_partition(0, "b", "push")
    assert (result.pulled, result.pushed) == (0, 5)
    assert len(a.engine.partition(0).digest_entries()) == 5


async def test_a_partition_no_longer_owned_is_handed_off_then_dropped(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL)  # N=2, P=4: c owns nothing
    c = replicas["c"]
    c.engine.upsert(_docs_in(3, 6))
    await repairer("c", replicas, lambda: ring, []).run_pass("test")
    assert 3 not in c.engine.local_partitions()
    for owner in ("a", "b"):
        assert len(replicas[owner].engine.partition(3).digest_entries()) == 6


async def test_nothing_is_dropped_while_an_owner_is_dead(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL)
    c = replicas["c"]
    c.engine.upsert(_docs_in(3, 6))
    progress = await repairer("c", replicas, lambda: ring, [], alive=lambda n: n != "b").run_pass("test")
    assert 3 in c.engine.local_partitions()
    assert progress.dropped == 0


async def test_a_joining_node_turns_normal_after_pulling_everything(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL, c=RingStatus.JOINING)
    for pid in range(P):
        docs = _docs_in(pid, 4)
        replicas["a"].engine.upsert(docs)
        replicas["b"].engine.upsert(docs)
    statuses: list[RingStatus] = []
    await repairer("c", replicas, lambda: ring, statuses).run_pass("bootstrap")
    assert statuses == [RingStatus.NORMAL]
    for pid in ring.partitions_of("c"):
        assert replicas["c"].engine.partition(pid).digest_entries() == replicas["a"].engine.partition(pid).digest_entries()


async def test_a_joining_node_whose_sources_are_dead_stays_joining(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL, c=RingStatus.JOINING)
    replicas["a"].engine.upsert(_docs_in(0, 2))
    statuses: list[RingStatus] = []
    await repairer("c", replicas, lambda: ring, statuses, alive=lambda n: n == "c").run_pass("bootstrap")
    assert statuses == []


async def test_a_leaving_node_is_removed_after_handing_everything_off(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL, c=RingStatus.LEAVING)
    for pid in ring.partitions_of("c", "current"):
        replicas["c"].engine.upsert(_docs_in(pid, 3))
    statuses: list[RingStatus] = []
    await repairer("c", replicas, lambda: ring, statuses).run_pass("decommission")
    assert statuses == [RingStatus.REMOVED]
    for pid in ring.partitions_of("c", "current"):
        wanted = replicas["c"].engine.partition(pid).digest_entries()
        for owner in ring.target.owners(pid):
            assert replicas[owner].engine.partition(pid).digest_entries() == wanted


async def test_in_sync_replicas_exchange_roots_only(replicas: dict[str, Replica]) -> None:
    docs = _docs_in(1, 10)
    for name in ("a", "b"):
        replicas[name].engine.upsert(docs)
    ring = make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL)
    progress = await repairer("a", replicas, lambda: ring, []).run_pass("periodic")
    assert (progress.docs_in, progress.docs_out, replicas["b"].fetched, replicas["b"].received) == (0, 0, 0, 0)


def test_progress_is_plain_data() -> None:
    from meshrag.cluster.repair import Progress

    assert set(Progress().as_dict()) == {f.name for f in dataclasses.fields(Progress)}


async def test_a_version_tie_is_seen_and_settled_the_way_stores_settle_it(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    [base] = _docs_in(1, 1)
    mine, theirs = make_doc(base.doc_id, 7, ["one coordinator"]), make_doc(base.doc_id, 7, ["another coordinator"])
    a.engine.upsert([mine])
    b.engine.upsert([theirs])
    assert root_hash(bucket_hashes(a.engine.partition(1).digest_entries())) != root_hash(bucket_hashes(b.engine.partition(1).digest_entries()))
    await repairer("a", replicas, lambda: make_ring(a=RingStatus.NORMAL, b=RingStatus.NORMAL), []).sync_partition(1, "b")
    winner = max(mine, theirs, key=lambda doc: doc.content_hash)
    assert a.engine.get(base.doc_id).text == b.engine.get(base.doc_id).text == winner.text  # type: ignore[union-attr]
