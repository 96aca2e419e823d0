"""Replicated writes: one coordinator, N replicas per partition, W acknowledgements.

The coordinator has already chunked and embedded (rag/pipeline.py); here each
partition's documents go to every write owner of the partition (ring.py: the
current owners plus any that are receiving it), one request per node. The
answer comes as soon as every partition has W acknowledgements (ONE, QUORUM
or ALL of its N replicas); the other requests finish in the background.

Replicas answer per document (store.types.WriteResult): applied, unchanged,
or stale with the newer version they hold. A document any answering replica
found stale lost to a newer concurrent write: it is reported ``superseded``
with the winning version, never as updated.

A replica that is down, or fails, gets a durable hint (store/hints.py) that
is replayed when gossip sees it alive. A replica that refuses for good
(``Refused``: a 4xx such as a version beyond its clock-drift bound) gets no
hint: it would be refused again. A replica that says it does not own the
partition (``NotOwnerReply``: its ring is newer than ours) makes the
coordinator refresh its ring from it and send those documents to their new
owners. With fewer than W acknowledgements the client is told the outcome is
unknown and which replicas took the write: some replicas may hold it, and
hints or repair will spread it, so retrying the same request is the safe
next step (writes are idempotent).

Transport, liveness, the local apply, hint storage and ring refresh are
injected, so the logic runs against fakes in unit tests and real peers in node.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

from meshrag.errors import MeshragError, ValidationError
from meshrag.ring import Ring
from meshrag.ring import partition_for
from meshrag.store.types import DocumentWrite, WriteResult, WriteStatus

log = logging.getLogger(__name__)

CONSISTENCY_LEVELS = ("one", "quorum", "all")
# Ring refreshes one write may make after replicas answered "not the owner":
# one is enough when rings converge; the bound keeps a flapping view from looping.
MAX_REPLANS = 2

ApplyLocal = Callable[[list[DocumentWrite]], Awaitable[list[WriteResult]]]
SendRemote = Callable[[str, list[DocumentWrite]], Awaitable[list[WriteResult]]]
StoreHint = Callable[[str, list[DocumentWrite]], Awaitable[None]]
RefreshRing = Callable[[str], Awaitable[None]]


class NotOwnerReply(Exception):
    """A replica answered that it neither owns nor hands off a partition of the batch."""


class Refused(Exception):
    """A replica refused the batch for good (a 4xx): retrying or hinting cannot help."""


class WriteOutcomeUnknown(MeshragError):
    """Fewer than W replicas acknowledged in time: the write may or may not be visible."""

    status = 503
    code = "write_outcome_unknown"

    def __init__(self, message: str, acked: dict[int, list[str]]) -> None:
        super().__init__(message, field="consistency")
        self.acked = acked


def required_acks(consistency: str, replicas: int) -> int:
    if consistency == "one":
        return 1
    if consistency == "quorum":
        return replicas // 2 + 1
    if consistency == "all":
        return replicas
    raise ValidationError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}", field="consistency")


@dataclass
class WriteOutcome:
    acked: dict[int, list[str]]                           # partition -> replicas that acknowledged
    hinted: dict[str, int] = field(default_factory=dict)  # node -> documents hinted
    superseded: dict[str, int] = field(default_factory=dict)  # doc id -> newer version a replica holds
    refused: dict[str, str] = field(default_factory=dict)  # node -> why it refused for good


@dataclass
class _Plan:
    by_node: dict[str, list[DocumentWrite]]
    needed: dict[int, int]
    voters: dict[int, set[str]]  # replicas whose acks count toward W: the current owners
    sent: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # doc id -> nodes sent to


class _Write:
    """One write in flight: its plan, what has been answered, and its tasks."""

    def __init__(self, plan: _Plan, partitions: int) -> None:
        self.plan = plan
        self.partitions = partitions
        self.outcome = WriteOutcome(acked=defaultdict(list))
        self.done = asyncio.Event()     # W acks in every partition
        self.settled = asyncio.Event()  # every replication task has ended
        self.tasks: set[asyncio.Task[None]] = set()

    def satisfied(self) -> bool:
        return all(_votes(self.plan, self.outcome.acked, pid) >= need for pid, need in self.plan.needed.items())

    def record(self, node_id: str, docs: list[DocumentWrite], results: list[WriteResult]) -> None:
        for doc, result in zip(docs, results):
            if result.status is WriteStatus.STALE:
                newest = max(result.version, self.outcome.superseded.get(doc.doc_id, 0))
                self.outcome.superseded[doc.doc_id] = newest
        for pid in sorted({partition_for(doc.doc_id, self.partitions) for doc in docs}):
            if node_id not in self.outcome.acked[pid]:
                self.outcome.acked[pid].append(node_id)
        if self.satisfied():
            self.done.set()

    def snapshot(self) -> WriteOutcome:
        """The outcome as the client is told it (replication goes on afterwards)."""
        return WriteOutcome(
            acked={pid: list(nodes) for pid, nodes in self.outcome.acked.items()},
            hinted=dict(self.outcome.hinted), superseded=dict(self.outcome.superseded), refused=dict(self.outcome.refused),
        )


class ReplicatedWriter:
    def __init__(
        self,
        local_id: str,
        ring: Callable[[], Ring],
        is_alive: Callable[[str], bool],
        apply_local: ApplyLocal,
        send_remote: SendRemote,
        store_hint: StoreHint,
        name_of: Callable[[str], str] = lambda node_id: node_id[:12],
        refresh_ring: RefreshRing | None = None,
    ) -> None:
        self._local_id = local_id
        self._ring = ring
        self._is_alive = is_alive
        self._apply_local = apply_local
        self._send_remote = send_remote
        self._store_hint = store_hint
        self._name_of = name_of
        self._refresh_ring = refresh_ring
        self._background: set[asyncio.Task[None]] = set()

    async def write(self, docs: Sequence[DocumentWrite], consistency: str) -> WriteOutcome:
        state = _Write(self._plan(docs, consistency), self._ring().partitions)
        if state.satisfied():
            state.done.set()
        for node_id, node_docs in state.plan.by_node.items():
            self._spawn(state, node_id, node_docs, MAX_REPLANS)
        if not state.tasks:
            state.settled.set()
        # Replication goes on after the answer (and after a client that hung up).
        waiters = [asyncio.create_task(state.done.wait()), asyncio.create_task(state.settled.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        outcome = state.snapshot()
        if not state.done.is_set():
            raise WriteOutcomeUnknown(self._unknown_message(state.plan, outcome), outcome.acked)
        return outcome

    def _spawn(self, state: _Write, node_id: str, docs: list[DocumentWrite], replans: int) -> None:
        for doc in docs:
            state.plan.sent[doc.doc_id].add(node_id)
        task = asyncio.create_task(self._replicate(state, node_id, docs, replans))
        state.tasks.add(task)
        self._background.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._background.discard(done)
            state.tasks.discard(done)
            if not state.tasks:
                state.settled.set()

        task.add_done_callback(finished)

    def _plan(self, docs: Sequence[DocumentWrite], consistency: str) -> _Plan:
        ring = self._ring()
        by_node: dict[str, list[DocumentWrite]] = defaultdict(list)
        needed: dict[int, int] = {}
        voters: dict[int, set[str]] = {}
        for doc in docs:
            pid = partition_for(doc.doc_id, ring.partitions)
            owners = ring.write_owners(pid)
            if not owners:
                raise MeshragError("the ring has no members yet; the node is still joining", field=None)
            if pid not in needed:
                # A node still receiving the partition takes the write but does not
                # vote: W of N means W of the replicas that serve reads now.
                voters[pid] = set(ring.current.owners(pid) or owners)
                needed[pid] = required_acks(consistency, len(voters[pid]))
            for node_id in owners:
                by_node[node_id].append(doc)
        return _Plan(by_node, needed, voters)

    async def _replicate(self, state: _Write, node_id: str, docs: list[DocumentWrite], replans: int) -> None:
        try:
            if node_id == self._local_id:
                results = await self._apply_local(docs)
            elif not self._is_alive(node_id):
                await self._hint(node_id, docs, state.outcome, "down")
                return
            else:
                results = await self._send_remote(node_id, docs)
        except asyncio.CancelledError:
            raise
        except NotOwnerReply as exc:
            await self._replan(state, node_id, docs, replans, str(exc))
            return
        except Refused as exc:
            log.error("replica %s refused a write of %d documents: %s", self._name_of(node_id), len(docs), exc)
            state.outcome.refused[node_id] = str(exc)
            return
        except Exception as exc:
            if node_id == self._local_id:
                log.error("local replica failed to apply a write: %s", exc)
                return  # the local store is broken: no hint to ourselves, the write counts no ack here
            await self._hint(node_id, docs, state.outcome, str(exc))
            return
        state.record(node_id, docs, results)

    async def _replan(self, state: _Write, node_id: str, docs: list[DocumentWrite], replans: int, why: str) -> None:
        """``node_id`` does not own some of these partitions in its (newer) ring: adopt
        its ring, then send each document to the owners it has not reached yet."""
        log.info("replica %s is not an owner (%s); refreshing the ring and re-planning %d documents",
                 self._name_of(node_id), why, len(docs))
        if replans <= 0 or self._refresh_ring is None:
            state.outcome.refused[node_id] = why
            return
        try:
            await self._refresh_ring(node_id)
        except Exception as exc:
            log.info("ring refresh from %s failed: %s", self._name_of(node_id), exc)
        ring = self._ring()
        again: dict[str, list[DocumentWrite]] = defaultdict(list)
        for doc in docs:
            pid = partition_for(doc.doc_id, ring.partitions)
            current = set(ring.current.owners(pid))
            if current:
                state.plan.voters[pid] = current
            for owner in ring.write_owners(pid):
                if owner not in state.plan.sent[doc.doc_id] or owner == node_id:
                    again[owner].append(doc)
        for owner, owner_docs in again.items():
            self._spawn(state, owner, owner_docs, replans - 1)

    async def _hint(self, node_id: str, docs: list[DocumentWrite], outcome: WriteOutcome, why: str) -> None:
        try:
            await self._store_hint(node_id, docs)
        except Exception as exc:
            # The write still stands on the replicas that took it; anti-entropy
            # brings this replica its copy, only later than a hint would.
            log.error("replica %s missed a write of %d documents (%s) and its hint failed: %s",
                      self._name_of(node_id), len(docs), why, exc)
            return
        log.info("replica %s missed a write of %d documents (%s); hinted", self._name_of(node_id), len(docs), why)
        outcome.hinted[node_id] = outcome.hinted.get(node_id, 0) + len(docs)

    def _unknown_message(self, plan: _Plan, outcome: WriteOutcome) -> str:
        acked = outcome.acked
        short = [pid for pid, need in sorted(plan.needed.items()) if _votes(plan, acked, pid) < need]
        parts = []
        for pid in short[:8]:
            took = ", ".join(self._name_of(n) for n in acked.get(pid, [])) or "none"
            parts.append(f"partition {pid}: {_votes(plan, acked, pid)}/{plan.needed[pid]} acks (took it: {took})")
        more = f" and {len(short) - 8} more partitions" if len(short) > 8 else ""
        refused = "".join(f"; {self._name_of(n)} refused: {why}" for n, why in sorted(outcome.refused.items()))
        return (
            "write outcome unknown: too few replicas acknowledged in time; " + "; ".join(parts) + more + refused
            + ". The replicas that took it keep it and hints will spread it; retry the same request to be sure"
        )

    async def drain(self) -> None:
        """Wait for background replication (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


def _votes(plan: _Plan, acked: Mapping[int, Sequence[str]], pid: int) -> int:
    return sum(1 for node_id in acked.get(pid, ()) if node_id in plan.voters[pid])
