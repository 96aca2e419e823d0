"""cluster/repair.py: digests (pure), the rate limiter (virtual time), and sync, hand-off and
status changes between real storage engines.

Each node is a real StorageEngine in tmp_path. ``Replica`` is its LocalReplica;
``Peers`` stands in for the /_mesh/repair routes of the others, in-process, doing
what api/mesh_handlers.py's handle_roots/handle_entries/handle_fetch and
cluster/repair_adapters.py's PeerStores do (the engine's kept bucket hashes and
digest entries by bucket, export, differing_buckets). Every sync checks both
sides' kept buckets against a from-scratch computation over all their entries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from meshrag.cluster.fence import PartitionFence
from meshrag.cluster.messages import wire_size
from meshrag.cluster.repair import Progress, RateLimiter, Repairer, diff_entries, differing_buckets, is_newer, root_hash
from meshrag.errors import ValidationError
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable
from meshrag.ring import partition_for
from meshrag.store.digest import BUCKETS, bucket_hash, bucket_hashes, bucket_of, entry_digest, fold_buckets, xor_digests
from meshrag.store.engine import StorageEngine
from meshrag.store.types import DigestEntry, DocumentWrite
from tests.store.conftest import DIM, make_doc

P = 4
NORMAL, JOINING, LEAVING = RingStatus.NORMAL, RingStatus.JOINING, RingStatus.LEAVING


def entry(doc_id: str, version: int = 1, deleted: bool = False, content_hash: str = "h") -> DigestEntry:
    return DigestEntry(doc_id, version, deleted, "" if deleted else content_hash)


# ------------------------------------------------------------------ digests
def test_bucket_hashes_do_not_depend_on_entry_order() -> None:
    entries = [entry(f"d{i}") for i in range(50)]
    assert bucket_hashes(entries) == bucket_hashes(list(reversed(entries)))
    assert len(bucket_hashes(entries)) == BUCKETS


def test_a_changed_version_changes_exactly_its_bucket_and_the_root() -> None:
    entries = [entry(f"d{i}") for i in range(50)]
    changed = [entry("d7", 2) if e.doc_id == "d7" else e for e in entries]
    assert differing_buckets(bucket_hashes(entries), bucket_hashes(changed)) == [bucket_of("d7")]
    assert root_hash(bucket_hashes(entries)) != root_hash(bucket_hashes(changed))
    assert root_hash(bucket_hashes(entries)) == root_hash(bucket_hashes(list(reversed(entries))))


def test_an_empty_partition_has_only_empty_buckets() -> None:
    assert bucket_hashes([]) == [""] * BUCKETS
    assert root_hash(bucket_hashes([])) != root_hash(bucket_hashes([entry("d1")]))


def test_a_bucket_is_updated_in_place_by_xoring_the_old_entry_out_and_the_new_one_in() -> None:
    entries = [entry(f"d{i}") for i in range(200)]
    b = bucket_of("d7")
    count, folded = fold_buckets(entries)[b]
    old, new = entry("d7"), entry("d7", 2, deleted=True)
    updated = xor_digests(xor_digests(folded, entry_digest(*dataclasses.astuple(old))), entry_digest(*dataclasses.astuple(new)))
    changed = [new if e.doc_id == "d7" else e for e in entries]
    assert bucket_hash(count, updated) == bucket_hashes(changed)[b] != bucket_hashes(entries)[b]
    removed = xor_digests(folded, entry_digest(*dataclasses.astuple(old)))
    assert bucket_hash(count - 1, removed) == bucket_hashes([e for e in entries if e.doc_id != "d7"])[b]


def test_an_entry_digest_covers_every_field() -> None:
    base = entry_digest("d1", 1, False, "h")
    assert len({base, entry_digest("d2", 1, False, "h"), entry_digest("d1", 2, False, "h"),
                entry_digest("d1", 1, True, "h"), entry_digest("d1", 1, False, "g")}) == 5


def test_differing_buckets_lists_the_positions_that_differ() -> None:
    assert differing_buckets(["x", "y", "", "z"], ["x", "Y", "", ""]) == [1, 3]
    assert differing_buckets(["x", "y"], ["x", "y"]) == []


def test_newer_version_wins_and_a_tombstone_wins_a_tie() -> None:
    assert is_newer(entry("a", 2), entry("a", 1)) and not is_newer(entry("a", 1), entry("a", 2))
    assert is_newer(entry("a", 3, deleted=True), entry("a", 3))
    assert not is_newer(entry("a", 3), entry("a", 3, deleted=True))
    assert not is_newer(entry("a", 3), entry("a", 3)), "an equal entry is not newer"


def test_between_two_live_documents_of_one_version_the_larger_content_hash_wins() -> None:
    assert is_newer(entry("a", 3, content_hash="b"), entry("a", 3, content_hash="a"))
    assert not is_newer(entry("a", 3, content_hash="a"), entry("a", 3, content_hash="b"))


def test_diff_pulls_what_is_newer_there_and_pushes_what_is_newer_here() -> None:
    mine = {e.doc_id: e for e in [entry("both"), entry("mine-newer", 5), entry("only-mine"), entry("theirs-newer", 1)]}
    theirs = {e.doc_id: e for e in [entry("both"), entry("mine-newer", 4), entry("only-theirs"), entry("theirs-newer", 2)]}
    assert diff_entries(mine, theirs) == (["only-theirs", "theirs-newer"], ["mine-newer", "only-mine"])


# ------------------------------------------------------------------ rate limiter
class FakeTime:
    """A clock that moves only when the limiter sleeps; every requested sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_the_limiter_allows_one_second_of_burst_then_paces_to_the_rate() -> None:
    time = FakeTime()
    limiter = RateLimiter(1000, now=time.clock, sleep=time.sleep)
    await limiter.take(1000)
    assert time.slept == []
    await limiter.take(500)
    assert time.slept == [pytest.approx(0.5)]
    for _ in range(10):
        await limiter.take(1000)
    assert time.now == pytest.approx(10.5)  # 11 500 bytes at 1000/s, the first 1000 free


async def test_idle_time_saves_up_no_more_than_one_second_of_burst() -> None:
    time = FakeTime()
    limiter = RateLimiter(1000, now=time.clock, sleep=time.sleep)
    time.now = 60.0  # a minute idle
    await limiter.take(1000)
    assert time.slept == []
    await limiter.take(2000)
    assert time.slept == [pytest.approx(2.0)]


async def test_rate_zero_means_unlimited() -> None:
    time = FakeTime()
    limiter = RateLimiter(0, now=time.clock, sleep=time.sleep)
    for _ in range(3):
        await limiter.take(10**9)
    assert time.slept == []


# ------------------------------------------------------------------ in-process replicas
class Replica:
    """One node's engine as repair.py's LocalReplica (repair_adapters.py's LocalStore); also used by
    scripts/bench_repair.py."""

    def __init__(self, root: Path, name: str, partitions: int = P, dim: int = DIM) -> None:
        self.engine = StorageEngine(root / name, partitions, dim)
        self.engine.open()
        self.fetched: list[str] = []   # ids other nodes fetched from here
        self.received: list[str] = []  # ids other nodes pushed here
        self.fence = PartitionFence()
        self.buckets_read: list[list[int]] = []  # buckets whose entries were read, as local or as peer

    def digest(self, pid: int) -> list[DigestEntry]:
        return self.engine.digest_entries(pid)

    def kept_hashes(self, pid: int) -> list[str]:
        """The engine's incrementally kept buckets, checked against a from-scratch computation."""
        kept = self.engine.bucket_hashes(pid)
        assert kept == bucket_hashes(self.digest(pid)), f"partition {pid}: kept buckets drifted"
        return kept

    def exported(self, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        try:
            return self.engine.partition(pid).export(doc_ids)
        except KeyError:
            return []

    async def held(self) -> list[int]:
        return self.engine.local_partitions()

    async def hashes(self, pid: int) -> list[str]:
        return self.kept_hashes(pid)

    def entries_of(self, pid: int, buckets: list[int]) -> list[DigestEntry]:
        self.buckets_read.append(buckets)
        return self.engine.digest_entries(pid, buckets)

    async def entries(self, pid: int, buckets: list[int]) -> list[DigestEntry]:
        return self.entries_of(pid, buckets)

    async def export(self, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        return self.exported(pid, doc_ids)

    async def apply(self, docs: list[DocumentWrite]) -> None:
        if docs:
            self.engine.upsert(docs)

    async def claim(self, pid: int) -> None:
        self.engine.partition(pid, create=True)

    def fenced(self, pid: int) -> AbstractAsyncContextManager[None]:
        return self.fence.exclusive(pid)

    async def drop(self, pid: int) -> None:
        self.engine.drop_partition(pid)


class Peers:
    """The other nodes' repair routes (api/mesh_handlers.py's handle_* behind PeerStores), in-process."""

    def __init__(self, replicas: dict[str, Replica]) -> None:
        self.replicas = replicas
        self.root_calls = 0

    async def roots(self, node: str, pids: list[int]) -> dict[int, str]:
        self.root_calls += 1
        return {pid: root_hash(self.replicas[node].kept_hashes(pid)) for pid in pids}

    async def entries(self, node: str, pid: int, hashes: list[str]) -> tuple[list[int], list[DigestEntry]]:
        if len(hashes) != BUCKETS:
            raise ValidationError(f"hashes must list {BUCKETS} buckets", field="hashes")
        replica = self.replicas[node]
        differing = differing_buckets(replica.kept_hashes(pid), hashes)
        return differing, replica.entries_of(pid, differing) if differing else []

    async def fetch(self, node: str, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        self.replicas[node].fetched.extend(doc_ids)
        return self.replicas[node].exported(pid, doc_ids)

    async def push(self, node: str, docs: list[DocumentWrite]) -> None:
        self.replicas[node].received.extend(d.doc_id for d in docs)
        self.replicas[node].engine.upsert(docs)


def make_ring(**statuses: RingStatus) -> Ring:
    return Ring(RingTable(RingEntry(n, n, "z", s, 1) for n, s in statuses.items()), P, 2)


def two_normal() -> Ring:
    return make_ring(a=NORMAL, b=NORMAL)


def repairer(
    node: str,
    replicas: dict[str, Replica],
    ring: Callable[[], Ring] = two_normal,
    statuses: list[RingStatus] | None = None,
    alive: Callable[[str], bool] = lambda n: True,
    limiter: RateLimiter | None = None,
) -> Repairer:
    on_status = statuses.append if statuses is not None else lambda status: None
    return Repairer(node, ring, alive, replicas[node], Peers(replicas), limiter or RateLimiter(0), wire_size, on_status)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[dict[str, Replica]]:
    made = {name: Replica(tmp_path, name) for name in ("a", "b", "c")}
    yield made
    for replica in made.values():
        replica.engine.close()


def docs_in(pid: int, count: int, prefix: str = "d") -> list[DocumentWrite]:
    """``count`` documents that all land in partition ``pid``."""
    candidates = (make_doc(f"{prefix}{i}") for i in range(count * P * 10))
    chosen = [d for d in candidates if partition_for(d.doc_id, P) == pid][:count]
    assert len(chosen) == count
    return chosen


def vector_bytes(doc: DocumentWrite) -> list[bytes]:
    return [chunk.vector.tobytes() for chunk in doc.chunks]


# ------------------------------------------------------------------ sync_partition
async def test_divergent_replicas_converge_moving_only_the_differences(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    shared = docs_in(1, 30)
    newer_on_b = make_doc(shared[0].doc_id, 2, ["newer text on b"])
    only_b = docs_in(1, 3, prefix="only-b")
    a.engine.upsert(shared)
    b.engine.upsert(shared[:25] + [newer_on_b] + only_b)
    result = await repairer("a", replicas).sync_partition(1, "b")
    assert sorted(b.fetched) == sorted([newer_on_b.doc_id] + [d.doc_id for d in only_b])
    assert sorted(b.received) == sorted(d.doc_id for d in shared[25:])
    assert (result.pulled, result.pushed) == (4, 5)
    assert result.bytes_in == sum(map(wire_size, [newer_on_b, *only_b])) and result.bytes_out > 0
    assert a.digest(1) == b.digest(1)
    for doc in [newer_on_b, *only_b, *shared[1:]]:  # vectors arrive as written: nothing re-embedded
        for replica in (a, b):
            [held] = replica.exported(1, [doc.doc_id])
            assert vector_bytes(held) == vector_bytes(doc)


async def test_a_sync_of_one_changed_document_reads_only_its_bucket_on_both_sides(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    docs = docs_in(1, 200)
    a.engine.upsert(docs)
    b.engine.upsert(docs)
    changed = make_doc(docs[5].doc_id, 2, ["changed on b"])
    b.engine.upsert([changed])
    result = await repairer("a", replicas).sync_partition(1, "b")
    assert a.buckets_read == b.buckets_read == [[bucket_of(changed.doc_id)]]
    assert (result.pulled, result.pushed) == (1, 0) and b.fetched == [changed.doc_id]
    assert a.digest(1) == b.digest(1)


async def test_a_tombstone_beats_the_older_live_copy_in_both_directions(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    [doc] = docs_in(2, 1)
    a.engine.upsert([doc])
    b.engine.upsert([doc])
    b.engine.delete(doc.doc_id, doc.version + 1)
    await repairer("a", replicas).sync_partition(2, "b")  # a pulls the tombstone
    await repairer("b", replicas).sync_partition(2, "a")  # b must not pull the old document back
    for replica in (a, b):
        held = replica.engine.get(doc.doc_id)
        assert held is not None and held.deleted and held.chunks == ()
    assert a.digest(2) == b.digest(2)


async def test_a_tombstone_beats_a_live_document_of_the_same_version(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    [doc] = docs_in(2, 1)
    a.engine.upsert([doc])
    b.engine.delete(doc.doc_id, doc.version)
    await repairer("a", replicas).sync_partition(2, "b")
    await repairer("b", replicas).sync_partition(2, "a")
    held = a.engine.get(doc.doc_id)
    assert held is not None and held.deleted
    assert a.digest(2) == b.digest(2)


async def test_push_never_pulls(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    mine = docs_in(0, 5)
    a.engine.upsert(mine)
    b.engine.upsert(docs_in(0, 4, prefix="b-only"))
    result = await repairer("a", replicas).sync_partition(0, "b", "push")
    assert (result.pulled, result.pushed) == (0, 5)
    assert b.fetched == []
    assert sorted(e.doc_id for e in a.digest(0)) == sorted(d.doc_id for d in mine)
    assert len(b.digest(0)) == 9


async def test_a_version_tie_between_live_documents_settles_as_the_stores_settle_it(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    [base] = docs_in(1, 1)
    mine, theirs = make_doc(base.doc_id, 7, ["one coordinator"]), make_doc(base.doc_id, 7, ["another coordinator"])
    a.engine.upsert([mine])
    b.engine.upsert([theirs])
    await repairer("a", replicas).sync_partition(1, "b")
    winner = max(mine, theirs, key=lambda doc: doc.content_hash)
    for replica in (a, b):
        held = replica.engine.get(base.doc_id)
        assert held is not None and held.text == winner.text
    assert a.digest(1) == b.digest(1)


async def test_transfers_are_paced_by_the_limiter(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    a.engine.upsert(docs_in(1, 6))
    b.engine.upsert(docs_in(1, 6, prefix="b"))
    time = FakeTime()
    rate = 1000
    limiter = RateLimiter(rate, now=time.clock, sleep=time.sleep)
    result = await repairer("a", replicas, limiter=limiter).sync_partition(1, "b")
    moved = result.bytes_in + result.bytes_out
    assert moved > 2 * rate
    assert sum(time.slept) == pytest.approx((moved - rate) / rate)  # one second of burst, then the rate


# ------------------------------------------------------------------ passes
async def test_in_sync_replicas_exchange_roots_only(replicas: dict[str, Replica]) -> None:
    docs = docs_in(1, 10)
    for name in ("a", "b"):
        replicas[name].engine.upsert(docs)
    progress = await repairer("a", replicas).run_pass("periodic")
    assert (progress.docs_in, progress.docs_out, progress.errors) == (0, 0, 0)
    assert replicas["b"].fetched == [] and replicas["b"].received == []
    assert replicas["a"].buckets_read == replicas["b"].buckets_read == [], "equal roots: no entry is read"



async def test_an_owners_pass_only_pulls_and_the_other_owner_pulls_the_rest(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    shared, only_a, only_b = docs_in(1, 5), docs_in(1, 3, prefix="a-"), docs_in(1, 2, prefix="b-")
    a.engine.upsert(shared + only_a)
    b.engine.upsert(shared + only_b)
    first = await repairer("a", replicas).run_pass("periodic")
    assert (first.docs_in, first.docs_out) == (2, 0) and b.received == []
    second = await repairer("b", replicas).run_pass("periodic")
    assert (second.docs_in, second.docs_out) == (3, 0) and a.received == []
    assert a.digest(1) == b.digest(1)


async def test_a_peer_that_came_back_is_also_pushed_what_it_missed(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    shared, missed = docs_in(2, 4), docs_in(2, 3, prefix="missed-")
    a.engine.upsert(shared + missed)
    b.engine.upsert(shared)
    progress = await repairer("a", replicas).run_pass("member came back", returned=frozenset({"b"}))
    assert progress.docs_out == 3
    assert sorted(b.received) == sorted(d.doc_id for d in missed)
    assert a.digest(2) == b.digest(2)

async def test_a_partition_no_longer_owned_is_handed_off_then_dropped(replicas: dict[str, Replica]) -> None:
    ring = two_normal()  # N=2: c owns nothing
    c = replicas["c"]
    docs = docs_in(3, 6)
    c.engine.upsert(docs)
    progress = await repairer("c", replicas, lambda: ring).run_pass("ring changed")
    assert 3 not in c.engine.local_partitions()
    assert progress.dropped == 1
    for owner in ring.write_owners(3):
        assert sorted(e.doc_id for e in replicas[owner].digest(3)) == sorted(d.doc_id for d in docs)


async def test_a_write_admitted_before_the_hand_off_fence_reaches_the_owners_before_the_drop(
    replicas: dict[str, Replica],
) -> None:
    """Item 3: the final sync and the drop run under the fence; a write c admitted just
    before must be pushed, not dropped with c's copy."""
    ring = two_normal()
    c = replicas["c"]
    c.engine.upsert(docs_in(3, 4))
    late = docs_in(3, 5, prefix="late")[-1]
    go = asyncio.Event()

    async def write_admitted_before_the_fence() -> None:
        async with c.fence.writing([3]):
            await go.wait()
            c.engine.upsert([late])

    writer = asyncio.create_task(write_admitted_before_the_fence())
    await asyncio.sleep(0)
    handing_off = asyncio.create_task(repairer("c", replicas, lambda: ring).run_pass("ring changed"))
    for _ in range(1000):  # until the hand-off waits at the fence
        if c.fence.is_fenced(3):
            break
        await asyncio.sleep(0.001)
    assert c.fence.is_fenced(3) and 3 in c.engine.local_partitions(), "the drop must wait for the admitted write"
    go.set()
    progress = await asyncio.wait_for(handing_off, timeout=10)
    await writer
    assert progress.dropped == 1 and 3 not in c.engine.local_partitions()
    for owner in ring.write_owners(3):
        assert late.doc_id in {e.doc_id for e in replicas[owner].digest(3)}, f"{owner} lost the late write"


async def test_nothing_is_dropped_while_an_owner_is_dead(replicas: dict[str, Replica]) -> None:
    ring = two_normal()
    c = replicas["c"]
    c.engine.upsert(docs_in(3, 6))
    progress = await repairer("c", replicas, lambda: ring, alive=lambda n: n != "b").run_pass("ring changed")
    assert 3 in c.engine.local_partitions()
    assert len(c.digest(3)) == 6
    assert progress.dropped == 0
    assert len(replicas["a"].digest(3)) == 6, "the live owner still got its copy"


async def test_a_joining_node_turns_normal_after_pulling_from_a_current_owner(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=NORMAL, b=NORMAL, c=JOINING)
    for pid in range(P):
        docs = docs_in(pid, 4)
        replicas["a"].engine.upsert(docs)
        replicas["b"].engine.upsert(docs)
    statuses: list[RingStatus] = []
    await repairer("c", replicas, lambda: ring, statuses).run_pass("bootstrap")
    assert statuses == [NORMAL]
    assert ring.partitions_of("c"), "c must be a target owner of something"
    for pid in ring.partitions_of("c"):
        assert replicas["c"].digest(pid) == replicas["a"].digest(pid)



async def test_current_owners_leave_a_joining_node_to_pull_each_document_once(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=NORMAL, b=NORMAL, c=JOINING)
    for pid in range(P):
        docs = docs_in(pid, 4)
        replicas["a"].engine.upsert(docs)
        replicas["b"].engine.upsert(docs)
    for current in ("a", "b"):
        progress = await repairer(current, replicas, lambda: ring).run_pass("ring changed")
        assert progress.docs_out == 0, f"{current} pushed to the joining node"
    assert replicas["c"].received == []
    progress = await repairer("c", replicas, lambda: ring).run_pass("bootstrap")
    expected = sorted(e.doc_id for pid in ring.partitions_of("c") for e in replicas["a"].digest(pid))
    assert expected, "c must be receiving something"
    assert sorted(replicas["a"].fetched + replicas["b"].fetched) == expected, "each document fetched once"
    assert progress.docs_in == len(expected)

async def test_a_joining_node_whose_sources_are_dead_stays_joining(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=NORMAL, b=NORMAL, c=JOINING)
    replicas["a"].engine.upsert(docs_in(0, 2))
    statuses: list[RingStatus] = []
    await repairer("c", replicas, lambda: ring, statuses, alive=lambda n: n == "c").run_pass("bootstrap")
    assert statuses == []


async def test_a_leaving_node_reports_removed_after_handing_everything_off(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=NORMAL, b=NORMAL, c=LEAVING)
    held = ring.partitions_of("c", "current")
    assert held, "c must hold something to hand off"
    for pid in held:
        replicas["c"].engine.upsert(docs_in(pid, 3))
    statuses: list[RingStatus] = []
    await repairer("c", replicas, lambda: ring, statuses).run_pass("decommission")
    assert statuses == [RingStatus.REMOVED]
    for pid in held:
        for owner in ring.target.owners(pid):
            assert replicas[owner].digest(pid) == replicas["c"].digest(pid)


async def test_a_leaving_node_with_a_dead_new_owner_is_not_removed(replicas: dict[str, Replica]) -> None:
    ring = make_ring(a=NORMAL, b=NORMAL, c=LEAVING)
    for pid in ring.partitions_of("c", "current"):
        replicas["c"].engine.upsert(docs_in(pid, 3))
    statuses: list[RingStatus] = []
    await repairer("c", replicas, lambda: ring, statuses, alive=lambda n: n != "a").run_pass("decommission")
    assert statuses == []


def test_progress_is_plain_data() -> None:
    assert set(Progress().as_dict()) == {f.name for f in dataclasses.fields(Progress)}


async def test_a_pass_counts_each_partition_done_as_its_last_peer_is_compared(replicas: dict[str, Replica]) -> None:
    """`meshrag status` computes a pass's rate and ETA from partitions_done and started_at."""
    a, b = replicas["a"], replicas["b"]
    b.engine.upsert(docs_in(1, 2) + docs_in(3, 2))  # a lacks partitions 1 and 3
    seen: list[tuple[int, int]] = []
    peers = Peers(replicas)
    entries = peers.entries

    async def recording(node: str, pid: int, hashes: list[str]) -> tuple[list[int], list[DigestEntry]]:
        seen.append((pid, rep.progress.partitions_done))
        return await entries(node, pid, hashes)

    peers.entries = recording  # type: ignore[method-assign]
    rep = Repairer("a", two_normal, lambda n: True, a, peers, RateLimiter(0), wire_size, lambda status: None)
    before = time.time()
    progress = await rep.run_pass("periodic")
    assert seen == [(1, 1), (3, 3)], "every partition before the one being synced already counts as done"
    assert progress.partitions_done == progress.partitions_total == P and before <= progress.started_at <= time.time()
