"""Each partition's replicas and health, as the status page's grid shows them.

``ring_view`` (cluster/admin.py) counts nodes and lists the partitions that need
attention; an operator looking at the page wants the other way round too:
partition -> which nodes hold it, which of them are alive, which are receiving
it or handing it off. Pure: the ring and liveness are passed in.
"""

from __future__ import annotations

from typing import Any, Callable

from meshrag.ring import Ring

FULL, UNDER_REPLICATED, TRANSFERRING = "full", "under_replicated", "transferring"


def wanted_replicas(ring: Ring) -> int:
    """N, or fewer while fewer nodes hold data (as ring_view counts it)."""
    return min(ring.replicas, len(ring.current.zones) or ring.replicas)


def partition_row(ring: Ring, pid: int, is_alive: Callable[[str], bool]) -> dict[str, Any]:
    current, target = ring.current.owners(pid), ring.target.owners(pid)
    replicas = []
    for node_id in ring.write_owners(pid):
        entry = ring.entries.get(node_id)
        role = "current" if node_id in current and node_id in target else ("outgoing" if node_id in current else "incoming")
        if not current:  # nothing is current yet: the target owners serve (Ring.read_owners)
            role = "current"
        replicas.append({"id": node_id, "name": entry.name if entry else node_id, "alive": is_alive(node_id), "role": role})
    serving = sum(1 for r in replicas if r["role"] != "incoming" and r["alive"])
    moving = any(r["role"] != "current" for r in replicas)
    # A missing replica is the more urgent of the two: data is at risk, not just on its way.
    health = UNDER_REPLICATED if serving < wanted_replicas(ring) else (TRANSFERRING if moving else FULL)
    return {"partition": pid, "health": health, "replicas": replicas}


def partition_table(ring: Ring, is_alive: Callable[[str], bool]) -> list[dict[str, Any]]:
    return [partition_row(ring, pid, is_alive) for pid in range(ring.partitions)]
