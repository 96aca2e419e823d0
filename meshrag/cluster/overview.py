"""`meshrag status` for the whole cluster: balance, replication health, hints and transfers (pure).

cluster/inspection.py gathers a NodeReport from every ring member; these
functions turn the ring and those reports into the sections of
GET /v1/cluster/status. The ring is read only through its public methods
(read_owners, write_owners, summary), so this holds whatever placement
ring.py uses.

* Balance: each ring node's partition copies (how many partitions' read
  owners name it, counted over all partitions) against its even share of the
  target ring, ``partitions x min(replicas, target nodes) / target nodes``
  (a joining node's target is that share while its copies are still 0; a
  leaving node's target is 0), as copies, target and their ratio;
  ``planned`` is what the target placement gives it (ring.summary()).
* Replication: a partition is under-replicated when fewer of its read owners
  are live, answered and agree on its digest (the largest group of equal
  digests) than ``min(replicas, current ring nodes)``.
* Transfers: each node's Repairer progress with an ETA from its own rate in
  the running pass (partitions done / seconds since the pass started).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping

from meshrag.cluster.node_report import NodeReport
from meshrag.ring import Ring

# Ratio of copies to target within which a node counts as balanced (the status table's green).
BALANCED = (0.8, 1.25)


def ring_balance(ring: Ring) -> dict[str, Any]:
    summary = ring.summary()
    copies = Counter(node for pid in range(ring.partitions) for node in ring.read_owners(pid))
    targets = [node for node, s in summary.items() if s["status"] in ("normal", "joining")]
    share = ring.partitions * min(ring.replicas, len(targets)) / len(targets) if targets else 0.0
    nodes = []
    for node_id, s in sorted(summary.items(), key=lambda kv: kv[1]["name"]):
        if s["status"] == "removed":
            continue
        target = share if node_id in targets else 0.0
        nodes.append({
            "node": s["name"], "id": node_id, "zone": s["zone"], "status": s["status"], "copies": copies[node_id],
            "target": round(target, 2), "ratio": ratio(copies[node_id], target), "planned": s["target_partitions"],
        })
    ratios = [n["ratio"] for n in nodes if n["ratio"] is not None]
    return {
        "even_share": round(share, 2), "copies": sum(copies.values()), "wanted_copies": ring.partitions * min(ring.replicas, len(targets)),
        "max_ratio": max(ratios, default=None), "min_ratio": min(ratios, default=None), "nodes": nodes,
    }


def ratio(copies: int, target: float) -> float | None:
    return round(copies / target, 3) if target > 0 else None


def balanced(value: float | None) -> bool:
    return value is not None and BALANCED[0] <= value <= BALANCED[1]


def replication(ring: Ring, is_alive: Callable[[str], bool], reports: Mapping[str, NodeReport]) -> dict[str, Any]:
    current = [node for node, s in ring.summary().items() if s["status"] in ("normal", "leaving")]
    wanted = min(ring.replicas, len(current)) if current else ring.replicas
    under = []
    for pid in range(ring.partitions):
        owners = ring.read_owners(pid)
        roots = [_root(reports.get(node), pid) for node in owners if is_alive(node)]
        answered = [root for root in roots if root is not None]
        in_sync = max(Counter(answered).values(), default=0)
        if in_sync < wanted:
            under.append({"partition": pid, "in_sync": in_sync, "live": len(roots), "answered": len(answered),
                          "owners": [_name(reports, node) for node in owners], "moving": bool(ring.pending(pid))})
    return {"wanted": wanted, "partitions": ring.partitions, "healthy": ring.partitions - len(under),
            "under_replicated": under}


def _root(report: NodeReport | None, pid: int) -> str | None:
    if report is None or not report.reachable:
        return None
    digest = report.digests.get(pid)
    return digest.root if digest is not None else None


def _name(reports: Mapping[str, NodeReport], node_id: str) -> str:
    report = reports.get(node_id)
    return report.name if report is not None else node_id[:12]


def pending_hints(reports: Mapping[str, NodeReport], name_of: Callable[[str], str]) -> dict[str, Any]:
    """Hints waiting anywhere in the cluster, per target node, with who holds them."""
    by_target: dict[str, dict[str, Any]] = {}
    for source in sorted(reports.values(), key=lambda r: r.name):
        if not source.reachable:
            continue
        for target, counts in source.hints.items():
            entry = by_target.setdefault(name_of(target), {"id": target, "hints": 0, "documents": 0, "bytes": 0, "from": {}})
            for key in ("hints", "documents", "bytes"):
                entry[key] += int(counts.get(key, 0))
            entry["from"][source.name] = int(counts.get("documents", 0))
    return dict(sorted(by_target.items()))


def eta_s(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds left at the rate so far (partitions per second of this pass); None when unknown."""
    if total > 0 and done >= total:
        return 0.0
    if done <= 0 or elapsed_s <= 0:
        return None
    return round((total - done) / (done / elapsed_s), 1)


def transfers(reports: Mapping[str, NodeReport]) -> list[dict[str, Any]]:
    """Each node's repair and transfer progress, with a rate and an ETA for a running pass."""
    rows = []
    for report in sorted(reports.values(), key=lambda r: r.name):
        if not report.reachable:
            rows.append({"node": report.name, "id": report.node_id, "reachable": False, "error": report.error})
            continue
        progress = report.repair
        done, total = int(progress.get("partitions_done", 0)), int(progress.get("partitions_total", 0))
        elapsed = float(progress.get("elapsed_s", 0.0))
        running = bool(progress.get("running"))
        rows.append({
            "node": report.name, "id": report.node_id, "reachable": True, "running": running, "reason": progress.get("reason", ""),
            "partitions_done": done, "partitions_total": total,
            "rate_per_s": round(done / elapsed, 3) if running and elapsed > 0 else None,
            "eta_s": eta_s(done, total, elapsed) if running else None,
            **{key: progress.get(key, 0) for key in ("docs_in", "docs_out", "bytes_in", "bytes_out", "dropped", "errors", "passes")},
            "last_error": progress.get("last_error", ""),
        })
    return rows


def peers(reports: Mapping[str, NodeReport], ring_fingerprint: str) -> list[dict[str, Any]]:
    """Whom the coordinator reached, and whether their ring table is the same as its own."""
    return [
        {"node": r.name, "id": r.node_id, "reachable": r.reachable, "error": r.error,
         "same_ring": r.ring_fingerprint == ring_fingerprint if r.reachable else None}
        for r in sorted(reports.values(), key=lambda r: r.name)
    ]
