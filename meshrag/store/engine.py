"""All partitions this node holds: routing by doc id, lazy creation, merged search.

Layout: ``<root>/meta.json`` (partition count and vector dimension, fixed at
creation) and one ``p<id:04d>/`` directory per partition (see partition.py).
A write touching several partitions commits one transaction per partition;
each document is still atomic because a document lives in one partition.
"""

from __future__ import annotations

import heapq
import json
import logging
import re
import shutil
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from meshrag.errors import ConfigError
from meshrag.store.digest import EMPTY_HASHES
from meshrag.ring import partition_for
from meshrag.store.filters import Filter
from meshrag.store.partition import DB_FILE, IndexSettings, Partition, unit_query_vector
from meshrag.store.types import DigestEntry, DocState, DocumentWrite, Hit, StoredDocument, WriteResult

log = logging.getLogger(__name__)

META_FILE = "meta.json"
META_FORMAT = 1
_PARTITION_DIR = re.compile(r"p(\d{4})")


class StorageEngine:
    """Thread-safe facade over this node's partitions; methods block (run them in an executor)."""

    def __init__(self, root: Path, partitions: int, dim: int, index_settings: IndexSettings | None = None) -> None:
        if partitions < 1 or partitions > 9999:
            raise ConfigError(f"partitions must be 1..9999, got {partitions}", field="cluster.partitions")
        self.root = Path(root)
        self.partitions = partitions
        self.dim = dim
        self.index_settings = index_settings or IndexSettings()
        self._open: dict[int, Partition] = {}
        self._lock = threading.Lock()  # guards creation and removal of partitions
        self._is_open = False

    # ------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Check meta.json (or write it) and open every partition found on disk."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_meta()
        for pid in self._partitions_on_disk():
            self._open[pid] = self._open_partition(pid)
        self._is_open = True
        log.info("storage engine opened at %s: %d of %d partitions held", self.root, len(self._open), self.partitions)

    def close(self) -> None:
        """Save every index and close; the engine can be opened again."""
        with self._lock:
            for partition in self._open.values():
                partition.close()
            self._open.clear()
            self._is_open = False

    def _check_meta(self) -> None:
        path = self.root / META_FILE
        wanted = {"format": META_FORMAT, "partitions": self.partitions, "dim": self.dim}
        if not path.exists():
            tmp = path.with_name(META_FILE + ".tmp")
            tmp.write_text(json.dumps(wanted, indent=2) + "\n")
            tmp.replace(path)
            return
        try:
            stored = json.loads(path.read_text())
            partitions, dim = int(stored["partitions"]), int(stored["dim"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is damaged ({exc}); restore it or use an empty data directory") from None
        if partitions != self.partitions:
            raise ConfigError(
                f"the data in {self.root} was created with {partitions} partitions, not {self.partitions}; "
                "the partition count is fixed when a cluster is created (documents are placed by hash mod P), "
                f"so start with --partitions {partitions} or use an empty data directory",
                field="cluster.partitions",
            )
        if dim != self.dim:
            raise ConfigError(
                f"the data in {self.root} holds {dim}-dimensional vectors, but the embedder produces {self.dim}; "
                "use the model the data was built with or an empty data directory",
                field="embedding.model",
            )

    def _partitions_on_disk(self) -> list[int]:
        found = []
        for entry in self.root.iterdir():
            match = _PARTITION_DIR.fullmatch(entry.name)
            if match and (entry / DB_FILE).exists():
                pid = int(match.group(1))
                if pid >= self.partitions:
                    raise ConfigError(f"{entry} is partition {pid}, but there are only {self.partitions} partitions")
                found.append(pid)
        return sorted(found)

    def _open_partition(self, pid: int) -> Partition:
        partition = Partition(self.root, pid, self.dim, self.index_settings)
        partition.open()
        return partition

    # ------------------------------------------------------------ partitions
    def partition_of(self, doc_id: str) -> int:
        return partition_for(doc_id, self.partitions)

    def local_partitions(self) -> list[int]:
        return sorted(self._open)

    def partition(self, pid: int, create: bool = False) -> Partition:
        """A local partition; with ``create`` it is created if absent (e.g. to receive a transfer)."""
        if not 0 <= pid < self.partitions:
            raise KeyError(f"partition {pid} out of range 0..{self.partitions - 1}")
        partition = self._open.get(pid)
        if partition is not None:
            return partition
        if not create:
            raise KeyError(f"partition {pid} is not held by this node")
        return self._ensure(pid)

    def _ensure(self, pid: int) -> Partition:
        if not self._is_open:
            raise RuntimeError("storage engine is not open")
        with self._lock:
            partition = self._open.get(pid)
            if partition is None:
                partition = self._open[pid] = self._open_partition(pid)
            return partition

    def drop_partition(self, pid: int) -> bool:
        """Close a partition and delete its files (after its data lives elsewhere)."""
        with self._lock:
            partition = self._open.pop(pid, None)
            if partition is not None:
                partition.close()
        path = self.root / f"p{pid:04d}"
        existed = path.exists()
        shutil.rmtree(path, ignore_errors=True)
        return partition is not None or existed

    # ---------------------------------------------------------------- writes
    def upsert(self, docs: Sequence[DocumentWrite]) -> list[WriteResult]:
        """Write a batch; results come back in input order."""
        groups: dict[int, list[int]] = defaultdict(list)
        for position, doc in enumerate(docs):
            groups[self.partition_of(doc.doc_id)].append(position)
        results: list[WriteResult | None] = [None] * len(docs)
        for pid, positions in groups.items():
            written = self._ensure(pid).upsert([docs[i] for i in positions])
            for position, result in zip(positions, written):
                results[position] = result
        return [result for result in results if result is not None]

    def delete(self, doc_id: str, version: int) -> WriteResult:
        return self._ensure(self.partition_of(doc_id)).delete(doc_id, version)

    def purge_tombstones(self, older_than_version: int) -> int:
        return sum(partition.purge_tombstones(older_than_version) for partition in list(self._open.values()))

    # ----------------------------------------------------------------- reads
    def doc_states(self, doc_ids: Sequence[str]) -> dict[str, DocState]:
        """States of the given documents this node holds; unknown ids are absent."""
        groups: dict[int, list[str]] = defaultdict(list)
        for doc_id in doc_ids:
            groups[self.partition_of(doc_id)].append(doc_id)
        states: dict[str, DocState] = {}
        for pid, ids in groups.items():
            partition = self._open.get(pid)
            if partition is not None:
                states.update(partition.doc_states(ids))
        return states

    def get(self, doc_id: str) -> StoredDocument | None:
        partition = self._open.get(self.partition_of(doc_id))
        return None if partition is None else partition.get(doc_id)

    def bucket_hashes(self, pid: int) -> list[str]:
        """A partition's repair bucket hashes (kept with every write); all empty if not held."""
        partition = self._open.get(pid)
        return list(EMPTY_HASHES) if partition is None else partition.bucket_hashes()

    def digest_entries(self, pid: int, buckets: Iterable[int] | None = None) -> list[DigestEntry]:
        """A partition's digest entries, of the given buckets or all; none if not held."""
        partition = self._open.get(pid)
        return [] if partition is None else partition.digest_entries(buckets)

    def export(self, pid: int, doc_ids: Sequence[str]) -> list[DocumentWrite]:
        """Documents of a partition with their vectors, as stored (for another replica); none if not held."""
        partition = self._open.get(pid)
        return [] if partition is None else partition.export(doc_ids)

    def search_dense(
        self, vector: np.ndarray, k: int, flt: Filter | None = None, partitions: Iterable[int] | None = None
    ) -> list[Hit]:
        """Top-k by cosine similarity over the given partitions this node holds (default: all)."""
        query = unit_query_vector(vector, self.dim)
        return self._merged(lambda p: p.search_dense(query, k, flt), k, partitions)

    def search_bm25(self, query: str, k: int, flt: Filter | None = None, partitions: Iterable[int] | None = None) -> list[Hit]:
        """Top-k by BM25. Each partition scores with its own term statistics; with
        hash placement these are close, so merged scores are comparable enough."""
        return self._merged(lambda p: p.search_bm25(query, k, flt), k, partitions)

    def _merged(self, search: Callable[[Partition], list[Hit]], k: int, partitions: Iterable[int] | None) -> list[Hit]:
        if k <= 0:
            return []
        wanted = self.local_partitions() if partitions is None else sorted(set(partitions))
        held = [partition for partition in map(self._open.get, wanted) if partition is not None]
        per_partition = [search(partition) for partition in held]
        return heapq.nsmallest(k, (hit for hits in per_partition for hit in hits), key=lambda h: (-h.score, h.chunk_id))

    def stats(self) -> dict[str, Any]:
        per_partition = {pid: partition.stats() for pid, partition in sorted(self._open.items())}
        totals = {
            key: sum(stats[key] for stats in per_partition.values())
            for key in ("documents", "tombstones", "chunks", "index_size", "bytes")
        }
        return {**totals, "partitions_total": self.partitions, "dim": self.dim, "partitions": per_partition}

    # ----------------------------------------------------------------- index
    def save_indexes(self) -> int:
        """Save every index with unsaved changes; returns how many were written."""
        return sum(partition.save_index() for partition in list(self._open.values()))

    def maybe_save_indexes(self, max_pending: int) -> int:
        return sum(partition.maybe_save_index(max_pending) for partition in list(self._open.values()))
