"""What an operator does to the ring through this node, and what it sees of it.

``decommission`` and ``remove`` (POST /v1/cluster/...) only set a ring status;
the ring exchange spreads it and repair moves the data (cluster/loops.py):
a leaving node streams its partitions to their next owners, the survivors of
a removed one re-replicate its data. ``ring_view`` and ``hints_view`` are
what /v1/cluster, `meshrag status` and the metrics show of ring health,
transfers and pending hints.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from meshrag.clock import HybridLogicalClock
from meshrag.cluster.partition_table import partition_table
from meshrag.cluster.repair import Repairer
from meshrag.cluster.ringstate import RingState
from meshrag.errors import NotFound, ValidationError
from meshrag.ring import RingStatus
from meshrag.store.engine import StorageEngine
from meshrag.store.hints import HintStore

Blocking = Callable[..., Awaitable[Any]]


class ClusterAdmin:
    def __init__(
        self, *, node_id: str, ring_state: RingState, hlc: HybridLogicalClock, engine: StorageEngine, hints: HintStore,
        repairer: Repairer, is_alive: Callable[[str], bool], name_of: Callable[[str], str], blocking: Blocking,
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self._node_id = node_id
        self._ring_state = ring_state
        self._hlc = hlc
        self._engine = engine
        self._hints = hints
        self._repairer = repairer
        self._is_alive = is_alive
        self._name_of = name_of
        self._blocking = blocking
        self._spawn = spawn

    # ------------------------------------------------------------ ring changes
    def decommission(self) -> dict[str, Any]:
        entry = self._ring_state.self_entry
        if entry is None or entry.status is RingStatus.REMOVED:
            raise ValidationError("this node is not in the ring", field="node")
        if entry.status is not RingStatus.LEAVING:
            self._ring_state.set_status(self._node_id, RingStatus.LEAVING, self._hlc.now())
        return self.ring_view()

    def remove(self, name_or_id: str) -> dict[str, Any]:
        entry = next((e for e in self._ring_state.table.entries() if name_or_id in (e.node_id, e.name)), None)
        if entry is None:
            raise NotFound(f"no ring member named {name_or_id!r}", field="node")
        if entry.node_id == self._node_id or self._is_alive(entry.node_id):
            raise ValidationError(
                f"{entry.name} is alive; remove is for dead nodes (run `meshrag decommission` on it instead)", field="node"
            )
        if entry.status is not RingStatus.REMOVED:
            self._ring_state.set_status(entry.node_id, RingStatus.REMOVED, self._hlc.now())
        self._spawn(self._blocking(self._hints.drop_target, entry.node_id))
        return self.ring_view()

    # ------------------------------------------------------------ views
    def ring_view(self) -> dict[str, Any]:
        ring = self._ring_state.ring
        wanted = lambda pid: min(ring.replicas, len(ring.current.zones) or ring.replicas)  # noqa: E731
        under = [pid for pid in range(ring.partitions)
                 if sum(1 for n in ring.read_owners(pid) if self._is_alive(n)) < wanted(pid) or ring.pending(pid)]
        entry = self._ring_state.self_entry
        return {
            "partitions": ring.partitions,
            "replicas": ring.replicas,
            "status": entry.status.value if entry else None,
            "local_partitions": len(self._engine.local_partitions()),
            "nodes": [dict(v, id=k, alive=self._is_alive(k)) for k, v in sorted(ring.summary().items(), key=lambda kv: kv[1]["name"])],
            "under_replicated": under,
            "repair": self._repairer.progress.as_dict(),
        }

    def partition_table_job(self) -> Callable[[], list[dict[str, Any]]]:
        """The status page's partition grid (cluster/partition_table.py) as a job for an executor:
        the ring (replaced on change, never mutated) and liveness are read here, on the loop; the
        rows take ~35 ms at 4096 partitions, too long for the loop gossip shares."""
        ring = self._ring_state.ring
        alive = {node_id: self._is_alive(node_id) for node_id in ring.entries}
        return functools.partial(partition_table, ring, lambda node_id: alive.get(node_id, False))

    async def hints_view(self) -> dict[str, Any]:
        pending = await self._blocking(self._hints.pending)
        return {self._name_of(t): {"hints": p.hints, "documents": p.documents, "bytes": p.bytes} for t, p in pending.items()}
