"""Anti-entropy: replicas compare digests and exchange only what differs.

Digests: a partition's documents and tombstones are hashed into BUCKETS
buckets by id; each bucket's hash is the XOR of its entries' digests of (id,
version, deleted, content hash), and the partition's root hash covers the
buckets. Partitions keep their buckets with every write, so reading a root
costs O(1) and a sync reads only the entries of differing buckets: a pass
costs what changed, not what is stored. A pass asks each
peer for the roots of the partitions both hold (one request per peer), and
only for a differing root exchanges bucket hashes, then the entries of the
differing buckets, then the documents themselves with their chunk vectors
(nothing is re-embedded). The newer version wins (tombstones included, so a
replica that missed a delete cannot bring the document back).

The same pass moves data when the ring changes:
* partitions this node owns are pulled from their other owners, so each
  missing document moves once (this is how a joining node, or a new owner
  after `remove`, is filled; a leaving node also pushes);
* partitions it holds but no longer owns are pushed to their owners and
  dropped only once every owner is in sync;
* a joining node turns normal after a pass in which every partition it will
  own was pulled from a current owner; a leaving node is removed after a pass
  in which every partition it holds was pushed to all its new owners.

Transfers are rate-limited (bytes/s) and resumable: an interrupted pass
leaves whatever it applied in place, and the next pass's digests skip it.
Storage and peers are injected; clock and sleep too (see RateLimiter).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, defaultdict
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, Sequence

from meshrag.ring import Ring, RingStatus
# The digest's definition lives with the store that keeps it (store/digest.py); repair compares.
from meshrag.store.digest import EMPTY_HASHES
from meshrag.store.types import DigestEntry, DocumentWrite, write_order

log = logging.getLogger(__name__)

BATCH_DOCS = 128


# ------------------------------------------------------------------ digests (pure)
def root_hash(hashes: Sequence[str]) -> str:
    return hashlib.blake2b("|".join(hashes).encode(), digest_size=12).hexdigest()


def differing_buckets(mine: Sequence[str], theirs: Sequence[str]) -> list[int]:
    return [b for b, (a, c) in enumerate(zip(mine, theirs)) if a != c]


def is_newer(a: DigestEntry, b: DigestEntry) -> bool:
    """``a`` replaces ``b`` on a replica that holds ``b`` (store.types.write_order)."""
    return write_order(a.version, a.deleted, a.content_hash) > write_order(b.version, b.deleted, b.content_hash)


def diff_entries(mine: dict[str, DigestEntry], theirs: dict[str, DigestEntry]) -> tuple[list[str], list[str]]:
    """(ids to pull: theirs is newer or only theirs, ids to push: mine is newer or only mine)."""
    pull = sorted(i for i, t in theirs.items() if i not in mine or is_newer(t, mine[i]))
    push = sorted(i for i, m in mine.items() if i not in theirs or is_newer(m, theirs[i]))
    return pull, push


# ------------------------------------------------------------------ injected parts
class LocalReplica(Protocol):
    async def held(self) -> list[int]: ...
    async def hashes(self, pid: int) -> list[str]: ...  # BUCKETS bucket hashes, EMPTY_HASHES if not held
    async def entries(self, pid: int, buckets: list[int]) -> list[DigestEntry]: ...  # of these buckets only
    async def export(self, pid: int, doc_ids: list[str]) -> list[DocumentWrite]: ...
    async def apply(self, docs: list[DocumentWrite]) -> None: ...
    async def claim(self, pid: int) -> None: ...
    def fenced(self, pid: int) -> AbstractAsyncContextManager[None]: ...
    async def drop(self, pid: int) -> None: ...


class PeerReplicas(Protocol):
    async def roots(self, node_id: str, pids: list[int]) -> dict[int, str]: ...
    async def entries(self, node_id: str, pid: int, hashes: list[str]) -> tuple[list[int], list[DigestEntry]]: ...
    async def fetch(self, node_id: str, pid: int, doc_ids: list[str]) -> list[DocumentWrite]: ...
    async def push(self, node_id: str, docs: list[DocumentWrite]) -> None: ...


class RateLimiter:
    """Token bucket over bytes: at most ``rate`` bytes/s with one second of burst."""

    def __init__(self, rate: float, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.rate = rate
        self._now = now
        self._sleep = sleep
        self._tokens = rate
        self._at = now()

    async def take(self, amount: int) -> None:
        if self.rate <= 0:
            return
        current = self._now()
        self._tokens = min(self.rate, self._tokens + (current - self._at) * self.rate)
        self._at = current
        self._tokens -= amount
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.rate)


@dataclass
class SyncResult:
    pulled: int = 0
    pushed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    in_sync: bool = True


@dataclass
class Progress:
    running: bool = False
    reason: str = ""
    partitions_total: int = 0
    partitions_done: int = 0
    passes: int = 0
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: int = 0
    errors: int = 0
    last_pass_s: float = 0.0
    last_pass_at: float = 0.0
    last_error: str = ""
    started_at: float = 0.0  # wall clock when the running (or last) pass began: a rate and an ETA (cluster/overview.py)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _PassLedger:
    synced: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))  # pid -> peers in sync
    failed: set[int] = field(default_factory=set)


class Repairer:
    def __init__(
        self,
        local_id: str,
        ring: Callable[[], Ring],
        is_alive: Callable[[str], bool],
        local: LocalReplica,
        peers: PeerReplicas,
        limiter: RateLimiter,
        size_of: Callable[[DocumentWrite], int],
        on_status: Callable[[RingStatus], None],
    ) -> None:
        self._local_id = local_id
        self._ring = ring
        self._is_alive = is_alive
        self._local = local
        self._peers = peers
        self._limiter = limiter
        self._size_of = size_of
        self._on_status = on_status
        self.progress = Progress()

    # ----------------------------------------------------------------- a pass
    async def run_pass(self, reason: str, returned: frozenset[str] = frozenset()) -> Progress:
        """One pass over every partition this node holds or owns. ``returned``: peers
        that came back from suspect or dead; this pass also pushes them what they
        missed, so they catch up without waiting for their own next pass."""
        ring = self._ring()
        started = time.monotonic()
        held = set(await self._local.held())
        owned = [pid for pid in range(ring.partitions) if ring.owns(self._local_id, pid)]
        leftover = sorted(held - set(owned))
        self.progress.running, self.progress.reason = True, reason
        self.progress.partitions_total, self.progress.partitions_done = len(owned) + len(leftover), 0
        self.progress.started_at = time.time()
        ledger = _PassLedger()
        errors_before = self.progress.errors
        try:
            await self._sync_owned(ring, owned, held, ledger, returned)
            await self._hand_off(ring, leftover, ledger)
            await self._claim_owned(ring, owned, ledger)
            self._advance_status(ring, owned, held, ledger)
        finally:
            self.progress.running = False
            if self.progress.errors == errors_before:
                self.progress.last_error = ""  # a clean pass: the last error is history
            self.progress.passes += 1
            self.progress.last_pass_s = round(time.monotonic() - started, 3)
            self.progress.last_pass_at = time.time()
        return self.progress

    async def _sync_owned(self, ring: Ring, owned: list[int], held: set[int], ledger: _PassLedger, returned: frozenset[str]) -> None:
        by_peer: dict[str, list[int]] = defaultdict(list)
        for pid in owned:
            for peer in ring.write_owners(pid):
                if peer != self._local_id and self._is_alive(peer):
                    by_peer[peer].append(pid)
        # Every owner pulls what it lacks, so a missing document moves once (when
        # each side also pushed, a join moved 3.5x, and a restore 1.5x, the documents
        # the new owner holds). A leaving node pushes as well (its own pass must see
        # every new owner in sync before it may turn removed), and so does every
        # owner to a peer that just came back (a thawed node may not start a pass).
        entry = ring.entries.get(self._local_id)
        leaving = entry is not None and entry.status is RingStatus.LEAVING
        roots = {pid: await self._root(pid, held) for pid in owned}
        # A partition counts as done once its last peer is: progress moves steadily through a
        # long bootstrap, which is what `meshrag status` computes a rate and an ETA from.
        peers_left = Counter(pid for pids in by_peer.values() for pid in pids)
        self.progress.partitions_done += len(owned) - len(peers_left)  # no live peer to compare with
        for peer, pids in by_peer.items():
            try:
                theirs = await self._peers.roots(peer, pids)
            except Exception as exc:
                self._failed(ledger, pids, f"roots from {peer[:12]}: {exc}")
                self._tick(peers_left, pids)
                continue
            for pid in pids:
                if theirs.get(pid) == roots[pid]:
                    ledger.synced[pid].add(peer)
                else:
                    await self._sync_counted(pid, peer, "both" if leaving or peer in returned else "pull", ledger)
                self._tick(peers_left, [pid])

    def _tick(self, peers_left: Counter[int], pids: list[int]) -> None:
        for pid in pids:
            peers_left[pid] -= 1
            if peers_left[pid] == 0:
                self.progress.partitions_done += 1

    async def _hand_off(self, ring: Ring, leftover: list[int], ledger: _PassLedger) -> None:
        """Push partitions this node no longer owns to their owners; drop them once all are in sync."""
        for pid in leftover:
            owners = [peer for peer in ring.write_owners(pid) if peer != self._local_id]
            for peer in owners:
                if self._is_alive(peer):
                    await self._sync_counted(pid, peer, "push", ledger)
            if owners and all(peer in ledger.synced[pid] for peer in owners):
                await self._drop_fenced(pid, owners)
            self.progress.partitions_done += 1

    async def _drop_fenced(self, pid: int, owners: list[str]) -> None:
        """The final sync and the drop, under the partition's fence: writes admitted
        before it are committed and pushed, later ones are refused (409, the writer
        re-plans), so no write this node acknowledged goes with the dropped copy."""
        async with self._local.fenced(pid):
            for peer in owners:
                try:
                    await self.sync_partition(pid, peer, "push")
                except Exception as exc:
                    self.progress.errors += 1
                    self.progress.last_error = f"final hand-off of partition {pid} to {peer[:12]}: {exc}"
                    log.info("repair: %s; partition %d kept", self.progress.last_error, pid)
                    return
            await self._local.drop(pid)
        self.progress.dropped += 1
        log.info("partition %d handed off to its %d owners and dropped here", pid, len(owners))

    async def _claim_owned(self, ring: Ring, owned: list[int], ledger: _PassLedger) -> None:
        """Claim the owned partitions this node has caught up on: from then on it holds them
        (a search of them here is an answer, even if empty; cluster/holdings.py). Caught up:
        in sync with another current owner, or this node is the only one. Claiming a
        partition already held costs nothing."""
        for pid in owned:
            others = {n for n in ring.current.owners(pid) if n != self._local_id}
            if ledger.synced[pid] & others or (not others and self._local_id in ring.current.owners(pid)):
                await self._local.claim(pid)

    def _advance_status(self, ring: Ring, owned: list[int], held: set[int], ledger: _PassLedger) -> None:
        entry = ring.entries.get(self._local_id)
        if entry is None:
            return
        if entry.status is RingStatus.JOINING and self._bootstrapped(ring, ledger):
            self._on_status(RingStatus.NORMAL)
        elif entry.status is RingStatus.LEAVING and self._handed_off(ring, held, ledger):
            self._on_status(RingStatus.REMOVED)

    def _bootstrapped(self, ring: Ring, ledger: _PassLedger) -> bool:
        """Every partition this node will own was synced from at least one current owner."""
        for pid in ring.partitions_of(self._local_id, "target"):
            sources = [n for n in ring.current.owners(pid) if n != self._local_id]
            if sources and not ledger.synced[pid] & set(sources):
                return False
        return True

    def _handed_off(self, ring: Ring, held: set[int], ledger: _PassLedger) -> bool:
        """Every partition held here is in sync with all of its future owners."""
        for pid in held:
            targets = [n for n in ring.target.owners(pid) if n != self._local_id]
            if not targets or not set(targets) <= ledger.synced[pid]:
                return False
        return True

    # ------------------------------------------------------------ one partition
    async def _root(self, pid: int, held: set[int]) -> str:
        return root_hash(await self._local.hashes(pid) if pid in held else EMPTY_HASHES)

    async def _sync_counted(self, pid: int, peer: str, direction: str, ledger: _PassLedger) -> None:
        try:
            result = await self.sync_partition(pid, peer, direction)
        except Exception as exc:
            self._failed(ledger, [pid], f"partition {pid} with {peer[:12]}: {exc}")
            return
        if result.in_sync:
            ledger.synced[pid].add(peer)

    def _failed(self, ledger: _PassLedger, pids: list[int], message: str) -> None:
        ledger.failed.update(pids)
        self.progress.errors += 1
        self.progress.last_error = message
        log.info("repair: %s", message)

    async def sync_partition(self, pid: int, peer: str, direction: str = "both") -> SyncResult:
        """Make ``peer`` and this node agree on one partition (``pull``: only take what
        is newer there; ``push``: only send what is newer here)."""
        differing, theirs_list = await self._peers.entries(peer, pid, await self._local.hashes(pid))
        result = SyncResult()
        if not differing:
            return result
        mine = {e.doc_id: e for e in await self._local.entries(pid, differing)}
        theirs = {e.doc_id: e for e in theirs_list}
        pull, push = diff_entries(mine, theirs)
        if direction == "pull":
            push = []
        elif direction == "push":
            pull = []
        for batch in _batches(pull):
            docs = await self._peers.fetch(peer, pid, batch)
            size = sum(map(self._size_of, docs))
            await self._limiter.take(size)
            await self._local.apply(docs)
            result.pulled += len(docs)
            result.bytes_in += size
        for batch in _batches(push):
            docs = await self._local.export(pid, batch)
            size = sum(map(self._size_of, docs))
            await self._limiter.take(size)
            await self._peers.push(peer, docs)
            result.pushed += len(docs)
            result.bytes_out += size
        self._count(result)
        return result

    def _count(self, result: SyncResult) -> None:
        self.progress.docs_in += result.pulled
        self.progress.docs_out += result.pushed
        self.progress.bytes_in += result.bytes_in
        self.progress.bytes_out += result.bytes_out


def _batches(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + BATCH_DOCS] for i in range(0, len(ids), BATCH_DOCS)]
