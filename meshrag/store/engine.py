"""All partitions this node holds: routing by doc id, lazy creation, merged search.

Layout: ``<root>/meta.json`` (partition count and vector dimension, fixed at
creation), one ``p<id:04d>/`` directory per partition (see partition.py), and
``index.usearch`` with its sidecar ``index.json``: the one vector index of
every partition held here (node_index.py), saved for all of them at once.
A write touching several partitions commits one transaction per partition;
each document is still atomic because a document lives in one partition.
"""

from __future__ import annotations

import heapq
import json
import logging
import re
import shutil
import sqlite3
import threading
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any, ContextManager, Iterable, Sequence

import numpy as np

from meshrag.errors import ConfigError
from meshrag.store.analysis import Analyzer
from meshrag.store.digest import EMPTY_HASHES
from meshrag.ring import partition_for
from meshrag.store.filters import Filter, to_sql
from meshrag.store.lexical import TermStats
from meshrag.store.node_index import NodeIndex, NodeScored
from meshrag.store.partition import DB_FILE, IndexSettings, Partition, unit_query_vector
from meshrag.store.partition_search import best_first
from meshrag.store.types import Candidate, DigestEntry, DocState, DocumentWrite, Hit, StoredDocument, WriteResult
from meshrag.store.vector_index import exact_top_k

log = logging.getLogger(__name__)

META_FILE = "meta.json"
META_FORMAT = 1
_PARTITION_DIR = re.compile(r"p(\d{4})")


class StorageEngine:
    """Thread-safe facade over this node's partitions; methods block (run them in an executor)."""

    def __init__(
        self, root: Path, partitions: int, dim: int, index_settings: IndexSettings | None = None, *, analyzer: Analyzer | None = None
    ) -> None:
        if partitions < 1 or partitions > 9999:
            raise ConfigError(f"partitions must be 1..9999, got {partitions}", field="cluster.partitions")
        self.root = Path(root)
        self.partitions = partitions
        self.dim = dim
        self.index_settings = index_settings or IndexSettings()
        self.analyzer = analyzer or Analyzer()  # BM25's terms; every node of a cluster must use the same
        self._open: dict[int, Partition] = {}
        self._index = NodeIndex(self.root, dim, self.index_settings)  # replaced by open()
        self._lock = threading.Lock()  # guards creation and removal of partitions
        self._is_open = False

    # ------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Check meta.json (or write it), load the node's index, and open every partition found
        on disk, each caught up or rebuilt against its SQLite as it attaches (node_index.py)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_meta()
        self._index = NodeIndex(self.root, self.dim, self.index_settings)
        self._index.load_saved()
        for pid in self._partitions_on_disk():
            self._open[pid] = self._open_partition(pid)
        self._index.retain(self._open)  # vectors of partitions dropped since the last save
        self._is_open = True
        log.info("storage engine opened at %s: %d of %d partitions held", self.root, len(self._open), self.partitions)

    def close(self) -> None:
        """Save the node's index once, then close every partition; the engine can be opened again."""
        with self._lock:
            try:
                if self._is_open:
                    self._index.save(list(self._open.values()))
            finally:
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
        partition = Partition(
            self.root, pid, self.dim, self.index_settings, analyzer=self.analyzer, index=self._index.view(pid)
        )
        partition.open()
        for stale in (partition.index_path, partition.sidecar_path):  # the per-partition index of older code
            stale.unlink(missing_ok=True)
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
                self._index.drop(pid)  # the next save writes the index without them
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
        self, vector: np.ndarray, k: int, flt: Filter | None = None, partitions: Iterable[int] | None = None,
        texts: dict[str, Hit] | None = None,
    ) -> list[Candidate]:
        """Top-k by cosine similarity over the given partitions this node holds (default: all),
        best first, ties by chunk id. Phase one of a search: of the chunks it considers it
        reads chunk id, doc id and version only (``hits`` reads text and metadata), unless
        ``texts`` is given: the same reads then fill it with their hits, by chunk id (a search
        that needs the text of what it finds at once, in one query per partition, not two).

        One search of the node's index covers every partition asked for. A filter that
        matches at most ``exact_search_threshold`` chunks over those partitions is answered
        exactly from the vectors in SQLite, partition by partition; a broader one by the
        node's index, oversampled and post-filtered in SQL.
        """
        query = unit_query_vector(vector, self.dim)
        held = {partition.pid: partition for partition in self._held(partitions)}
        if k <= 0 or not held:
            return []
        where = to_sql(flt, "d.metadata") if flt is not None else None
        matching = None if where is None else self._matching_vectors(held, where)
        if matching is not None:
            scored = ((held[pid], exact_top_k(query, k, rows, self.dim)) for pid, rows in matching.items())
            return best_first(c for partition, top in scored for c in partition.candidates(top, None, texts))[:k]
        wanted = None if partitions is None else held.keys()
        return self._index.search(query, k, wanted, partial(self._resolve, held, where, texts), oversample=where is not None)

    def _matching_vectors(
        self, held: dict[int, Partition], where: tuple[str, list[Any]]
    ) -> dict[int, list[tuple[int, bytes]]] | None:
        """Per partition, the (key, vector) of the chunks passing ``where``; None as soon as more
        than exact_search_threshold do over all of them (so a broad filter reads no more)."""
        budget = self.index_settings.exact_search_threshold
        found: dict[int, list[tuple[int, bytes]]] = {}
        for pid, partition in held.items():
            rows = partition.filtered_vectors(where, budget)
            if rows is None:
                return None
            found[pid] = rows
            budget -= len(rows)
        return found

    @staticmethod
    def _resolve(
        held: dict[int, Partition], where: tuple[str, list[Any]] | None, texts: dict[str, Hit] | None, scored: list[NodeScored],
    ) -> list[Candidate]:
        """Candidates of the node index's nearest keys that SQLite still has (and that pass ``where``)."""
        by_partition: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for pid, key, score in scored:
            by_partition[pid].append((key, score))
        return best_first(
            c for pid, keys in by_partition.items() if pid in held for c in held[pid].candidates(keys, where, texts)
        )

    def hits(self, candidates: Sequence[Candidate]) -> list[Hit]:
        """Phase two: the hits (text, metadata) of those candidates still held here (the same
        chunk id in their partition), in the given order, scored as the candidates are."""
        groups: dict[int, list[Candidate]] = defaultdict(list)
        for candidate in candidates:
            groups[candidate.partition].append(candidate)
        found: dict[tuple[int, str], Hit] = {}
        for pid, group in groups.items():
            partition = self._open.get(pid)
            if partition is not None:
                found.update(((pid, hit.chunk_id), hit) for hit in partition.hits(group))
        return [found[key] for c in candidates if (key := (c.partition, c.chunk_id)) in found]

    def term_stats(self, terms: Sequence[str], partitions: Iterable[int] | None = None) -> TermStats:
        """BM25 statistics of analyzed ``terms`` summed over the given partitions held here (default: all)."""
        return TermStats.merged(partition.term_stats(terms) for partition in self._held(partitions))

    def search_bm25(
        self, terms: Sequence[str], k: int, flt: Filter | None = None, partitions: Iterable[int] | None = None,
        stats: TermStats | None = None,
    ) -> list[Candidate]:
        """Top-k by BM25 over analyzed ``terms`` in the given partitions held here (default: all),
        best first, ties by chunk id. Every partition scores with ``stats``: the coordinator's
        cluster-wide statistics, or (None) this node's own over those partitions, so merged
        scores compare, and with statistics over all partitions the ranking is the one a
        single index holding the whole corpus gives."""
        held = self._held(partitions)
        if k <= 0 or not terms or not held:
            return []
        stats = stats if stats is not None else TermStats.merged(partition.term_stats(terms) for partition in held)
        found = (candidate for partition in held for candidate in partition.search_bm25(terms, k, flt, stats))
        return heapq.nsmallest(k, found, key=lambda c: (-c.score, c.chunk_id))

    def _held(self, partitions: Iterable[int] | None) -> list[Partition]:
        wanted = self.local_partitions() if partitions is None else sorted(set(partitions))
        return [partition for partition in map(self._open.get, wanted) if partition is not None]

    def stats(self) -> dict[str, Any]:
        with self._lock:  # a transfer may create, and a handoff drop, a partition meanwhile
            held = sorted(self._open.items())
        per_partition = {}
        for pid, partition in held:
            try:
                per_partition[pid] = partition.stats()
            except (RuntimeError, sqlite3.Error, FileNotFoundError):
                if pid in self._open:  # not a concurrent drop: a real fault
                    raise
        totals = {
            key: sum(stats[key] for stats in per_partition.values())
            for key in ("documents", "tombstones", "chunks", "index_size", "bytes")
        }
        return {**totals, "partitions_total": self.partitions, "dim": self.dim, "partitions": per_partition}

    # ----------------------------------------------------------------- index
    def save_indexes(self) -> int:
        """Save the node's index if it has unsaved changes: one file for every partition, then
        each partition's log trimmed (node_index.py); returns how many partitions had changes saved."""
        if not self._is_open:
            return 0
        return self._index.save(list(self._open.values())) or 0

    def maybe_save_indexes(self, max_pending: int) -> int:
        """Save when at least ``max_pending`` index changes, over all partitions, are unsaved."""
        return self.save_indexes() if self._index.pending >= max_pending else 0

    # -------------------------------------------------------------- snapshots
    def hold_index_log_trims(self) -> ContextManager[None]:
        """Index saves keep every partition's log while held (node_index.py; a snapshot's copies)."""
        return self._index.hold_log_trims()

    def link_index_files(self, target_dir: Path) -> list[Path]:
        """meta.json and the saved node index with its sidecar, placed in ``target_dir``
        (store/snapshot.py copies the partition databases after them)."""
        shutil.copy2(self.root / META_FILE, target_dir / META_FILE)
        return [target_dir / META_FILE, *self._index.link_saved_files(target_dir)]

    def database_of(self, pid: int) -> Path | None:
        """The SQLite file of a partition held here, None if not (dropped meanwhile)."""
        partition = self._open.get(pid)
        return None if partition is None else partition.db_path
