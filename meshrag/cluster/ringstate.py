"""This node's copy of the cluster settings and the ring table, persisted.

The settings (P, N, embedding model and dimension, text analysis, placement)
are fixed when the cluster is created; a joining node adopts P, N and the
placement, and refuses to join with another model or dimension, or a
placement it does not implement. The ring table (ring.py) is merged last-writer-wins from
whatever peers send (node.py spreads it over /_mesh/ring), so every node
converges on the same ring; it is written to ``<data_dir>/cluster.json``
(atomically, by rename) on every change, so a restarted node knows its ring
before it hears from anyone.

Changes arrive on the event loop (ring exchanges, repair status changes), so a
node passes ``run_blocking`` and the file is written in an executor by an
OrderedFileWriter: one write at a time, the latest state winning. A state not
yet written when the process is killed is pulled back from the peers within a
ring-sync interval (the table is last-writer-wins); ``flush`` waits for the
file to hold the current state (node.py: once it is in the ring, and at stop).
Without ``run_blocking`` (tools, tests) every change is written at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from meshrag.errors import ConfigError
from meshrag.ring import DEFAULT_PLACEMENT, PLACEMENT_VNODES, PLACEMENTS, Ring, RingEntry, RingStatus, RingTable

log = logging.getLogger(__name__)

CLUSTER_FILE = "cluster.json"


# The text analysis of clusters created before it was a cluster setting (porter stemming
# and no stop words was FTS5's; such a cluster keeps whatever its first node now reports).
UNRECORDED_ANALYSIS = ""


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    partitions: int
    replicas: int
    model: str
    dim: int
    # BM25 text analysis (store/analysis.py fingerprint): every node must tokenise alike,
    # or term statistics and query terms from different nodes would not match.
    analysis: str = UNRECORDED_ANALYSIS
    # How partitions map to nodes (ring.py): every node must place alike, or they would
    # disagree on owners. New clusters get the default; a cluster recorded before this field
    # existed placed with vnode tokens and keeps them (from_dict), since changing the placement
    # of a running cluster would move most of its data at once.
    placement: str = DEFAULT_PLACEMENT

    def refusal(self, model: str, dim: int, analysis: str | None = None) -> str | None:
        """Why a node with this embedder and text analysis cannot join, or None if it can."""
        if model != self.model or dim != self.dim:
            return (
                f"this node embeds with {model} ({dim} dimensions) but the cluster was created with "
                f"{self.model} ({self.dim} dimensions); vectors from different models cannot be searched "
                "together, so start this node with the cluster's model (embedder.model)"
            )
        if analysis is not None and self.analysis != UNRECORDED_ANALYSIS and analysis != self.analysis:
            return (
                f"this node analyses text for BM25 as {analysis!r} but the cluster was created with "
                f"{self.analysis!r}; term statistics would not match, so start this node with the "
                "cluster's search.stemmer and search.stopwords"
            )
        return None

    def placement_refusal(self) -> str | None:
        """Why this build cannot place the cluster's partitions (a newer version's placement)."""
        if self.placement in PLACEMENTS:
            return None
        return (
            f"the cluster places partitions with {self.placement!r}, which this node does not implement "
            f"(it knows {', '.join(PLACEMENTS)}); it would disagree with the others on every partition's "
            "owners, so start it with the version of MeshRAG the cluster runs"
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ClusterSettings:
        return cls(
            int(raw["partitions"]), int(raw["replicas"]), str(raw["model"]), int(raw["dim"]),
            str(raw.get("analysis", UNRECORDED_ANALYSIS)), str(raw.get("placement", PLACEMENT_VNODES)),
        )


Listener = Callable[[Ring], None]
RunBlocking = Callable[[Callable[[], None]], "asyncio.Future[None]"]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class OrderedFileWriter:
    """Writes a file's successive contents off the event loop (call it on the loop).

    One write runs at a time, so writes land in the order of the changes; contents submitted
    while one runs wait, and newer ones replace them (only the latest state matters). Every
    write is atomic (temp file + rename). No task is created: each write's completion starts
    the next. A failed write is logged; the next change writes the file again.
    """

    def __init__(self, path: Path, run_blocking: RunBlocking) -> None:
        self.path = path
        self._run = run_blocking
        self._waiting: str | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, text: str) -> None:
        self._waiting = text
        if self._in_flight is None:
            self._next()

    async def flush(self) -> None:
        """Wait until everything submitted so far is written (or failed)."""
        await self._idle.wait()

    def _next(self) -> None:
        text, self._waiting = self._waiting, None
        if text is None:
            self._in_flight = None
            self._idle.set()
            return
        self._idle.clear()
        self._in_flight = self._run(partial(write_atomically, self.path, text))
        self._in_flight.add_done_callback(self._written)

    def _written(self, future: "asyncio.Future[None]") -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("could not write %s: %s", self.path, future.exception())
        self._next()


class RingState:
    def __init__(self, data_dir: Path, node_id: str, run_blocking: RunBlocking | None = None) -> None:
        self.path = Path(data_dir) / CLUSTER_FILE
        self.node_id = node_id
        self.settings: ClusterSettings | None = None
        self.table = RingTable()
        self._ring: Ring | None = None
        self._listeners: list[Listener] = []
        self._writer = OrderedFileWriter(self.path, run_blocking) if run_blocking is not None else None

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
        # Serialised here, on the caller's thread: the text is a snapshot of this very change
        # (a few entries: microseconds); only the file write moves off the loop.
        text = json.dumps({"settings": asdict(self.settings), "ring": self.table.to_list()}, indent=1) + "\n"
        if self._writer is None:
            write_atomically(self.path, text)
        else:
            self._writer.submit(text)

    async def flush(self) -> None:
        """Wait until cluster.json holds the current state."""
        if self._writer is not None:
            await self._writer.flush()

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
            self._ring = Ring(self.table, self.settings.partitions, self.settings.replicas, self.settings.placement)
        return self._ring

    @property
    def self_entry(self) -> RingEntry | None:
        return self.table.get(self.node_id)

    def to_wire(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings) if self.settings else None, "ring": self.table.to_list()}
