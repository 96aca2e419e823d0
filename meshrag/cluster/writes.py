"""Replicated writes: one coordinator, N replicas per partition, W acknowledgements.

The coordinator has already chunked and embedded (rag/pipeline.py); here each
partition's documents go to every write owner of the partition (ring.py: the
current owners plus any that are receiving it), one request per node. The
answer comes as soon as every partition has W acknowledgements (ONE, QUORUM
or ALL of its N replicas); the other requests finish in the background.
A replica that is down, or fails, gets a durable hint (store/hints.py) that
is replayed when gossip sees it alive. With fewer than W acknowledgements the
client is told the outcome is unknown and which replicas took the write: some
replicas may hold it, and hints or repair will spread it, so retrying the
same request is the safe next step (writes are idempotent).

Transport, liveness, the local apply and hint storage are injected, so the
logic runs against fakes in unit tests and against real peers in node.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

from meshrag.errors import MeshragError, ValidationError
from meshrag.ring import Ring
from meshrag.store.engine import partition_for
from meshrag.store.types import DocumentWrite

log = logging.getLogger(__name__)

CONSISTENCY_LEVELS = ("one", "quorum", "all")

ApplyLocal = Callable[[list[DocumentWrite]], Awaitable[object]]
SendRemote = Callable[[str, list[DocumentWrite]], Awaitable[object]]
StoreHint = Callable[[str, list[DocumentWrite]], Awaitable[None]]


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
    acked: dict[int, list[str]]                      # partition -> replicas that acknowledged
    hinted: dict[str, int] = field(default_factory=dict)  # node -> documents hinted


@dataclass
class _Plan:
    by_node: dict[str, list[DocumentWrite]]
    partitions_of_node: dict[str, set[int]]
    needed: dict[int, int]
    voters: dict[int, set[str]]  # replicas whose acks count toward W: the current owners


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
    ) -> None:
        self._local_id = local_id
        self._ring = ring
        self._is_alive = is_alive
        self._apply_local = apply_local
        self._send_remote = send_remote
        self._store_hint = store_hint
        self._name_of = name_of
        self._background: set[asyncio.Task[None]] = set()

    async def write(self, docs: Sequence[DocumentWrite], consistency: str) -> WriteOutcome:
        plan = self._plan(docs, consistency)
        outcome = WriteOutcome(acked=defaultdict(list))
        done = asyncio.Event()
        if self._satisfied(plan, outcome):
            done.set()
        tasks = [
            asyncio.create_task(self._replicate(node_id, node_docs, plan, outcome, done))
            for node_id, node_docs in plan.by_node.items()
        ]
        finished = asyncio.gather(*tasks, return_exceptions=True)
        # Replication goes on after the answer (and after a client that hung up).
        self._finish_in_background(finished)
        waiter = asyncio.create_task(done.wait())
        either: list[asyncio.Future[Any]] = [waiter, finished]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        acked = {pid: list(nodes) for pid, nodes in outcome.acked.items()}
        if not done.is_set():
            raise WriteOutcomeUnknown(self._unknown_message(plan, acked), acked)
        return WriteOutcome(acked=acked, hinted=dict(outcome.hinted))

    def _plan(self, docs: Sequence[DocumentWrite], consistency: str) -> _Plan:
        ring = self._ring()
        by_node: dict[str, list[DocumentWrite]] = defaultdict(list)
        partitions_of_node: dict[str, set[int]] = defaultdict(set)
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
                partitions_of_node[node_id].add(pid)
        return _Plan(by_node, partitions_of_node, needed, voters)

    async def _replicate(self, node_id: str, docs: list[DocumentWrite], plan: _Plan, outcome: WriteOutcome, done: asyncio.Event) -> None:
        try:
            if node_id == self._local_id:
                await self._apply_local(docs)
            elif not self._is_alive(node_id):
                await self._hint(node_id, docs, outcome, "down")
                return
            else:
                await self._send_remote(node_id, docs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if node_id == self._local_id:
                log.error("local replica failed to apply a write: %s", exc)
                return  # the local store is broken: no hint to ourselves, the write counts no ack here
            await self._hint(node_id, docs, outcome, str(exc))
            return
        for pid in plan.partitions_of_node[node_id]:
            outcome.acked[pid].append(node_id)
        if self._satisfied(plan, outcome):
            done.set()

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

    @staticmethod
    def _satisfied(plan: _Plan, outcome: WriteOutcome) -> bool:
        return all(_votes(plan, outcome.acked, pid) >= need for pid, need in plan.needed.items())

    def _finish_in_background(self, finished: "asyncio.Future[Any]") -> None:
        async def wait() -> None:
            await asyncio.gather(finished, return_exceptions=True)

        task = asyncio.create_task(wait())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _unknown_message(self, plan: _Plan, acked: dict[int, list[str]]) -> str:
        short = [pid for pid, need in sorted(plan.needed.items()) if _votes(plan, acked, pid) < need]
        parts = []
        for pid in short[:8]:
            took = ", ".join(self._name_of(n) for n in acked.get(pid, [])) or "none"
            parts.append(f"partition {pid}: {_votes(plan, acked, pid)}/{plan.needed[pid]} acks (took it: {took})")
        more = f" and {len(short) - 8} more partitions" if len(short) > 8 else ""
        return (
            "write outcome unknown: too few replicas acknowledged in time; " + "; ".join(parts) + more
            + ". The replicas that took it keep it and hints will spread it; retry the same request to be sure"
        )

    async def drain(self) -> None:
        """Wait for background replication (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


def _votes(plan: _Plan, acked: Mapping[int, Sequence[str]], pid: int) -> int:
    return sum(1 for node_id in acked.get(pid, ()) if node_id in plan.voters[pid])
