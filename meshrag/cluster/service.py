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

from meshrag import wire
from meshrag.clock import HybridLogicalClock
from meshrag.cluster import messages as msg
from meshrag.cluster.reads import Gathered, ReplicaReader
from meshrag.cluster.repair import BUCKETS, RateLimiter, Repairer, bucket_hashes, bucket_of, differing_buckets, root_hash
from meshrag.cluster.ringstate import RingState
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.cluster.session import SessionMap, encode_session, merge_sessions
from meshrag.cluster.writes import ReplicatedWriter, WriteOutcome, required_acks
from meshrag.config import ClusterConfig
from meshrag.errors import NotFound, ValidationError
from meshrag.gossip import EventKind, MemberEvent, Memberlist
from meshrag.gossip.state import MemberState
from meshrag.ring import Ring, RingStatus
from meshrag.store.engine import StorageEngine, partition_for
from meshrag.store.filters import Filter, dump_filter, parse_filter
from meshrag.store.hints import HintStore
from meshrag.store.types import DigestEntry, DocState, DocumentWrite, Hit, StoredDocument

log = logging.getLogger(__name__)
T = TypeVar("T")

APPLY_PATH = "/_mesh/replica/apply"
GET_PATH = "/_mesh/replica/get"
STATES_PATH = "/_mesh/replica/states"
SEARCH_PATH = "/_mesh/search"
ROOTS_PATH = "/_mesh/repair/roots"
ENTRIES_PATH = "/_mesh/repair/entries"
FETCH_PATH = "/_mesh/repair/fetch"
RING_PATH = "/_mesh/ring"
HINTS_PER_ROUND = 16
LIVE_STATES = (MemberState.ALIVE, MemberState.SUSPECT)


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
        self.writer = ReplicatedWriter(node_id, self.ring, self.is_alive, self._apply_local, self._send_docs, self._store_hint, self.name_of)
        self.reader = ReplicaReader(node_id, self.ring, self.is_alive)
        self.repairer = Repairer(
            node_id, self.ring, self.is_alive, local=_LocalAdapter(self), peers=_PeerAdapter(self),
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

    async def _apply_local(self, docs: list[DocumentWrite]) -> object:
        return await self._blocking(self.engine.upsert, docs)

    async def _send_docs(self, node_id: str, docs: list[DocumentWrite]) -> object:
        return await self.peers.call(self.address_of(node_id), APPLY_PATH, {"documents": [msg.doc_to_wire(d) for d in docs]})

    async def _store_hint(self, node_id: str, docs: list[DocumentWrite]) -> None:
        body = wire.pack({"documents": [msg.doc_to_wire(d) for d in docs]})
        await self._blocking(self.hints.add, node_id, body, len(docs))

    # ------------------------------------------------------------ reads
    async def get(self, doc_id: str, session: SessionMap) -> StoredDocument | None:
        return await self.reader.get(doc_id, session, self._get_on)

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
        per_doc = await self.reader.states_on_replicas(doc_ids, self._states_on)
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

    async def _states_on(self, node_id: str, doc_ids: list[str]) -> dict[str, DocState]:
        if node_id == self.node_id:
            return await self._blocking(self.engine.doc_states, doc_ids)
        reply = await self.peers.call(self.address_of(node_id), STATES_PATH, {"ids": doc_ids})
        return {doc_id: msg.state_from_wire(state) for doc_id, state in reply["states"].items()}

    async def search(
        self, kinds: Sequence[str], vector: np.ndarray | None, query: str | None, k: int, flt: Filter | None, session: SessionMap
    ) -> Gathered:
        async def on(node_id: str, pids: list[int]) -> dict[str, list[Hit]]:
            if node_id == self.node_id:
                return await self._blocking(self.search_local, kinds, vector, query, k, flt, pids)
            body = {"kinds": list(kinds), "vector": vector, "query": query, "k": k, "partitions": pids,
                    "filter": dump_filter(flt) if flt is not None else None}
            reply = await self.peers.call(self.address_of(node_id), SEARCH_PATH, body)
            return {kind: [msg.hit_from_wire(h) for h in hits] for kind, hits in reply["hits"].items()}

        return await self.reader.scatter(session, on)

    def search_local(
        self, kinds: Sequence[str], vector: np.ndarray | None, query: str | None, k: int, flt: Filter | None, pids: list[int]
    ) -> dict[str, list[Hit]]:
        lists: dict[str, list[Hit]] = {}
        if "dense" in kinds and vector is not None:
            lists["dense"] = self.engine.search_dense(vector, k, flt, partitions=pids)
        if "bm25" in kinds and query:
            lists["bm25"] = self.engine.search_bm25(query, k, flt, partitions=pids)
        return lists

    # ------------------------------------------------------------ requests from peers
    async def handle_apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        docs = msg.docs_from_wire(body.get("documents"))
        for doc in docs:
            self.hlc.observe(doc.version)  # our next versions stay ahead of any we stored
        results = await self._blocking(self.engine.upsert, docs)
        return {"applied": len(results)}

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
        lists = await self._blocking(
            self.search_local, list(body.get("kinds", [])), None if vector is None else np.asarray(vector, np.float32),
            body.get("query"), int(body.get("k", 10)), flt, [int(p) for p in body.get("partitions", [])],
        )
        return {"hits": {kind: [msg.hit_to_wire(h) for h in hits] for kind, hits in lists.items()}}

    async def handle_roots(self, body: Mapping[str, Any]) -> dict[str, Any]:
        roots: dict[str, str] = {}  # msgpack map keys are strings on this wire
        for pid in body.get("partitions", []):
            roots[str(int(pid))] = root_hash(bucket_hashes(await self._entries(int(pid))))
        return {"roots": roots}

    async def handle_entries(self, body: Mapping[str, Any]) -> dict[str, Any]:
        pid, theirs = int(body["partition"]), list(body["hashes"])
        if len(theirs) != BUCKETS:
            raise ValidationError(f"hashes must list {BUCKETS} buckets", field="hashes")
        entries = await self._entries(pid)
        differing = differing_buckets(bucket_hashes(entries), theirs)
        wanted = set(differing)
        chosen = [msg.entry_to_wire(e) for e in entries if bucket_of(e.doc_id) in wanted]
        return {"buckets": differing, "entries": chosen}

    async def handle_fetch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        docs = await self._export(int(body["partition"]), [str(i) for i in body.get("ids", [])])
        return {"documents": [msg.doc_to_wire(d) for d in docs]}

    async def handle_ring(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.merge_ring(body.get("ring") or [])
        return self.ring_state.to_wire()

    async def _entries(self, pid: int) -> list[DigestEntry]:
        def read() -> list[DigestEntry]:
            try:
                return self.engine.partition(pid).digest_entries()
            except KeyError:
                return []

        return await self._blocking(read)

    async def _export(self, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        def read() -> list[DocumentWrite]:
            try:
                return self.engine.partition(pid).export(doc_ids)
            except KeyError:
                return []

        return await self._blocking(read)

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
                await self.replay_hints()
            except Exception:
                log.exception("hint replay failed")

    async def replay_hints(self) -> int:
        """Deliver hints to every replica that is alive again; returns documents delivered."""
        delivered = 0
        pending = await self._blocking(self.hints.pending)
        for target in pending:
            entry = self.ring_state.table.get(target)
            if entry is not None and entry.status is RingStatus.REMOVED:
                await self._blocking(self.hints.drop_target, target)
                continue
            if not self.is_alive(target):
                continue
            delivered += await self._replay_to(target)
        return delivered

    async def _replay_to(self, target: str) -> int:
        delivered = 0
        while hints := await self._blocking(self.hints.next_for, target, HINTS_PER_ROUND):
            for hint in hints:
                try:
                    await self.peers.call_packed(self.address_of(target), APPLY_PATH, hint.body)
                except PeerError as exc:
                    log.info("hint replay to %s paused: %s", self.name_of(target), exc)
                    return delivered
                await self._blocking(self.hints.remove, [hint.hint_id])
                delivered += hint.documents
        if delivered:
            log.info("replayed %d hinted documents to %s", delivered, self.name_of(target))
        return delivered

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


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ValidationError(f"{key} must be a string", field=key)
    return value


class _LocalAdapter:
    """This node's storage as repair.py's LocalReplica."""

    def __init__(self, service: ClusterService) -> None:
        self._s = service

    async def held(self) -> list[int]:
        return self._s.engine.local_partitions()

    async def entries(self, pid: int) -> list[DigestEntry]:
        return await self._s._entries(pid)

    async def export(self, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        return await self._s._export(pid, doc_ids)

    async def apply(self, docs: list[DocumentWrite]) -> None:
        if docs:
            await self._s._blocking(self._s.engine.upsert, docs)

    async def drop(self, pid: int) -> None:
        await self._s._blocking(self._s.engine.drop_partition, pid)


class _PeerAdapter:
    """Other nodes as repair.py's PeerReplicas."""

    def __init__(self, service: ClusterService) -> None:
        self._s = service

    async def _call(self, node_id: str, path: str, body: dict[str, Any]) -> Any:
        return await self._s.peers.call(self._s.address_of(node_id), path, body)

    async def roots(self, node_id: str, pids: list[int]) -> dict[int, str]:
        reply = await self._call(node_id, ROOTS_PATH, {"partitions": pids})
        return {int(pid): str(root) for pid, root in reply["roots"].items()}

    async def entries(self, node_id: str, pid: int, hashes: list[str]) -> tuple[list[int], list[DigestEntry]]:
        reply = await self._call(node_id, ENTRIES_PATH, {"partition": pid, "hashes": hashes})
        return [int(b) for b in reply["buckets"]], [msg.entry_from_wire(e) for e in reply["entries"]]

    async def fetch(self, node_id: str, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        reply = await self._call(node_id, FETCH_PATH, {"partition": pid, "ids": doc_ids})
        return msg.docs_from_wire(reply["documents"])

    async def push(self, node_id: str, docs: list[DocumentWrite]) -> None:
        await self._call(node_id, APPLY_PATH, {"documents": [msg.doc_to_wire(d) for d in docs]})
