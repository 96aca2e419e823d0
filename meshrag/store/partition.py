"""One partition on disk: SQLite (truth) plus its share of a usearch HNSW index (derived).

Layout of ``<root>/p<id:04d>/``:

* ``store.sqlite``  documents, chunks with their vectors, the BM25 index of
  their analyzed terms (FTS5 postings, lengths and totals, kept by triggers; see
  schema.py), and ``index_log``: every chunk insert/delete appends (seq, op, key)
  by trigger, inside the very transaction that changed the chunk.

The vectors live in the node's one index (node_index.py, saved in the engine
root), handed in as a ``PartitionIndex``; the engine saves it for every
partition at once. A partition opened on its own (no index given) is a node
of one partition: it keeps ``index.usearch`` and ``index.json`` in its
directory and saves them itself (``save_index``, ``close``).

This module owns SQLite: schema, transactions, BM25, the index log,
tombstones and the repair digest (bucket hashes kept by triggers with every
write, see schema.py; read here in O(1), entries by bucket through an index).
On open it hands the vector index a ``ChunkVectors`` view of the chunks and
the log to recover from; ``recovery`` tells what that took.

Durability: WAL with ``synchronous=NORMAL``. A committed transaction is in the
WAL file before ``commit`` returns, so it survives the process being killed
(kill -9, OOM); only an OS crash or power loss can lose the last commits
(they are fsynced at checkpoints). That is the trade we want for a replicated
store: a lost machine is recovered from its replicas, and per-commit fsyncs
would cost more than the embedding they protect. Pass ``synchronous="FULL"``
for single-copy deployments that must survive power loss.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from meshrag.errors import ConfigError
from meshrag.store.analysis import Analyzer
from meshrag.store.digest import bucket_hash
from meshrag.store.partition_search import PartitionSearch
from meshrag.store.node_index import INDEX_FILE, SIDECAR_FILE, NodeIndex, PartitionIndex
from meshrag.store.schema import (
    DB_FILE,
    DIGEST_SCHEMA,
    SCHEMA,
    ChunkVectors,
    add_bucket_column,
    digest_is_current,
    doc_state,
    insert_chunk,
    log_seq,
    metadata_json,
    put_document,
    rebuild_digest,
    register_digest_functions,
)
from meshrag.store.schema import (
    create_lexical_schema,
    drop_porter_fts,
    has_porter_fts,
    lexical_is_current,
    rebuild_lexical,
    register_lexical_functions,
)
from meshrag.store.types import ChunkInfo, ChunkWrite, DigestEntry, DocState, DocumentWrite, StoredDocument, WriteResult, WriteStatus, write_order

# IndexSettings and unit_query_vector are re-exported: node.py and engine.py import them from here.
from meshrag.store.vector_index import IndexSettings, unit_query_vector

log = logging.getLogger(__name__)

# DB_FILE and ChunkVectors are re-exported for engine.py and the tests.
__all__ = ["DB_FILE", "ChunkVectors", "IndexSettings", "Partition", "unit_query_vector"]


class Partition(PartitionSearch):
    """Thread-safe: writes serialise on a lock, reads use pooled connections.

    ``close`` must not race with calls in flight (the engine stops traffic first).
    """

    def __init__(
        self,
        root: Path,
        pid: int,
        dim: int,
        settings: IndexSettings | None = None,
        *,
        synchronous: str = "NORMAL",
        analyzer: Analyzer | None = None,
        index: PartitionIndex | None = None,
    ) -> None:
        self.pid = pid
        self.analyzer = analyzer or Analyzer()  # BM25's terms: chunks are indexed with it on write
        self.dim = dim
        self.settings = settings or IndexSettings()
        self.path = Path(root) / f"p{pid:04d}"
        self.recovery = "closed"  # then "new", "loaded", "caught_up:<n>" or "rebuilt"
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}")
        self._synchronous = synchronous
        self._write_lock = threading.Lock()  # one writer transaction at a time
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._idle_readers: list[sqlite3.Connection] = []
        self._given_index = index  # the node's; None: this partition indexes itself
        self._own_index: NodeIndex | None = None
        self._index: PartitionIndex | None = None

    # ------------------------------------------------------------ lifecycle
    @property
    def db_path(self) -> Path:
        return self.path / DB_FILE

    @property
    def index_path(self) -> Path:
        """Where a partition opened on its own keeps its index (an engine's lives in its root)."""
        return self.path / INDEX_FILE

    @property
    def sidecar_path(self) -> Path:
        return self.path / SIDECAR_FILE

    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fresh = not self.db_path.exists()
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.execute(f"PRAGMA journal_size_limit={4 << 20}")  # WAL shrinks back after checkpoints
        self._writer.executescript(SCHEMA)
        self._check_dim()
        self._prepare_digest()
        self._prepare_lexical()
        index = self._given_index if self._given_index is not None else self._index_of_its_own()
        self.recovery = index.recover(self._chunk_vectors(), fresh)
        self._index = index
        log.info("partition %d opened: %s, %d vectors", self.pid, self.recovery, len(index))

    def _index_of_its_own(self) -> PartitionIndex:
        self._own_index = NodeIndex(self.path, self.dim, self.settings, name=f"partition {self.pid}")
        self._own_index.load_saved()
        return self._own_index.view(self.pid)

    def close(self) -> None:
        """Release every connection; a partition with an index of its own saves it first
        (the node's index is the engine's to save)."""
        if self._writer is None:
            return
        if self._own_index is not None:
            self.save_index()
        with self._write_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._idle_readers.clear()
            self._writer.close()
            self._writer = None
            self._index = None
            self._own_index = None
            self.recovery = "closed"

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        return conn

    def _check_dim(self) -> None:
        conn = self._require_writer()
        row = conn.execute("SELECT value FROM partition_meta WHERE name = 'dim'").fetchone()
        if row is None:
            conn.execute("INSERT INTO partition_meta(name, value) VALUES ('dim', ?)", (str(self.dim),))
        elif int(row[0]) != self.dim:
            raise ConfigError(
                f"partition {self.pid} at {self.path} holds {row[0]}-dimensional vectors, "
                f"but the embedder produces {self.dim}; use the original model or a new data directory"
            )

    def _prepare_digest(self) -> None:
        """Digest triggers on the writer; a partition from before them (or from another digest
        definition) gets its buckets rebuilt once, here, before anyone reads them."""
        conn = self._require_writer()
        register_digest_functions(conn)
        add_bucket_column(conn)
        conn.executescript(DIGEST_SCHEMA)
        with self._transaction():
            if not digest_is_current(conn):
                rebuild_digest(conn)
                log.info("partition %d: repair digest rebuilt", self.pid)

    def _prepare_lexical(self) -> None:
        """The analyzer on the writer; a partition indexed otherwise (porter FTS5 of older code,
        another analyzer) is re-indexed once, here, before anyone searches it."""
        conn = self._require_writer()
        register_lexical_functions(conn, self.analyzer)
        if has_porter_fts(conn):
            drop_porter_fts(conn)
        with self._transaction():
            create_lexical_schema(conn)
            if not lexical_is_current(conn, self.analyzer):
                rebuild_lexical(conn, self.analyzer)
                log.info("partition %d: BM25 index rebuilt (%s)", self.pid, self.analyzer.fingerprint())

    def _require_writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise RuntimeError(f"partition {self.pid} is not open")
        return self._writer

    def _require_index(self) -> PartitionIndex:
        if self._index is None:
            raise RuntimeError(f"partition {self.pid} is not open")
        return self._index

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A pooled read connection (WAL readers never block the writer)."""
        self._require_writer()
        try:
            conn = self._idle_readers.pop()
        except IndexError:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._readers.append(conn)
        try:
            yield conn
        finally:
            self._idle_readers.append(conn)

    @contextmanager
    def _read_snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several queries that must see one consistent state."""
        with self._reader() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._require_writer()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when COMMIT itself failed (disk full, I/O error)
                conn.execute("ROLLBACK")
            raise

    # --------------------------------------------------------------- writes
    def upsert(self, docs: Sequence[DocumentWrite]) -> list[WriteResult]:
        """Apply a batch in one transaction; each applied document replaces all its chunks."""
        if not docs:
            return []
        vectors = [[self._write_vector(doc, i) for i in range(len(doc.chunks))] for doc in docs]
        results: list[WriteResult] = []
        removed: list[int] = []
        added_keys: list[int] = []
        added_vectors: list[np.ndarray] = []
        with self._write_lock:
            try:
                with self._transaction() as conn:
                    now = time.time()
                    for doc, doc_vectors in zip(docs, vectors):
                        result, old_keys, new_keys = self._upsert_one(conn, doc, doc_vectors, now)
                        results.append(result)
                        removed.extend(old_keys)
                        added_keys.extend(new_keys)
                        added_vectors.extend(doc_vectors if new_keys else [])
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"batch rejected, nothing written: {exc} (chunk ids must be unique per partition)") from exc
            self._apply_to_index(removed, added_keys, added_vectors)
        return results

    def _write_vector(self, doc: DocumentWrite, index: int) -> np.ndarray:
        vector = np.ascontiguousarray(doc.chunks[index].vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim or not np.isfinite(vector).all():
            raise ValueError(f"{doc.doc_id} chunk {index}: vector must be {self.dim} finite float32 values")
        return vector

    def _upsert_one(
        self, conn: sqlite3.Connection, doc: DocumentWrite, vectors: list[np.ndarray], now: float
    ) -> tuple[WriteResult, list[int], list[int]]:
        stored = doc_state(conn, doc.doc_id)
        if doc.deleted:
            return self._tombstone(conn, doc.doc_id, doc.version, stored, now)
        if stored is not None and not stored.deleted and stored.content_hash == doc.content_hash:
            # Same content: nothing to re-index, but a newer version is adopted, with its
            # chunk ids (they name the version), so replicas converge on one version and
            # one set of chunk ids whatever order the writes came in.
            if doc.version > stored.version:
                conn.execute("UPDATE documents SET version = ? WHERE doc_id = ?", (doc.version, doc.doc_id))
                conn.executemany(
                    "UPDATE chunks SET chunk_id = ? WHERE doc_id = ? AND seq = ?",
                    [(chunk.chunk_id, doc.doc_id, chunk.seq) for chunk in doc.chunks],
                )
            return WriteResult(doc.doc_id, WriteStatus.UNCHANGED, max(doc.version, stored.version)), [], []
        if stored is not None and not _wins(doc.version, False, doc.content_hash, stored):
            return WriteResult(doc.doc_id, WriteStatus.STALE, stored.version), [], []
        old_keys = self._remove_chunks(conn, doc.doc_id)
        put_document(conn, doc.doc_id, doc.version, doc.content_hash, doc.text, metadata_json(doc.metadata), False, now)
        new_keys = [
            insert_chunk(conn, doc.doc_id, chunk.chunk_id, chunk.seq, chunk.text, chunk.start, chunk.end, vector)
            for chunk, vector in zip(doc.chunks, vectors)
        ]
        status = WriteStatus.CREATED if stored is None or stored.deleted else WriteStatus.UPDATED
        return WriteResult(doc.doc_id, status, doc.version), old_keys, new_keys

    def delete(self, doc_id: str, version: int) -> WriteResult:
        """Tombstone a document, known or not, so an older write arriving late cannot resurrect it."""
        with self._write_lock:
            with self._transaction() as conn:
                result, old_keys, _ = self._tombstone(conn, doc_id, version, doc_state(conn, doc_id), time.time())
            self._apply_to_index(old_keys, [], [])
        return result

    def _tombstone(
        self, conn: sqlite3.Connection, doc_id: str, version: int, stored: DocState | None, now: float
    ) -> tuple[WriteResult, list[int], list[int]]:
        if stored is not None and not _wins(version, True, "", stored):
            return WriteResult(doc_id, WriteStatus.STALE, stored.version), [], []
        old_keys = self._remove_chunks(conn, doc_id)
        put_document(conn, doc_id, version, "", "", "{}", True, now)
        return WriteResult(doc_id, WriteStatus.DELETED, version), old_keys, []

    def purge_tombstones(self, older_than_version: int) -> int:
        """Forget tombstones older than the grace period; returns how many went."""
        with self._write_lock, self._transaction() as conn:
            cursor = conn.execute("DELETE FROM documents WHERE deleted = 1 AND version < ?", (older_than_version,))
            return cursor.rowcount

    @staticmethod
    def _remove_chunks(conn: sqlite3.Connection, doc_id: str) -> list[int]:
        keys = [key for (key,) in conn.execute("SELECT key FROM chunks WHERE doc_id = ?", (doc_id,))]
        if keys:
            conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        return keys

    def _apply_to_index(self, removed: list[int], added_keys: list[int], added_vectors: list[np.ndarray]) -> None:
        """Mirror a committed transaction into the in-memory index (under the write lock)."""
        if not removed and not added_keys:
            return
        if self._require_index().update(removed, added_keys, added_vectors, self._chunk_vectors()):
            self.recovery = "rebuilt"

    # ---------------------------------------------------------------- reads
    def doc_states(self, doc_ids: Sequence[str]) -> dict[str, DocState]:
        states: dict[str, DocState] = {}
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT doc_id, version, content_hash, deleted FROM documents WHERE doc_id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(doc_ids)),),
            )
            for doc_id, version, content_hash, deleted in rows:
                states[doc_id] = DocState(version, content_hash, bool(deleted))
        return states

    def get(self, doc_id: str) -> StoredDocument | None:
        """The stored document, tombstones included (``deleted=True``)."""
        with self._read_snapshot() as conn:
            row = conn.execute(
                "SELECT version, content_hash, text, metadata, deleted FROM documents WHERE doc_id = ?", (doc_id,)
            ).fetchone()
            if row is None:
                return None
            chunks = tuple(
                ChunkInfo(*chunk)
                for chunk in conn.execute(
                    "SELECT chunk_id, seq, text, start_char, end_char FROM chunks WHERE doc_id = ? ORDER BY seq", (doc_id,)
                )
            )
        version, content_hash, text, metadata, deleted = row
        return StoredDocument(doc_id, version, content_hash, text, json.loads(metadata), bool(deleted), chunks, self.pid)

    def bucket_hashes(self) -> list[str]:
        """The repair digest's bucket hashes, kept with every write: no entry is read."""
        with self._reader() as conn:
            rows = conn.execute("SELECT entries, digest FROM digest_buckets ORDER BY bucket").fetchall()
        return [bucket_hash(count, digest) for count, digest in rows]

    def digest_entries(self, buckets: Iterable[int] | None = None) -> list[DigestEntry]:
        """Documents and tombstones as (id, version, deleted, content hash), by id: every one, or
        those of the given digest buckets (read through the bucket index, not a scan)."""
        sql = "SELECT doc_id, version, deleted, content_hash FROM documents"
        params: tuple[Any, ...] = ()
        if buckets is not None:
            sql += " WHERE bucket IN (SELECT value FROM json_each(?))"
            params = (json.dumps(sorted(set(buckets))),)
        with self._reader() as conn:
            rows = conn.execute(sql + " ORDER BY doc_id", params).fetchall()
        return [DigestEntry(doc_id, version, bool(deleted), digest) for doc_id, version, deleted, digest in rows]

    def export(self, doc_ids: Sequence[str]) -> list[DocumentWrite]:
        """Documents (with their chunks and vectors) and tombstones, ready to apply on another
        replica as they are: repair and hand-off never re-embed."""
        exported: list[DocumentWrite] = []
        with self._read_snapshot() as conn:
            for doc_id in doc_ids:
                row = conn.execute(
                    "SELECT version, content_hash, text, metadata, deleted FROM documents WHERE doc_id = ?", (doc_id,)
                ).fetchone()
                if row is None:
                    continue
                version, digest, text, metadata, deleted = row
                chunks = tuple(
                    ChunkWrite(chunk_id, seq, chunk_text, start, end, np.frombuffer(vector, dtype=np.float32))
                    for chunk_id, seq, chunk_text, start, end, vector in conn.execute(
                        "SELECT chunk_id, seq, text, start_char, end_char, vector FROM chunks WHERE doc_id = ? ORDER BY seq",
                        (doc_id,),
                    )
                )
                exported.append(DocumentWrite(doc_id, version, digest, text, json.loads(metadata), chunks, bool(deleted)))
        return exported

    def stats(self) -> dict[str, Any]:
        with self._read_snapshot() as conn:
            documents, tombstones = conn.execute(
                "SELECT COALESCE(SUM(deleted = 0), 0), COALESCE(SUM(deleted = 1), 0) FROM documents"
            ).fetchone()
            chunks = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        on_disk = _bytes_on_disk(self.path)
        return {
            "documents": documents,
            "tombstones": tombstones,
            "chunks": chunks,
            "index_size": len(self._require_index()),
            "pending_index_changes": self._pending,
            "bytes": on_disk,
            "recovery": self.recovery,
        }

    # ---------------------------------------------------------------- index
    def save_index(self, force: bool = False) -> bool:
        """Save an index of its own (opened without the node's): NodeIndex.save of this one
        partition, which trims the log after the files are in place. Returns whether it
        wrote (nothing to do when no change is pending). The engine saves the node's index."""
        if self._own_index is None:
            raise RuntimeError(f"partition {self.pid} shares its node's index: the engine saves it")
        return self._own_index.save([self], force) is not None

    def maybe_save_index(self, max_pending: int) -> bool:
        """Save an index of its own when at least ``max_pending`` index changes are unsaved."""
        return self._pending >= max_pending and self.save_index()

    @contextmanager
    def writes_paused(self) -> Iterator[int | None]:
        """Hold this partition's writes and yield its index-log seq: while held, its vectors in
        the index are exactly SQLite's at that seq (a write commits and updates the index under
        this lock). None if the partition is closed."""
        with self._write_lock:
            yield None if self._writer is None else log_seq(self._writer)

    def trim_index_log(self, seq: int) -> None:
        """Forget index-log entries through ``seq``, which a saved index covers (no-op once closed)."""
        with self._write_lock:
            conn = self._writer
            if conn is None:
                return
            with self._transaction():
                conn.execute("DELETE FROM index_log WHERE seq <= ?", (seq,))
                conn.execute(
                    "INSERT INTO partition_meta(name, value) VALUES ('log_trimmed_through', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (str(seq),),
                )
            # Fold the WAL into the database now and then (never blocks readers).
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @property
    def _pending(self) -> int:  # 0 once closed: closing saved every change
        return 0 if self._index is None else self._index.pending

    def _chunk_vectors(self) -> ChunkVectors:
        """SQLite as the index's source; use it under the write lock (or before the partition is shared)."""
        return ChunkVectors(self._require_writer())


# ------------------------------------------------------------------ helpers
def _wins(version: int, deleted: bool, content_hash: str, stored: DocState) -> bool:
    """Whether a write replaces what is stored: the order repair compares by too."""
    return write_order(version, deleted, content_hash) > write_order(stored.version, stored.deleted, stored.content_hash)


def _bytes_on_disk(directory: Path) -> int:
    total = 0
    for entry in directory.iterdir():
        try:
            total += entry.stat().st_size if entry.is_file() else 0
        except FileNotFoundError:  # a temp file renamed away by a concurrent save
            pass
    return total
