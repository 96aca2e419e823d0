"""The cluster's storage service on this node: wires ring, writes, reads, repair and hints.

node.py builds one ``ClusterService`` with the real parts (storage engine,
hint store, peer client, memberlist, storage executor). It builds the protocol
parts on them (writes.py, reads.py, repair.py through repair_adapters.py,
handoff.py), its background work (``loops``: cluster/loops.py) and its operator
actions and views (``admin``: cluster/admin.py), and coordinates the write and
read paths itself: ownership and clock-drift checks on apply, reads at a
consistency level with read repair, the prior states an ingest compares with.
What it answers other nodes on /_mesh/ is api/mesh_handlers.py's. Blocking
storage calls run in the storage executor.
"""

from __future__ import annotations

import asyncio
import logging
import random
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar


from meshrag.clock import ClockDrift, HybridLogicalClock, SystemClock
from meshrag.cluster.bm25stats import TermStatsCache
from meshrag.cluster.breaker import BreakerBoard, BreakerSettings
from meshrag.cluster.hit_cache import HitCache
from meshrag.cluster.scatter import ScatterPolicy, Scatterer
from meshrag.cluster.search import DistributedSearch, LocalSearcher
from meshrag.cluster.selection import HedgeBudget, HedgeSettings, LatencyTracker
from meshrag.cluster import messages as msg
from meshrag.cluster.messages import APPLY_PATH, GET_PATH, STATES_PATH
from meshrag.cluster.admin import ClusterAdmin
from meshrag.cluster.inspection import ClusterInspector
from meshrag.cluster.fence import Fenced, PartitionFence
from meshrag.cluster.handoff import LIVE_STATES, HintedHandoff, typed_refusal
from meshrag.cluster.holdings import Holdings
from meshrag.cluster.loops import ClusterLoops
from meshrag.cluster.reads import ReplicaReader
from meshrag.cluster.repair_adapters import LocalStore, PeerStores
from meshrag.cluster.repair import RateLimiter, Repairer
from meshrag.cluster.ringstate import RingState
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.cluster.session import SessionMap, encode_session, merge_sessions
from meshrag.cluster.writes import NotOwnerReply, ReplicatedWriter, WriteOutcome, required_acks
from meshrag.config import ClusterConfig, SearchConfig
from meshrag.errors import NotOwner, VersionAhead
from meshrag.security.api_keys import ApiKeyStore
from meshrag.faults import NO_FAULTS, InjectedFaults, SkippingTombstones, acknowledge_then_commit
from meshrag.gossip import Memberlist
from meshrag.ring import Ring, RingStatus
from meshrag.ring import partition_for
from meshrag.store.engine import StorageEngine
from meshrag.store.hints import HintStore
from meshrag.store.analysis import Analyzer
from meshrag.store.types import DocState, DocumentWrite, StoredDocument, WriteResult

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ClusterStats:
    """Counters the metrics collector exports (observability.ClusterCollector)."""

    drift_rejections: dict[str, int] = field(default_factory=lambda: {"write": 0, "repair": 0, "read": 0})
    not_owner_refusals: int = 0
    read_repairs: int = 0


@dataclass
class PriorStates:
    existing: set[str] = field(default_factory=set)               # live on some replica
    unchanged: dict[str, DocState] = field(default_factory=dict)  # same content on >= W replicas


class ClusterService:
    def __init__(
        self,
        *,
        node_id: str,
        settings: ClusterConfig,
        ring_state: RingState,
        engine: StorageEngine,
        hints: HintStore,
        members: Memberlist,
        peers: PeerClient,
        hlc: HybridLogicalClock,
        executor: Executor,
        search: SearchConfig | None = None,
        analyzer: Analyzer | None = None,
        rng: random.Random | None = None,
        faults: InjectedFaults = NO_FAULTS,
        api_keys: ApiKeyStore | None = None,
    ) -> None:
        self.node_id = node_id
        self.faults = faults  # deliberate bugs, tests of the chaos checker only (meshrag/faults.py)
        self.api_keys = api_keys  # cluster-wide, spread by the ring exchange (security/api_keys.py)
        self.settings = settings
        self.ring_state = ring_state
        self.engine = engine
        self.hints = hints
        self.members = members
        self.peers = peers
        self.hlc = hlc
        self.executor = executor  # the storage executor (also api/mesh_handlers.py's)
        self.stats = ClusterStats()
        self.fence = PartitionFence()
        self.handoff = HintedHandoff(
            hints=hints, peers=peers, members=members, settings=settings, ring_table=lambda: ring_state.table,
            address_of=self.address_of, name_of=self.name_of, is_alive=self.is_alive, blocking=self._blocking,
            apply_path=APPLY_PATH,
        )
        self.holdings = Holdings(ring_state.path.parent)
        self.holdings.load()  # a few bytes, once, before the loops start
        self.holdings.release_unowned(_owned_by(ring_state.ring, node_id))  # the file catches up on the next change
        self.local = LocalStore(
            engine=engine, holdings=self.holdings, fence=self.fence, blocking=self._blocking,
            apply=self.apply_owned, owns=lambda pid: self.ring().owns(self.node_id, pid),
        )
        self.remote = PeerStores(peers=peers, address_of=self.address_of, blocking=self._blocking, send_docs=self._send_docs)
        repair_local, repair_peers = self.local, self.remote
        if faults.repair_skips_tombstones:
            repair_local, repair_peers = SkippingTombstones(self.local), SkippingTombstones(self.remote)
        self.repairer = Repairer(
            node_id, self.ring, self.is_alive, local=repair_local, peers=repair_peers,
            limiter=RateLimiter(settings.repair_max_bytes_per_s), size_of=msg.wire_size, on_status=self._set_own_status,
        )
        self.loops = ClusterLoops(
            node_id=node_id, settings=settings, ring_state=ring_state, members=members, peers=peers, hlc=hlc,
            address_of=self.address_of, is_alive=self.is_alive, handoff=self.handoff, repairer=self.repairer,
            rng=rng or random.Random(), shared_out=self.shared_state, shared_in=self.merge_shared_state,
        )
        # A write refused by a node with a newer ring pulls that ring before re-planning.
        self.writer = ReplicatedWriter(
            node_id, self.ring, self.is_alive, self._apply_local, self._send_docs, self.handoff.store, self.name_of,
            refresh_ring=self.loops.exchange_ring,
        )
        self.reader = ReplicaReader(node_id, self.ring, self.is_alive)
        self.admin = ClusterAdmin(
            node_id=node_id, ring_state=ring_state, hlc=hlc, engine=engine, hints=hints, repairer=self.repairer,
            is_alive=self.is_alive, name_of=self.name_of, blocking=self._blocking, spawn=self.loops.spawn,
        )
        # `meshrag status` and `verify` from this node: reports from every ring member (cluster/inspection.py).
        self.inspector = ClusterInspector(
            node_id=node_id, ring_state=ring_state, engine=engine, hints=hints, repairer=self.repairer, is_alive=self.is_alive,
            name_of=self.name_of, blocking=self._blocking, call=self._call_peer,
        )
        ring_state.on_change(self._release_unowned_holdings)
        ring_state.on_change(self.loops.on_ring_change)
        self.breakers, self.search = self._build_search(search or SearchConfig(), analyzer or Analyzer())
        ring_state.on_change(lambda ring: self.breakers.set_peers(n for n in ring.entries if n != node_id))

    def _build_search(self, config: SearchConfig, analyzer: Analyzer) -> tuple[BreakerBoard, DistributedSearch]:
        """Scatter-gather search with its shared state: one breaker and latency record per peer
        (on the monotonic clock asyncio's timers use too), one hedge budget, one term-statistics cache."""
        clock = SystemClock()
        breakers = BreakerBoard(
            BreakerSettings(consecutive_failures=config.breaker_failures, open_s=config.breaker_open_s, max_open_s=config.breaker_max_open_s),
            clock,
        )
        breakers.set_peers(n for n in self.ring().entries if n != self.node_id)
        hedging = HedgeSettings(floor_ms=config.hedge_floor_ms, cap_ms=config.hedge_cap_ms, max_ratio=config.hedge_max_ratio)
        scatterer = Scatterer(ScatterPolicy(self.node_id, LatencyTracker(clock), breakers, hedging, HedgeBudget(hedging)))
        search = DistributedSearch(
            local_id=self.node_id, ring=self.ring, is_alive=self.is_alive, scatterer=scatterer,
            local=LocalSearcher(self.engine, self._answering_for, self._blocking, HitCache(clock)), call=self._call_peer,
            analyzer=analyzer, stats_cache=TermStatsCache(clock, config.bm25_stats_ttl_s),
            inline_text_max_nodes=config.inline_text_max_nodes,
        )
        return breakers, search

    async def _call_peer(self, node_id: str, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        reply: dict[str, Any] = await self.peers.call(self.address_of(node_id), path, body, timeout_s=max(timeout_s, 0.001))
        return reply

    # ------------------------------------------------------------ membership views
    def ring(self) -> Ring:
        return self.ring_state.ring

    def is_alive(self, node_id: str) -> bool:
        if node_id == self.node_id:
            return True
        member = self.members.member(node_id)
        return member is not None and member.state in LIVE_STATES

    def address_of(self, node_id: str) -> str:
        member = self.members.member(node_id)
        if member is None:
            raise PeerError(node_id[:12], "not a known member")
        return str(member.meta.get("http") or member.address)

    def name_of(self, node_id: str) -> str:
        entry = self.ring_state.table.get(node_id)
        return entry.name if entry else node_id[:12]

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _set_own_status(self, status: RingStatus) -> None:
        """repair.py's ``on_status``: bootstrapped (normal), or everything handed off (removed)."""
        self.ring_state.set_status(self.node_id, status, self.hlc.now())

    # ------------------------------------------------------------ writes
    async def write(self, docs: Sequence[DocumentWrite], consistency: str, session: SessionMap) -> tuple[WriteOutcome, str]:
        outcome = await self.writer.write(docs, consistency)
        return outcome, encode_session(merge_sessions(session, outcome.acked))

    async def _apply_local(self, docs: list[DocumentWrite]) -> list[WriteResult]:
        try:
            return await self.apply_owned(docs)
        except NotOwner as exc:
            raise NotOwnerReply(exc.message) from None

    async def _send_docs(self, node_id: str, docs: list[DocumentWrite]) -> list[WriteResult]:
        """Apply on a peer, in as many requests as the /_mesh/ body limit needs; per-document results."""
        results: list[WriteResult] = []
        for batch in msg.split_to_fit(docs, self.settings.max_message_bytes):
            body = await self._blocking(msg.apply_body, batch)  # a stack of vectors per document: off the loop
            try:
                reply = await self.peers.call(self.address_of(node_id), APPLY_PATH, body)
            except PeerError as exc:
                raise typed_refusal(exc) from None
            results.extend(msg.results_from_wire(reply, batch))
        return results

    async def apply_owned(self, docs: list[DocumentWrite], source: str = "write", skip_drifted: bool = False) -> list[WriteResult]:
        """Apply documents of partitions this node owns or is handing off, inside the fence.

        Refused as a whole, before anything is applied: a partition this node neither owns
        nor holds, or one being handed off right now (NotOwner, 409, with this node's ring
        version), and a version beyond the clock-drift bound (VersionAhead) unless
        ``skip_drifted`` (repair: the rest of the batch still applies).
        """
        if self.faults.ack_before_commit and source == "write":
            return acknowledge_then_commit(docs, lambda: self._commit_owned(docs, source, skip_drifted), self.loops.spawn)
        return await self._commit_owned(docs, source, skip_drifted)

    async def _commit_owned(self, docs: list[DocumentWrite], source: str, skip_drifted: bool) -> list[WriteResult]:
        docs = self._within_drift(docs, source, skip_drifted)
        ring = self.ring()
        pids = {partition_for(doc.doc_id, ring.partitions) for doc in docs}
        try:
            async with self.fence.writing(pids):
                # Checked inside the fence: a hand-off cannot drop a partition between
                # this check and the commit, since it waits for admitted writes.
                self._check_owned(pids)
                return await self._blocking(self.engine.upsert, docs)
        except Fenced as exc:
            self.stats.not_owner_refusals += 1
            raise NotOwner(f"{exc}; ring version {self.ring_state.table.fingerprint()}", field="documents") from None

    def _observe(self, version: int, source: str, doc_id: str) -> ClockDrift | None:
        """Fold ``version`` into our clock, so our next versions sort after it; a version
        beyond the clock-drift bound is not folded in, but counted, logged and returned."""
        try:
            self.hlc.observe(version)
            return None
        except ClockDrift as exc:
            self.stats.drift_rejections[source] += 1
            log.warning("%s of %s beyond the clock-drift bound: %s", source, doc_id, exc)
            return exc

    def _within_drift(self, docs: list[DocumentWrite], source: str, skip_drifted: bool) -> list[DocumentWrite]:
        """``docs`` observed by our clock; one beyond the drift bound is skipped, or refuses the
        whole batch (VersionAhead, before anything is applied)."""
        kept = []
        for index, doc in enumerate(docs):
            drift = self._observe(doc.version, source, doc.doc_id)
            if drift is None:
                kept.append(doc)
            elif not skip_drifted:
                raise VersionAhead(f"{doc.doc_id}: {drift}", field=f"documents[{index}].version")
        return kept

    def _check_owned(self, pids: set[int]) -> None:
        ring = self.ring()
        held = set(self.engine.local_partitions())
        foreign = sorted(pid for pid in pids if not ring.owns(self.node_id, pid) and pid not in held)
        if foreign:
            self.stats.not_owner_refusals += 1
            raise NotOwner(
                f"this node neither owns nor hands off partitions {foreign[:16]}; "
                f"ring version {self.ring_state.table.fingerprint()}", field="documents",
            )

    # ------------------------------------------------------------ reads
    async def get(self, doc_id: str, session: SessionMap, consistency: str = "quorum") -> StoredDocument | None:
        """The newest copy among ``consistency`` replicas; the ones behind it are repaired in the background."""
        outcome = await self.reader.get(doc_id, session, self._get_on, consistency)
        if outcome.doc is not None and outcome.holder is not None and outcome.stale:
            self.loops.spawn(self._read_repair(outcome.doc, outcome.holder, outcome.stale))
        return outcome.doc

    async def _read_repair(self, doc: StoredDocument, holder: str, stale: list[str]) -> None:
        """Bring replicas that answered an older copy (or none) up to the newest one,
        with its vectors as stored (nothing is re-embedded)."""
        try:
            if holder == self.node_id:
                copies = await self.local.export(doc.partition, [doc.doc_id])
            else:
                copies = await self.remote.fetch(holder, doc.partition, [doc.doc_id])
            for node_id in stale:
                if node_id == self.node_id:
                    await self.apply_owned(copies, "repair", skip_drifted=True)
                else:
                    await self._send_docs(node_id, copies)
            self.stats.read_repairs += len(stale)
            log.info("read repair: %s to version %d on %d replicas", doc.doc_id, doc.version, len(stale))
        except Exception as exc:  # anti-entropy will get there; a read must not fail for it
            log.info("read repair of %s failed: %s", doc.doc_id, exc)

    async def _get_on(self, node_id: str, doc_id: str) -> StoredDocument | None:
        if node_id == self.node_id:
            return await self._blocking(self.engine.get, doc_id)
        reply = await self.peers.call(self.address_of(node_id), GET_PATH, {"id": doc_id})
        return None if reply.get("doc") is None else msg.stored_from_wire(reply["doc"])

    async def get_local(self, doc_id: str) -> StoredDocument | None:
        return await self._blocking(self.engine.get, doc_id)

    async def prior_states(self, doc_ids: Sequence[str], hashes: Sequence[str], consistency: str) -> PriorStates:
        """What the replicas hold of these documents, to skip re-embedding unchanged ones.

        A document counts as unchanged only if at least W replicas hold the same
        content: after a write whose outcome was unknown, the retry must reach W
        replicas, not stop at the one that has it.
        """
        per_doc = await self.read_versions(doc_ids)
        ring = self.ring()
        prior = PriorStates()
        for doc_id, digest in zip(doc_ids, hashes):
            states = per_doc.get(doc_id, [])
            if any(not state.deleted for state in states):
                prior.existing.add(doc_id)
            pid = partition_for(doc_id, ring.partitions)
            needed = required_acks(consistency, len(ring.current.owners(pid)) or len(ring.write_owners(pid)))
            same = [state for state in states if not state.deleted and state.content_hash == digest]
            if len(same) >= needed:
                prior.unchanged[doc_id] = max(same, key=lambda state: state.version)
        return prior

    async def read_versions(self, doc_ids: Sequence[str]) -> dict[str, list[DocState]]:
        """Each document's state on its live replicas, every version observed by our clock
        first, so a write stamped next sorts after what it read even when this node's
        clock is behind. A version beyond the drift bound is not observed: a write
        stamped here then loses to it and is reported superseded."""
        per_doc = await self.reader.states_on_replicas(doc_ids, self._states_on)
        for doc_id, states in per_doc.items():
            for state in states:
                self._observe(state.version, "read", doc_id)
        return per_doc

    async def _states_on(self, node_id: str, doc_ids: list[str]) -> dict[str, DocState]:
        if node_id == self.node_id:
            return await self._blocking(self.engine.doc_states, doc_ids)
        reply = await self.peers.call(self.address_of(node_id), STATES_PATH, {"ids": doc_ids})
        return {doc_id: msg.state_from_wire(state) for doc_id, state in reply["states"].items()}

    # ------------------------------------------------------------ state on the ring exchange
    def shared_state(self) -> dict[str, Any]:
        """Cluster-wide state every ring exchange carries both ways: the API keys."""
        return {"api_keys": self.api_keys.to_wire()} if self.api_keys is not None else {}

    def merge_shared_state(self, body: Mapping[str, Any]) -> None:
        """A peer's shared state folded into ours; a change is saved off the event loop."""
        items = body.get("api_keys")
        if self.api_keys is not None and isinstance(items, list) and self.api_keys.merge(items):
            self.loops.spawn(self._blocking(self.api_keys.save))

    def _release_unowned_holdings(self, ring: Ring) -> None:
        """A partition this ring moves away stops being held at once: writes no longer reach
        this node, and should the ring give it back, repair must catch it up before it answers."""
        if self.holdings.release_unowned(_owned_by(ring, self.node_id)):
            self.loops.spawn(self._blocking(self.holdings.save))

    def _answering_for(self, pids: Sequence[int]) -> set[int]:
        """Of ``pids``, those this node holds (cluster/holdings.py) or is the only current owner of."""
        ring = self.ring()
        return {pid for pid in pids if pid in self.holdings or ring.current.owners(pid) == [self.node_id]}


def _owned_by(ring: Ring, node_id: str) -> set[int]:
    """The partitions ``node_id`` takes writes for in ``ring``."""
    return {pid for pid in range(ring.partitions) if ring.owns(node_id, pid)}
