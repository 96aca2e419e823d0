"""Placement: partitions -> preference lists of N distinct nodes (pure).

* A document's partition is ``hash(doc_id) mod P`` (store/engine.py), so all
  chunks of a document live together.
* How partitions map to nodes is a cluster setting (cluster/ringstate.py), so
  every node of a cluster computes the same lists from the same membership:
  ``balanced`` (balance.py, the default of new clusters): rendezvous ranking,
  then every node held within one copy of the even share P*N/nodes;
  ``vnodes`` (clusters created before the setting existed): every ring member
  owns ``VNODES`` tokens on a 64-bit circle derived from its node id, partition
  ``p`` sits at ``p * 2**64 / P`` and its preference list is the next N
  distinct nodes clockwise.
  Both take one node per zone first, then any (zones are failure domains:
  three copies in one zone survive less than one in each of three).

Ring membership is explicit and separate from liveness (gossip): a member is
``joining`` (receiving its data), ``normal``, ``leaving`` (streaming its data
away) or ``removed``. Only those statuses move data; a dead or flapping node
keeps its partitions. Two rings follow from the statuses:

* the *current* ring (normal + leaving): who holds the data now, who serves reads;
* the *target* ring (normal + joining): who will hold it once transfers finish.

Writes go to both (``write_owners``), so a transfer never misses a write.

The ring table is a last-writer-wins map ``node_id -> RingEntry`` versioned by
HLC timestamps, merged the same way on every node (cluster/ringstate.py
spreads and persists it).
"""

from __future__ import annotations

import bisect
import enum
import hashlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from meshrag.balance import balanced_lists

VNODES = 64
# The placements (cluster setting ``placement``); a cluster keeps the one it was created with.
PLACEMENT_VNODES = "vnodes"
PLACEMENT_BALANCED = "balanced"
PLACEMENTS = (PLACEMENT_BALANCED, PLACEMENT_VNODES)
DEFAULT_PLACEMENT = PLACEMENT_BALANCED  # new clusters; clusters recorded before the setting: vnodes
_RING_SIZE = 1 << 64


class RingStatus(str, enum.Enum):
    JOINING = "joining"
    NORMAL = "normal"
    LEAVING = "leaving"
    REMOVED = "removed"


CURRENT = frozenset({RingStatus.NORMAL, RingStatus.LEAVING})
TARGET = frozenset({RingStatus.NORMAL, RingStatus.JOINING})


@dataclass(frozen=True, slots=True)
class RingEntry:
    """One node's ring membership; ``version`` (an HLC timestamp) orders updates."""

    node_id: str
    name: str
    zone: str
    status: RingStatus
    version: int

    def supersedes(self, other: RingEntry | None) -> bool:
        """Last writer wins; at equal versions the later status in the lifecycle wins,
        so two nodes deciding at once still agree."""
        if other is None:
            return True
        return (self.version, _STATUS_ORDER[self.status]) > (other.version, _STATUS_ORDER[other.status])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RingEntry:
        return cls(str(raw["node_id"]), str(raw["name"]), str(raw["zone"]), RingStatus(raw["status"]), int(raw["version"]))


_STATUS_ORDER = {RingStatus.JOINING: 0, RingStatus.NORMAL: 1, RingStatus.LEAVING: 2, RingStatus.REMOVED: 3}


class RingTable:
    """The LWW map of ring entries; ``merge`` is commutative, associative and idempotent."""

    def __init__(self, entries: Iterable[RingEntry] = ()) -> None:
        self._entries: dict[str, RingEntry] = {}
        self.merge(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, node_id: str) -> RingEntry | None:
        return self._entries.get(node_id)

    def entries(self) -> list[RingEntry]:
        return sorted(self._entries.values(), key=lambda e: e.node_id)

    def merge(self, entries: Iterable[RingEntry]) -> list[RingEntry]:
        """Adopt every entry newer than ours; returns the ones adopted."""
        adopted = []
        for entry in entries:
            if entry.supersedes(self._entries.get(entry.node_id)):
                self._entries[entry.node_id] = entry
                adopted.append(entry)
        return adopted

    def set_status(self, node_id: str, status: RingStatus, version: int) -> RingEntry:
        entry = self._entries[node_id]
        updated = replace(entry, status=status, version=max(version, entry.version + 1))
        self._entries[node_id] = updated
        return updated

    def fingerprint(self) -> str:
        """Equal fingerprints mean equal tables (cheap check before exchanging them)."""
        digest = hashlib.blake2b(digest_size=12)
        for entry in self.entries():
            digest.update(f"{entry.node_id}|{entry.status.value}|{entry.version};".encode())
        return digest.hexdigest()

    def to_list(self) -> list[dict[str, Any]]:
        return [entry.to_dict() for entry in self.entries()]

    @classmethod
    def from_list(cls, raw: Iterable[Mapping[str, Any]]) -> RingTable:
        return cls(RingEntry.from_dict(item) for item in raw)


def partition_for(doc_id: str, partitions: int) -> int:
    """The partition of a document: stable across processes, machines and Python versions
    (unlike ``hash``), so every node places a document in the same partition."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def node_tokens(node_id: str, vnodes: int = VNODES) -> list[int]:
    """A node's positions on the circle: stable, independent of every other node."""
    return [int.from_bytes(hashlib.blake2b(f"{node_id}/{i}".encode(), digest_size=8).digest(), "big") for i in range(vnodes)]


def partition_position(pid: int, partitions: int) -> int:
    return pid * _RING_SIZE // partitions


class Placement:
    """Preference lists of one set of nodes (one of the two rings), computed once: a ring
    is rebuilt only when its table changes (cluster/ringstate.py), so ``owners`` is a lookup."""

    def __init__(self, entries: Sequence[RingEntry], partitions: int, replicas: int,
                 kind: str = DEFAULT_PLACEMENT) -> None:
        if kind not in PLACEMENTS:
            raise ValueError(f"unknown placement {kind!r} (known: {', '.join(PLACEMENTS)})")
        self.partitions = partitions
        self.replicas = replicas
        self.kind = kind
        self.zones = {entry.node_id: entry.zone for entry in entries}
        if kind == PLACEMENT_BALANCED:
            self._lists = balanced_lists(self.zones, partitions, replicas)
            return
        tokens = sorted((token, entry.node_id) for entry in entries for token in node_tokens(entry.node_id))
        self._positions = [token for token, _ in tokens]
        self._owners = [node_id for _, node_id in tokens]
        self._lists = [self._preference(pid) for pid in range(partitions)]

    def owners(self, pid: int) -> list[str]:
        return self._lists[pid]

    def _preference(self, pid: int) -> list[str]:
        if not self._owners:
            return []
        wanted = min(self.replicas, len(self.zones))
        start = bisect.bisect_left(self._positions, partition_position(pid, self.partitions))
        clockwise = _distinct(self._owners[(start + i) % len(self._owners)] for i in range(len(self._owners)))
        chosen: list[str] = []
        seen_zones: set[str] = set()
        for node_id in clockwise:  # first pass: one node per zone
            if len(chosen) < wanted and self.zones[node_id] not in seen_zones:
                chosen.append(node_id)
                seen_zones.add(self.zones[node_id])
        for node_id in clockwise:  # then fill with the next distinct nodes
            if len(chosen) < wanted and node_id not in chosen:
                chosen.append(node_id)
        # Keep clockwise order so the primary is the same on every node.
        order = {node_id: i for i, node_id in enumerate(clockwise)}
        return sorted(chosen, key=order.__getitem__)


def _distinct(node_ids: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for node_id in node_ids:
        seen.setdefault(node_id, None)
    return list(seen)


class Ring:
    """The current and target placements of one ring table."""

    def __init__(self, table: RingTable, partitions: int, replicas: int, placement: str = DEFAULT_PLACEMENT) -> None:
        self.partitions = partitions
        self.replicas = replicas
        self.placement = placement
        entries = table.entries()
        self.entries = {entry.node_id: entry for entry in entries}
        self.current = Placement([e for e in entries if e.status in CURRENT], partitions, replicas, placement)
        self.target = Placement([e for e in entries if e.status in TARGET], partitions, replicas, placement)

    def read_owners(self, pid: int) -> list[str]:
        """Who serves reads: the current owners (the target ones while nothing is current yet)."""
        return self.current.owners(pid) or self.target.owners(pid)

    def write_owners(self, pid: int) -> list[str]:
        """Who takes writes: current and target owners, so moving data misses nothing."""
        return _distinct([*self.current.owners(pid), *self.target.owners(pid)])

    def owns(self, node_id: str, pid: int) -> bool:
        return node_id in self.write_owners(pid)

    def partitions_of(self, node_id: str, placement: str = "target") -> list[int]:
        chosen = self.target if placement == "target" else self.current
        return [pid for pid in range(self.partitions) if node_id in chosen.owners(pid)]

    def pending(self, pid: int) -> list[str]:
        """Target owners that are not current owners yet (receiving the partition)."""
        current = set(self.current.owners(pid))
        return [node_id for node_id in self.target.owners(pid) if node_id not in current]

    def moves(self, other: Ring) -> int:
        """How many (partition, replica) assignments differ between two rings' targets."""
        return sum(len(set(self.target.owners(p)) ^ set(other.target.owners(p))) // 2 for p in range(self.partitions))

    def summary(self) -> dict[str, Any]:
        """Partitions per node (current and target) for status output."""
        per_node: dict[str, dict[str, Any]] = {}
        for node_id, entry in self.entries.items():
            per_node[node_id] = {
                "name": entry.name,
                "zone": entry.zone,
                "status": entry.status.value,
                "partitions": len(self.partitions_of(node_id, "current")),
                "target_partitions": len(self.partitions_of(node_id, "target")),
            }
        return per_node


def placement_balance(ring: Ring, placement: str = "current") -> dict[str, dict[str, float]]:
    """Per node of one of the ring's placements: the partition copies it holds, the even share
    (all copies over the placement's nodes) and their ratio, for operators' status views."""
    chosen = ring.current if placement == "current" else ring.target
    copies = {node_id: 0 for node_id in chosen.zones}
    for pid in range(ring.partitions):
        for node_id in chosen.owners(pid):
            copies[node_id] += 1
    even = sum(copies.values()) / len(copies) if copies else 0.0
    return {node_id: {"copies": count, "target": even, "ratio": count / even if even else 0.0}
            for node_id, count in sorted(copies.items())}
