"""This node's copy of the cluster settings and the ring table, persisted.

The settings (P, N, embedding model and dimension) are fixed when the cluster
is created; a joining node adopts P and N and refuses to join with another
model or dimension. The ring table (ring.py) is merged last-writer-wins from
whatever peers send (node.py spreads it over /_mesh/ring), so every node
converges on the same ring; it is written to ``<data_dir>/cluster.json``
(atomically, by rename) on every change, so a restarted node knows its ring
before it hears from anyone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from meshrag.errors import ConfigError
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable

log = logging.getLogger(__name__)

CLUSTER_FILE = "cluster.json"


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    partitions: int
    replicas: int
    model: str
    dim: int

    def refusal(self, model: str, dim: int) -> str | None:
        """Why a node with this embedder cannot join, or None if it can."""
        if model != self.model or dim != self.dim:
            return (
                f"this node embeds with {model} ({dim} dimensions) but the cluster was created with "
                f"{self.model} ({self.dim} dimensions); vectors from different models cannot be searched "
                "together, so start this node with the cluster's model (embedder.model)"
            )
        return None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ClusterSettings:
        return cls(int(raw["partitions"]), int(raw["replicas"]), str(raw["model"]), int(raw["dim"]))


Listener = Callable[[Ring], None]


class RingState:
    def __init__(self, data_dir: Path, node_id: str) -> None:
        self.path = Path(data_dir) / CLUSTER_FILE
        self.node_id = node_id
        self.settings: ClusterSettings | None = None
        self.table = RingTable()
        self._ring: Ring | None = None
        self._listeners: list[Listener] = []

    # ------------------------------------------------------------ persistence
    def load(self) -> bool:
        """Read cluster.json; False when this node has never been part of a cluster."""
        if not self.path.exists():
            return False
        try:
            raw = json.loads(self.path.read_text())
            self.settings = ClusterSettings.from_dict(raw["settings"])
            self.table = RingTable.from_list(raw["ring"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path} is damaged ({exc}); restore it or start with an empty data directory") from None
        self._ring = None
        return True

    def _save(self) -> None:
        assert self.settings is not None
        tmp = self.path.with_name(CLUSTER_FILE + ".tmp")
        tmp.write_text(json.dumps({"settings": asdict(self.settings), "ring": self.table.to_list()}, indent=1) + "\n")
        tmp.replace(self.path)

    # ------------------------------------------------------------ changes
    def adopt_settings(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self._save()

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def merge(self, entries: Iterable[RingEntry]) -> list[RingEntry]:
        adopted = self.table.merge(entries)
        if adopted:
            self._changed(adopted)
        return adopted

    def set_status(self, node_id: str, status: RingStatus, version: int) -> RingEntry:
        entry = self.table.set_status(node_id, status, version)
        self._changed([entry])
        return entry

    def add_self(self, name: str, zone: str, status: RingStatus, version: int) -> RingEntry:
        entry = RingEntry(self.node_id, name, zone, status, version)
        self.table.merge([entry])
        self._changed([entry])
        return entry

    def _changed(self, entries: list[RingEntry]) -> None:
        self._ring = None
        if self.settings is not None:
            self._save()
        for entry in entries:
            log.info("ring: %s (%s) is %s", entry.name, entry.node_id[:12], entry.status.value)
        ring = self.ring
        for listener in self._listeners:
            listener(ring)

    # ------------------------------------------------------------ views
    @property
    def ring(self) -> Ring:
        if self._ring is None:
            assert self.settings is not None, "cluster settings are not known yet"
            self._ring = Ring(self.table, self.settings.partitions, self.settings.replicas)
        return self._ring

    @property
    def self_entry(self) -> RingEntry | None:
        return self.table.get(self.node_id)

    def to_wire(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings) if self.settings else None, "ring": self.table.to_list()}
