"""A coordinating node's view of the whole cluster: fan out, gather NodeReports, build the answers.

GET /v1/cluster/status and GET /v1/cluster/verify are answered by any storage
node: it reports on itself in-process and asks every other ring member over
the signed /_mesh/cluster/inspect route, with bounded concurrency and a short
deadline per peer. A member gossip does not see alive is not asked; one that
fails or times out is reported unreachable with the reason, never an error of
the whole answer (a status page must work best when the cluster is worst).
What the answers mean is cluster/overview.py's and cluster/verify.py's (pure).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Mapping

from meshrag.cluster import overview
from meshrag.cluster.messages import INSPECT_PATH
from meshrag.cluster.node_report import NodeReport, read_digests
from meshrag.cluster.repair import Repairer
from meshrag.cluster.ringstate import RingState
from meshrag.cluster.rpc import PeerError
from meshrag.cluster.verify import verify_document
from meshrag.errors import ValidationError
from meshrag.ring import Ring, RingStatus
from meshrag.store.engine import StorageEngine
from meshrag.store.hints import HintStore

Blocking = Callable[..., Awaitable[Any]]
Call = Callable[[str, str, dict[str, Any], float], Awaitable[dict[str, Any]]]  # node id, path, body, timeout

STATUS_TIMEOUT_S = 3.0  # a status answer should come fast even with a node frozen
VERIFY_TIMEOUT_S = 20.0  # counts scan every asked partition of a node
MAX_CONCURRENT_PEERS = 16


class ClusterInspector:
    def __init__(
        self, *, node_id: str, ring_state: RingState, engine: StorageEngine, hints: HintStore, repairer: Repairer,
        is_alive: Callable[[str], bool], name_of: Callable[[str], str], blocking: Blocking, call: Call,
        wall: Callable[[], float] = time.time, concurrency: int = MAX_CONCURRENT_PEERS,
    ) -> None:
        self._node_id = node_id
        self._ring_state = ring_state
        self._engine = engine
        self._hints = hints
        self._repairer = repairer
        self._is_alive = is_alive
        self._name_of = name_of
        self._blocking = blocking
        self._call = call
        self._wall = wall
        self._slots = asyncio.Semaphore(concurrency)

    # ------------------------------------------------------------ this node
    async def local_report(self, pids: list[int], counts: bool) -> NodeReport:
        """This node's report (what /_mesh/cluster/inspect answers); SQLite reads in one storage step."""
        total = self._ring_state.ring.partitions
        if any(not 0 <= pid < total for pid in pids):
            raise ValidationError(f"partitions must be in 0..{total - 1}", field="partitions")
        digests, held = await self._blocking(read_digests, self._engine, pids, counts)
        pending = await self._blocking(self._hints.pending)
        progress = self._repairer.progress.as_dict()
        if progress.get("running") and progress.get("started_at"):
            progress["elapsed_s"] = round(max(0.0, self._wall() - float(progress["started_at"])), 3)  # our own clock
        return NodeReport(
            self._node_id, self._name_of(self._node_id), digests=digests, held=held, repair=progress,
            hints={t: {"hints": p.hints, "documents": p.documents, "bytes": p.bytes} for t, p in pending.items()},
            ring_fingerprint=self._ring_state.table.fingerprint(),
        )

    # ------------------------------------------------------------ fan-out
    async def gather(self, wanted: Mapping[str, list[int]], counts: bool, timeout_s: float) -> dict[str, NodeReport]:
        """A report from every node in ``wanted`` (node id -> the partitions to digest)."""
        nodes = list(wanted)
        reports = await asyncio.gather(*(self._report_of(node, wanted[node], counts, timeout_s) for node in nodes))
        return dict(zip(nodes, reports))

    async def _report_of(self, node_id: str, pids: list[int], counts: bool, timeout_s: float) -> NodeReport:
        name = self._name_of(node_id)
        if node_id == self._node_id:
            return await self.local_report(pids, counts)
        if not self._is_alive(node_id):
            return NodeReport.unreachable(node_id, name, "not alive in gossip")
        async with self._slots:
            try:
                reply = await self._call(node_id, INSPECT_PATH, {"partitions": pids, "counts": counts}, timeout_s)
                return NodeReport.from_wire(reply)
            except PeerError as exc:
                return NodeReport.unreachable(node_id, name, exc.reason)
            except (KeyError, TypeError, ValueError) as exc:
                return NodeReport.unreachable(node_id, name, f"malformed answer: {exc!r}")

    def _owned(self, ring: Ring) -> dict[str, list[int]]:
        """Every ring member (not removed) -> the partitions it serves reads for (maybe none)."""
        wanted: dict[str, list[int]] = {n: [] for n, e in ring.entries.items() if e.status is not RingStatus.REMOVED}
        for pid in range(ring.partitions):
            for node in ring.read_owners(pid):
                wanted.setdefault(node, []).append(pid)
        return wanted

    # ------------------------------------------------------------ answers
    async def status(self) -> dict[str, Any]:
        """The cluster-wide sections of GET /v1/cluster/status."""
        ring, fingerprint = self._ring_state.ring, self._ring_state.table.fingerprint()
        reports = await self.gather(self._owned(ring), counts=False, timeout_s=STATUS_TIMEOUT_S)
        return {
            "balance": overview.ring_balance(ring),
            "replication": overview.replication(ring, self._is_alive, reports),
            "hints": overview.pending_hints(reports, self._name_of),
            "transfers": overview.transfers(reports),
            "peers": overview.peers(reports, fingerprint),
        }

    async def verify(self) -> dict[str, Any]:
        """GET /v1/cluster/verify: every partition's replicas compared by digest."""
        ring, fingerprint = self._ring_state.ring, self._ring_state.table.fingerprint()
        reports = await self.gather(self._owned(ring), counts=True, timeout_s=VERIFY_TIMEOUT_S)
        document = verify_document(ring, reports, fingerprint)
        document["checked_by"] = self._name_of(self._node_id)
        return document
