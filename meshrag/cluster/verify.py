"""`meshrag verify`: do every partition's replicas hold the same data? (pure)

The coordinator asks each replica (the current ring's read owners) for its
repair digest of the partition (cluster/node_report.py) and classifies it:

* ``in sync``: every replica answered and all digests are equal;
* ``repairing``: digests differ, but something is already moving data for the
  partition: its ring is changing (a target owner is still receiving it), a
  replica is in a repair pass, a node holds pending hints for one of its
  replicas (hints are kept per target node, not per partition, so this is a
  may-be), a node still holds the partition to hand it off, or a node's ring
  differs from the coordinator's (a ring change is spreading);
* ``diverged``: digests differ and nothing is repairing it: anti-entropy will
  only fix it at its next periodic pass, if at all (the operator should look);
* ``unreachable``: the replicas that answered agree, but at least one did not
  answer (dead in gossip, timed out, refused), so nothing can be said of it.

Differing digests outrank an unreachable replica: divergence seen among the
replicas that answered is a finding, whatever the others hold.

The JSON shape is a contract (`meshrag verify --json`; the snapshot/restore
end-to-end test reads it): {"partitions": [{"partition", "state", "replicas":
[{"node", "digest", "documents"}, ...]}], "summary": {...}}; fields are only
ever added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # the CLI imports this module for its states and exit statuses: keep it light
    from meshrag.cluster.node_report import NodeReport
    from meshrag.ring import Ring

IN_SYNC = "in sync"
REPAIRING = "repairing"
DIVERGED = "diverged"
UNREACHABLE = "unreachable"
STATES = (IN_SYNC, REPAIRING, DIVERGED, UNREACHABLE)

# `meshrag verify` exit statuses (cli_status.py says the same in its help).
EXIT_IN_SYNC, EXIT_DIFFERS, EXIT_UNREACHABLE = 0, 1, 2


def classify(digests: Sequence[str | None], repairing: bool) -> str:
    """The state of one partition from its replicas' digests (None: that replica did not answer)."""
    answered = {d for d in digests if d is not None}
    if len(answered) > 1:
        return REPAIRING if repairing else DIVERGED
    if not digests or len(answered) == 0 or None in digests:
        return UNREACHABLE
    return IN_SYNC


def repairing_partitions(ring: Ring, reports: Mapping[str, NodeReport], ring_fingerprint: str) -> set[int]:
    """Partitions some transfer, repair pass, hint replay or hand-off may be changing right now."""
    if any(r.reachable and r.ring_fingerprint and r.ring_fingerprint != ring_fingerprint for r in reports.values()):
        return set(range(ring.partitions))  # another ring view: the change is still spreading
    repairing = {r.node_id for r in reports.values() if r.reachable and r.repair.get("running")}
    hinted = {target for r in reports.values() if r.reachable for target, h in r.hints.items() if h.get("documents", 0) > 0}
    held_by = {node_id: set(r.held) for node_id, r in reports.items() if r.reachable}
    moving: set[int] = set()
    for pid in range(ring.partitions):
        owners = ring.read_owners(pid)
        writers = set(ring.write_owners(pid))
        handing_off = any(pid in held and node_id not in writers for node_id, held in held_by.items())
        if ring.pending(pid) or handing_off or (repairing | hinted) & set(owners):
            moving.add(pid)
    return moving


def partition_entry(pid: int, owners: Sequence[str], reports: Mapping[str, NodeReport], repairing: bool) -> dict[str, Any]:
    replicas = [_replica(pid, node_id, reports.get(node_id)) for node_id in owners]
    return {"partition": pid, "state": classify([r["digest"] for r in replicas], repairing), "replicas": replicas}


def _replica(pid: int, node_id: str, report: NodeReport | None) -> dict[str, Any]:
    digest = report.digests.get(pid) if report is not None and report.reachable else None
    name = report.name if report is not None else node_id[:12]
    if digest is None:
        error = report.error if report is not None and not report.reachable else "no digest in its answer"
        return {"node": name, "id": node_id, "digest": None, "documents": None, "tombstones": None, "held": None, "error": error}
    return {"node": name, "id": node_id, "digest": digest.root, "documents": digest.documents,
            "tombstones": digest.tombstones, "held": digest.held}


def summarize(partitions: Sequence[Mapping[str, Any]], reports: Mapping[str, NodeReport]) -> dict[str, Any]:
    counts = {state: sum(1 for p in partitions if p["state"] == state) for state in STATES}
    return {
        "partitions": len(partitions),
        "in_sync": counts[IN_SYNC], "repairing": counts[REPAIRING], "diverged": counts[DIVERGED], "unreachable": counts[UNREACHABLE],
        "unreachable_nodes": sorted(r.name for r in reports.values() if not r.reachable),
        "exit_status": exit_status(counts),
    }


def exit_status(counts: Mapping[str, int]) -> int:
    """0: every partition in sync; 1: replicas differ somewhere (diverged or repairing);
    2: they agree wherever they answered, but some replica did not answer."""
    if counts.get(DIVERGED, 0) or counts.get(REPAIRING, 0):
        return EXIT_DIFFERS
    if counts.get(UNREACHABLE, 0):
        return EXIT_UNREACHABLE
    return EXIT_IN_SYNC


def verify_document(ring: Ring, reports: Mapping[str, NodeReport], ring_fingerprint: str) -> dict[str, Any]:
    """The answer of GET /v1/cluster/verify from the replicas' reports."""
    moving = repairing_partitions(ring, reports, ring_fingerprint)
    partitions = [partition_entry(pid, ring.read_owners(pid), reports, pid in moving) for pid in range(ring.partitions)]
    return {"partitions": partitions, "summary": summarize(partitions, reports)}
