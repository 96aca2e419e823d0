"""What one node tells a coordinating node about itself, for `meshrag status` and `meshrag verify`.

A coordinator asks every live ring member over the signed /_mesh/cluster/inspect
route (cluster/inspection.py) for one ``NodeReport``: the repair digest of each
partition it was asked about (the root hash anti-entropy compares, so "equal
digests" here means exactly what repair means by in sync), with document and
tombstone counts when asked (they cost a scan of the partition), the
partitions it holds, its Repairer's progress, its pending hints per target and
its ring table's fingerprint (equal fingerprints: the same ring).

A node that could not be asked, or did not answer in time, is a report with
``reachable`` False and the reason; nothing else in it is meaningful.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any, Mapping

from meshrag.cluster.repair import root_hash
from meshrag.store.digest import EMPTY_HASHES
from meshrag.store.engine import StorageEngine

EMPTY_ROOT = root_hash(EMPTY_HASHES)  # the digest of a partition with no entry (or not held)


@dataclass(frozen=True)
class PartitionDigest:
    root: str
    documents: int | None = None  # live documents; None when counts were not asked for
    tombstones: int | None = None
    held: bool = True

    def to_wire(self, pid: int) -> list[Any]:
        return [pid, self.root, self.documents, self.tombstones, self.held]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> tuple[int, PartitionDigest]:
        pid, root, documents, tombstones, held = raw
        return int(pid), cls(str(root), _opt_int(documents), _opt_int(tombstones), bool(held))


@dataclass
class NodeReport:
    node_id: str
    name: str
    reachable: bool = True
    error: str = ""  # why it is unreachable
    digests: dict[int, PartitionDigest] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)
    repair: dict[str, Any] = field(default_factory=dict)  # Repairer.progress plus elapsed_s of a running pass
    hints: dict[str, dict[str, int]] = field(default_factory=dict)  # target node id -> hints, documents, bytes
    ring_fingerprint: str = ""

    @classmethod
    def unreachable(cls, node_id: str, name: str, error: str) -> NodeReport:
        return cls(node_id, name, reachable=False, error=error)

    def to_wire(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id, "name": self.name,
            "digests": [d.to_wire(pid) for pid, d in sorted(self.digests.items())],
            "held": list(self.held), "repair": dict(self.repair), "hints": self.hints, "ring": self.ring_fingerprint,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> NodeReport:
        """A peer's answer; a malformed one raises KeyError/TypeError/ValueError (the caller marks it unreachable)."""
        digests = dict(PartitionDigest.from_wire(list(item)) for item in raw["digests"])
        hints = {str(target): {k: int(v) for k, v in dict(counts).items()} for target, counts in dict(raw["hints"]).items()}
        return cls(str(raw["node_id"]), str(raw["name"]), digests=digests, held=[int(p) for p in raw["held"]],
                   repair=dict(raw["repair"]), hints=hints, ring_fingerprint=str(raw["ring"]))


def read_digests(engine: StorageEngine, pids: list[int], counts: bool) -> tuple[dict[int, PartitionDigest], list[int]]:
    """The digests of ``pids`` and the partitions held, read from SQLite: run it in the storage executor.
    A root costs the 64 bucket rows the triggers keep; counts cost a scan of each partition's documents."""
    held = set(engine.local_partitions())
    digests: dict[int, PartitionDigest] = {}
    for pid in pids:
        if pid not in held:
            digests[pid] = PartitionDigest(EMPTY_ROOT, 0 if counts else None, 0 if counts else None, held=False)
            continue
        try:
            root = root_hash(engine.bucket_hashes(pid))
            stats = engine.partition(pid).stats() if counts else {}
        except (KeyError, RuntimeError, sqlite3.Error, FileNotFoundError):
            if pid in engine.local_partitions():  # not a concurrent drop: a real fault
                raise
            # dropped by a hand-off while we read: not held any more
            digests[pid] = PartitionDigest(EMPTY_ROOT, 0 if counts else None, 0 if counts else None, held=False)
            continue
        digests[pid] = PartitionDigest(root, stats.get("documents"), stats.get("tombstones"))
    return digests, sorted(held)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
