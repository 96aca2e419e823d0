"""The cluster's storage service on this node: wires ring, writes, reads, repair and hints.

node.py builds one ``ClusterService`` with the real parts (storage engine,
hint store, peer client, memberlist) and runs its loops:

* ring exchange: the ring table is pushed to every member on a local change
  and pulled from a random member every ``ring_sync_interval_s``;
* hint replay: hints for replicas gossip sees alive are delivered, oldest first;
* repair: an anti-entropy pass every ``repair_interval_s``, and at once when
  the ring changes or a member comes back.

It also answers the node-to-node requests (api/internal.py calls the
``handle_*`` methods) and implements the adapters the protocol modules take
(LocalReplica and PeerReplicas of repair.py, the callables of writes.py and
reads.py). Blocking storage calls run in the storage executor.
"""

from __future__ import annotations

import asyncio
import logging
import random
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from meshrag.clock import ClockDrift, HybridLogicalClock
from meshrag.cluster import messages as msg
from meshrag.cluster.messages import APPLY_PATH, GET_PATH, RING_PATH, SEARCH_PATH, STATES_PATH
from meshrag.cluster.fence import Fenced, PartitionFence
from meshrag.cluster.handoff import LIVE_STATES, HintedHandoff, typed_refusal
from meshrag.cluster.holdings import Holdings
from meshrag.cluster.reads import Gathered, NodeHits, ReplicaReader
from meshrag.cluster.repair_adapters import LocalStore, PeerStores
from meshrag.cluster.repair import RateLimiter, Repairer, differing_buckets, root_hash
from meshrag.cluster.ringstate import RingState
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.cluster.session import SessionMap, encode_session, merge_sessions
from meshrag.cluster.writes import NotOwnerReply, ReplicatedWriter, WriteOutcome, required_acks
from meshrag.config import ClusterConfig
from meshrag.errors import NotFound, NotOwner, ValidationError, VersionAhead
from meshrag.gossip import EventKind, MemberEvent, Memberlist
from meshrag.gossip.state import MemberState
from meshrag.ring import Ring, RingStatus
from meshrag.ring import partition_for
from meshrag.store.digest import BUCKETS
from meshrag.store.engine import StorageEngine
from meshrag.store.filters import Filter, dump_filter, parse_filter
from meshrag.store.hints import HintStore
from meshrag.store.types import DocState, DocumentWrite, Hit, StoredDocument, WriteResult

log = logging.getLogger(__name__)
T = TypeVar("T")

FETCH_STEP = 16  # documents exported at a time while filling a fetch reply


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
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.settings = settings
        self.ring_state = ring_state
        self.engine = engine
        self.hints = hints
        self.members = members
        self.peers = peers
        self.hlc = hlc
        self._executor = executor
        self._rng = rng or random.Random()
        self._repair_wanted = asyncio.Event()
        self._returned: set[str] = set()  # peers back from suspect/dead since the last pass
        self._hints_wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = ClusterStats()
        self.fence = PartitionFence()
        self.handoff = HintedHandoff(
            hints=hints, peers=peers, members=members, settings=settings, ring_table=lambda: ring_state.table,
            address_of=self.address_of, name_of=self.name_of, is_alive=self.is_alive, blocking=self._blocking,
            apply_path=APPLY_PATH,
        )
        self.holdings = Holdings(ring_state.path.parent)
        self.holdings.load()  # a few bytes, once, before the loops start
        self.writer = ReplicatedWriter(
            node_id, self.ring, self.is_alive, self._apply_local, self._send_docs, self.handoff.store, self.name_of,
            refresh_ring=self._exchange_ring,
        )
        self.reader = ReplicaReader(node_id, self.ring, self.is_alive)
        self.local = LocalStore(
            engine=engine, holdings=self.holdings, fence=self.fence, blocking=self._blocking,
            apply=self.apply_owned,
        )
        self.remote = PeerStores(peers=peers, address_of=self.address_of, blocking=self._blocking, send_docs=self._send_docs)
        self.repairer = Repairer(
            node_id, self.ring, self.is_alive, local=self.local, peers=self.remote,
            limiter=RateLimiter(settings.repair_max_bytes_per_s), size_of=msg.wire_size, on_status=self._set_own_status,
        )
        ring_state.on_change(self._on_ring_change)

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
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

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
            self._spawn(self._read_repair(outcome.doc, outcome.holder, outcome.stale))
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

    async def search(
        self, kinds: Sequence[str], vector: np.ndarray | None, query: str | None, k: int, flt: Filter | None, session: SessionMap
    ) -> Gathered:
        async def on(node_id: str, pids: list[int]) -> NodeHits:
            if node_id == self.node_id:
                return await self._blocking(self.search_local, kinds, vector, query, k, flt, pids)
            body = {"kinds": list(kinds), "vector": vector, "query": query, "k": k, "partitions": pids,
                    "filter": dump_filter(flt) if flt is not None else None}
            reply = await self.peers.call(self.address_of(node_id), SEARCH_PATH, body)
            lists = {kind: [msg.hit_from_wire(h) for h in hits] for kind, hits in reply["hits"].items()}
            return NodeHits(lists, [int(pid) for pid in reply.get("unheld", [])])

        return await self.reader.scatter(session, on)

    def search_local(
        self, kinds: Sequence[str], vector: np.ndarray | None, query: str | None, k: int, flt: Filter | None, pids: list[int]
    ) -> NodeHits:
        """Search the asked partitions this node holds; the others are named as unheld so
        the coordinator asks their next replica (an empty answer is not coverage)."""
        held = self._answering_for(pids)
        searched = [pid for pid in pids if pid in held]
        lists: dict[str, list[Hit]] = {}
        if "dense" in kinds and vector is not None:
            lists["dense"] = self.engine.search_dense(vector, k, flt, partitions=searched)
        if "bm25" in kinds and query:
            lists["bm25"] = self.engine.search_bm25(query, k, flt, partitions=searched)
        return NodeHits(lists, sorted(set(pids) - held))

    def _answering_for(self, pids: Sequence[int]) -> set[int]:
        """Of ``pids``, those this node holds (cluster/holdings.py) or is the only current owner of."""
        ring = self.ring()
        return {pid for pid in pids if pid in self.holdings or ring.current.owners(pid) == [self.node_id]}

    # ------------------------------------------------------------ requests from peers
    async def handle_apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Per document: applied (created/updated/deleted), unchanged, or stale with the
        newer version held here, so the coordinator never reports a write nobody kept."""
        docs = await self._blocking(msg.docs_from_wire, body.get("documents"))
        results = await self.apply_owned(docs, "write")
        return {"results": [msg.result_to_wire(result) for result in results]}

    async def handle_get(self, body: Mapping[str, Any]) -> dict[str, Any]:
        doc = await self.get_local(_text(body, "id"))
        return {"doc": None if doc is None else msg.stored_to_wire(doc)}

    async def handle_states(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ids = [str(i) for i in body.get("ids", [])]
        states = await self._blocking(self.engine.doc_states, ids)
        return {"states": {doc_id: msg.state_to_wire(state) for doc_id, state in states.items()}}

    async def handle_search(self, body: Mapping[str, Any]) -> dict[str, Any]:
        flt = parse_filter(body["filter"]) if body.get("filter") is not None else None
        vector = body.get("vector")
        found = await self._blocking(
            self.search_local, list(body.get("kinds", [])), None if vector is None else np.asarray(vector, np.float32),
            body.get("query"), int(body.get("k", 10)), flt, [int(p) for p in body.get("partitions", [])],
        )
        return {"hits": {kind: [msg.hit_to_wire(h) for h in hits] for kind, hits in found.lists.items()}, "unheld": found.unheld}

    async def handle_roots(self, body: Mapping[str, Any]) -> dict[str, Any]:
        pids = [int(pid) for pid in body.get("partitions", [])]

        def read() -> dict[str, str]:  # msgpack map keys are strings on this wire
            return {str(pid): root_hash(self.engine.bucket_hashes(pid)) for pid in pids}

        return {"roots": await self._blocking(read)}

    async def handle_entries(self, body: Mapping[str, Any]) -> dict[str, Any]:
        pid, theirs = int(body["partition"]), list(body["hashes"])
        if len(theirs) != BUCKETS:
            raise ValidationError(f"hashes must list {BUCKETS} buckets", field="hashes")

        def read() -> dict[str, Any]:  # only the differing buckets' entries are read
            differing = differing_buckets(self.engine.bucket_hashes(pid), theirs)
            entries = self.engine.digest_entries(pid, differing) if differing else []
            return {"buckets": differing, "entries": [msg.entry_to_wire(e) for e in entries]}

        return await self._blocking(read)

    async def handle_fetch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The documents asked for, as many as fit one /_mesh/ message; ``more``: the ids
        left for another request (the puller asks again). Read and converted in one
        storage step."""
        pid, ids = int(body["partition"]), [str(i) for i in body.get("ids", [])]
        budget = msg.message_budget(self.settings.max_message_bytes)

        def fill() -> dict[str, Any]:
            docs: list[DocumentWrite] = []
            size, position = 0, 0
            while position < len(ids):
                exported = self.engine.export(pid, ids[position : position + FETCH_STEP])
                fitting = msg.fitting_prefix(exported, budget - size, at_least_one=not docs)
                docs.extend(fitting)
                size += sum(map(msg.wire_size, fitting))
                if len(fitting) < len(exported):
                    position += _position_after(ids, position, fitting)
                    break
                position += FETCH_STEP
            return {"documents": [msg.doc_to_wire(d) for d in docs], "more": ids[position:]}

        return await self._blocking(fill)

    async def handle_ring(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.merge_ring(body.get("ring") or [])
        return self.ring_state.to_wire()

    # ------------------------------------------------------------ ring changes
    def merge_ring(self, raw: list[Any]) -> None:
        from meshrag.ring import RingEntry

        self.ring_state.merge(RingEntry.from_dict(item) for item in raw)

    def _set_own_status(self, status: RingStatus) -> None:
        self.ring_state.set_status(self.node_id, status, self.hlc.now())

    def _on_ring_change(self, ring: Ring) -> None:
        self._repair_wanted.set()
        self._spawn(self._push_ring_to_all())

    def decommission(self) -> dict[str, Any]:
        entry = self.ring_state.self_entry
        if entry is None or entry.status is RingStatus.REMOVED:
            raise ValidationError("this node is not in the ring", field="node")
        if entry.status is not RingStatus.LEAVING:
            self._set_own_status(RingStatus.LEAVING)
        return self.ring_view()

    def remove(self, name_or_id: str) -> dict[str, Any]:
        entry = next((e for e in self.ring_state.table.entries() if name_or_id in (e.node_id, e.name)), None)
        if entry is None:
            raise NotFound(f"no ring member named {name_or_id!r}", field="node")
        if entry.node_id == self.node_id or self.is_alive(entry.node_id):
            raise ValidationError(
                f"{entry.name} is alive; remove is for dead nodes (run `meshrag decommission` on it instead)", field="node"
            )
        if entry.status is not RingStatus.REMOVED:
            self.ring_state.set_status(entry.node_id, RingStatus.REMOVED, self.hlc.now())
        self._spawn(self._blocking(self.hints.drop_target, entry.node_id))
        return self.ring_view()

    def on_member_event(self, event: MemberEvent) -> None:
        if event.kind in (EventKind.ALIVE, EventKind.JOINED, EventKind.UPDATED) and event.member.node_id != self.node_id:
            self._hints_wanted.set()
            if event.kind is EventKind.ALIVE:
                self._returned.add(event.member.node_id)
            if event.kind is not EventKind.UPDATED:
                self._repair_wanted.set()

    # ------------------------------------------------------------ loops
    def start(self) -> None:
        self._spawn(self._ring_loop())
        self._spawn(self._hint_loop())
        self._spawn(self._repair_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.writer.drain()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _live_peers(self) -> list[str]:
        return [m.node_id for m in self.members.members() if m.node_id != self.node_id and m.state in LIVE_STATES]

    async def _exchange_ring(self, node_id: str) -> None:
        try:
            reply = await self.peers.call(self.address_of(node_id), RING_PATH, {"ring": self.ring_state.table.to_list()}, timeout_s=5.0)
            self.merge_ring(reply.get("ring") or [])
        except PeerError as exc:
            log.debug("ring exchange with %s failed: %s", node_id[:12], exc)

    async def _push_ring_to_all(self) -> None:
        await asyncio.gather(*(self._exchange_ring(node_id) for node_id in self._live_peers()))

    async def _ring_loop(self) -> None:
        while True:
            peers = self._live_peers()
            if peers:
                await self._exchange_ring(self._rng.choice(peers))
            self._auto_remove()
            await asyncio.sleep(self.settings.ring_sync_interval_s)

    def _auto_remove(self) -> None:
        """Optional: remove members dead longer than auto_remove_after_s (0 = never).
        Only the lowest-id live normal member decides, so one node acts."""
        limit = self.settings.auto_remove_after_s
        if limit <= 0:
            return
        ring = self.ring()
        deciders = sorted(n for n, e in ring.entries.items() if e.status is RingStatus.NORMAL and self.is_alive(n))
        if not deciders or deciders[0] != self.node_id:
            return
        now = self.members.clock.wall()
        for node_id, entry in ring.entries.items():
            member = self.members.member(node_id)
            if member is None or member.state not in (MemberState.DEAD, MemberState.LEFT):
                continue
            if entry.status in (RingStatus.NORMAL, RingStatus.LEAVING) and now - member.since > limit:
                log.warning("auto-removing %s: dead for %.0f s", entry.name, now - member.since)
                self.ring_state.set_status(node_id, RingStatus.REMOVED, self.hlc.now())

    async def _hint_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._hints_wanted.wait(), timeout=self.settings.hint_replay_interval_s)
            except asyncio.TimeoutError:
                pass
            self._hints_wanted.clear()
            try:
                await self.handoff.replay()
            except Exception:
                log.exception("hint replay failed")

    async def _repair_loop(self) -> None:
        self._repair_wanted.set()  # a pass at start: catch up on what was missed while down
        while True:
            try:
                await asyncio.wait_for(self._repair_wanted.wait(), timeout=self.settings.repair_interval_s)
                reason = "triggered"
            except asyncio.TimeoutError:
                reason = "periodic"
            self._repair_wanted.clear()
            returned, self._returned = frozenset(self._returned), set()
            try:
                await self.repairer.run_pass(reason, returned)
            except Exception:
                log.exception("repair pass failed")
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------ status
    def ring_view(self) -> dict[str, Any]:
        ring = self.ring()
        wanted = lambda pid: min(ring.replicas, len(ring.current.zones) or ring.replicas)  # noqa: E731
        under = [pid for pid in range(ring.partitions)
                 if sum(1 for n in ring.read_owners(pid) if self.is_alive(n)) < wanted(pid) or ring.pending(pid)]
        entry = self.ring_state.self_entry
        return {
            "partitions": ring.partitions,
            "replicas": ring.replicas,
            "status": entry.status.value if entry else None,
            "local_partitions": len(self.engine.local_partitions()),
            "nodes": [dict(v, id=k, alive=self.is_alive(k)) for k, v in sorted(ring.summary().items(), key=lambda kv: kv[1]["name"])],
            "under_replicated": under,
            "repair": self.repairer.progress.as_dict(),
        }

    async def hints_view(self) -> dict[str, Any]:
        pending = await self._blocking(self.hints.pending)
        return {self.name_of(t): {"hints": p.hints, "documents": p.documents, "bytes": p.bytes} for t, p in pending.items()}


def _position_after(ids: list[str], start: int, taken: list[DocumentWrite]) -> int:
    """How many ids from ``start`` on were answered: taken ones, and absent ones before the last taken."""
    if not taken:
        return 0
    return ids.index(taken[-1].doc_id, start) - start + 1


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ValidationError(f"{key} must be a string", field=key)
    return value
