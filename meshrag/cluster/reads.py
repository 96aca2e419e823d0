"""Reads across replicas: document lookups, doc states and scatter-gather search.

For each partition the reader tries replicas in order: those named by the
request's session token first (they hold the session's writes), then the
current owners; alive ones only, this node first (no network hop).

A document lookup reads as many replicas as its consistency asks (one,
quorum, all of the partition's owners) and returns the newest copy by the
stores' write order; the replicas that answered with an older copy, or none,
are named so the caller repairs them (read repair). Absence is not evidence:
when none of those replicas holds the document, the remaining ones are asked
before the answer is "not found".

Search groups partitions by the replica chosen, sends one request per node,
fails over a node's partitions to their next replica on error or when the
node says it does not hold them, and reports the coverage (fraction of
partitions answered by a node that holds them) and the missing partitions
instead of failing the whole query.

The local store and the peer calls are injected (node.py wires them).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

from meshrag.cluster.writes import required_acks
from meshrag.errors import Unavailable
from meshrag.ring import Ring
from meshrag.ring import partition_for
from meshrag.store.types import DocState, Hit, StoredDocument, write_order

log = logging.getLogger(__name__)


@dataclass
class NodeHits:
    """One node's answer to a search: hit lists by kind ("dense", "bm25") and the
    asked partitions it does not hold (their next replica is asked instead)."""

    lists: dict[str, list[Hit]]
    unheld: list[int] = field(default_factory=list)


# (node_id, partitions) -> that node's hits
SearchCall = Callable[[str, list[int]], Awaitable[NodeHits]]
GetCall = Callable[[str, str], Awaitable[StoredDocument | None]]
StatesCall = Callable[[str, list[str]], Awaitable[dict[str, DocState]]]


@dataclass
class ReadOutcome:
    """The newest copy among the replicas read (None: none holds it) and who lags behind it."""

    doc: StoredDocument | None
    holder: str | None          # a replica that holds ``doc``
    stale: list[str]            # replicas that answered with an older copy or none


class ReadUnavailable(Unavailable):
    code = "read_unavailable"


def _order(doc: StoredDocument | None) -> tuple[int, bool, str]:
    return (-1, False, "") if doc is None else write_order(doc.version, doc.deleted, doc.content_hash)


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

    async def get(
        self, doc_id: str, session: Mapping[int, list[str]] | None, get: GetCall, consistency: str = "quorum",
    ) -> ReadOutcome:
        """Read ``consistency`` replicas (failing over), the rest too if none holds it."""
        ring = self._ring()
        pid = partition_for(doc_id, ring.partitions)
        candidates = self.replicas_for(pid, session)
        needed = min(required_acks(consistency, len(ring.read_owners(pid)) or 1), max(1, len(candidates)))
        answers: dict[str, StoredDocument | None] = {}

        async def ask(node: str) -> None:
            try:
                answers[node] = await get(node, doc_id)
            except Exception as exc:
                log.info("replica %s of partition %d failed: %s", node[:12], pid, exc)

        remaining = list(candidates)
        while len(answers) < needed and remaining:
            wave, remaining = remaining[: needed - len(answers)], remaining[needed - len(answers):]
            await asyncio.gather(*(ask(node) for node in wave))
        if len(answers) < needed:
            raise ReadUnavailable(
                f"read of {doc_id!r} at {consistency}: {len(answers)} of the {needed} replicas needed answered "
                f"(partition {pid}, {len(candidates)} alive)", field="consistency", retry_after_s=1,
            )
        while all(doc is None for doc in answers.values()) and remaining:
            await ask(remaining.pop(0))  # absence is not evidence: ask the others one by one
        return _newest(answers)

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
                    retry = pids
                else:
                    unheld = set(result.unheld)
                    held = [pid for pid in pids if pid not in unheld]
                    used.setdefault(node, []).extend(held)
                    answered.extend(held)
                    for kind, hits in result.lists.items():
                        lists[kind].extend(hit for hit in hits if hit.partition not in unheld)
                    retry = [pid for pid in pids if pid in unheld]
                pending.extend(pid for pid in retry if candidates[pid])
                missing.extend(pid for pid in retry if not candidates[pid])
        return Gathered(dict(lists), sorted(answered), sorted(missing), used)


def _newest(answers: Mapping[str, StoredDocument | None]) -> ReadOutcome:
    holder = max(answers, key=lambda node: _order(answers[node]), default=None)
    newest = None if holder is None else answers[holder]
    if newest is None:
        return ReadOutcome(None, None, [])
    return ReadOutcome(newest, holder, [node for node, doc in answers.items() if _order(doc) < _order(newest)])
