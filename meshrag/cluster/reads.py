"""Reads across replicas: document lookups, doc states and scatter-gather search.

For each partition the reader tries replicas in order: those named by the
request's session token first (they hold the session's writes), then the
current owners; alive ones only, this node first (no network hop). Search
groups partitions by the replica chosen, sends one request per node, fails
over a node's partitions to their next replica on error, and reports the
coverage (fraction of partitions answered) and the missing partitions
instead of failing the whole query.

The local store and the peer calls are injected (node.py wires them).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

from meshrag.ring import Ring
from meshrag.store.engine import partition_for
from meshrag.store.types import DocState, Hit, StoredDocument

log = logging.getLogger(__name__)

# (node_id, partitions) -> {"dense": [...], "bm25": [...]} as asked
SearchCall = Callable[[str, list[int]], Awaitable[dict[str, list[Hit]]]]
GetCall = Callable[[str, str], Awaitable[StoredDocument | None]]
StatesCall = Callable[[str, list[str]], Awaitable[dict[str, DocState]]]


@dataclass
class Gathered:
    lists: dict[str, list[Hit]]
    answered: list[int]
    missing: list[int]
    nodes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        total = len(self.answered) + len(self.missing)
        return 1.0 if total == 0 else round(len(self.answered) / total, 4)


class NoReplica(Exception):
    def __init__(self, pid: int, tried: list[str]) -> None:
        super().__init__(f"no replica of partition {pid} answered (tried {len(tried)})")
        self.pid = pid
        self.tried = tried


class ReplicaReader:
    def __init__(self, local_id: str, ring: Callable[[], Ring], is_alive: Callable[[str], bool]) -> None:
        self._local_id = local_id
        self._ring = ring
        self._is_alive = is_alive

    def replicas_for(self, pid: int, session: Mapping[int, list[str]] | None = None) -> list[str]:
        """Replicas to try for one partition, best first."""
        ring = self._ring()
        owners = ring.read_owners(pid)
        preferred = [node for node in (session or {}).get(pid, []) if node in ring.entries]
        ordered: list[str] = []
        for group in (preferred, owners):
            alive = [node for node in group if node == self._local_id or self._is_alive(node)]
            alive.sort(key=lambda node: node != self._local_id)  # stable: local first
            ordered.extend(node for node in alive if node not in ordered)
        return ordered

    async def first_answer(self, pid: int, session: Mapping[int, list[str]] | None, call: Callable[[str], Awaitable[Any]]) -> Any:
        tried: list[str] = []
        for node in self.replicas_for(pid, session):
            tried.append(node)
            try:
                return await call(node)
            except Exception as exc:
                log.info("replica %s of partition %d failed: %s", node[:12], pid, exc)
        raise NoReplica(pid, tried)

    async def get(self, doc_id: str, session: Mapping[int, list[str]] | None, get: GetCall) -> StoredDocument | None:
        pid = partition_for(doc_id, self._ring().partitions)
        return await self.first_answer(pid, session, lambda node: get(node, doc_id))

    async def states_on_replicas(self, doc_ids: Sequence[str], states: StatesCall) -> dict[str, list[DocState]]:
        """Each document's state on every live write owner of its partition (a replica that
        does not answer, or does not hold the document, contributes nothing)."""
        ring = self._ring()
        groups: dict[str, list[str]] = defaultdict(list)
        for doc_id in doc_ids:
            for node in ring.write_owners(partition_for(doc_id, ring.partitions)):
                if node == self._local_id or self._is_alive(node):
                    groups[node].append(doc_id)

        async def one(node: str, ids: list[str]) -> dict[str, DocState]:
            try:
                return await states(node, ids)
            except Exception as exc:
                log.info("states from %s failed: %s", node[:12], exc)
                return {}

        found: dict[str, list[DocState]] = defaultdict(list)
        for part in await asyncio.gather(*(one(node, ids) for node, ids in groups.items())):
            for doc_id, state in part.items():
                found[doc_id].append(state)
        return dict(found)

    async def scatter(self, session: Mapping[int, list[str]] | None, search: SearchCall, partitions: Sequence[int] | None = None) -> Gathered:
        """Ask one replica per partition, fail over once per replica, merge the lists."""
        ring = self._ring()
        wanted = list(range(ring.partitions)) if partitions is None else list(partitions)
        candidates = {pid: self.replicas_for(pid, session) for pid in wanted}
        lists: dict[str, list[Hit]] = defaultdict(list)
        answered: list[int] = []
        used: dict[str, list[int]] = {}
        pending = [pid for pid in wanted if candidates[pid]]
        missing = [pid for pid in wanted if not candidates[pid]]
        while pending:
            by_node: dict[str, list[int]] = defaultdict(list)
            for pid in pending:
                by_node[candidates[pid].pop(0)].append(pid)
            results = await asyncio.gather(*(search(node, pids) for node, pids in by_node.items()), return_exceptions=True)
            pending = []
            for (node, pids), result in zip(by_node.items(), results):
                if isinstance(result, BaseException):
                    log.info("search on %s failed for %d partitions: %s", node[:12], len(pids), result)
                    pending.extend(pid for pid in pids if candidates[pid])
                    missing.extend(pid for pid in pids if not candidates[pid])
                    continue
                used.setdefault(node, []).extend(pids)
                answered.extend(pids)
                for kind, hits in result.items():
                    lists[kind].extend(hits)
        return Gathered(dict(lists), sorted(answered), sorted(missing), used)
