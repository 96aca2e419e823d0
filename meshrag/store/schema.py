"""A partition's SQLite: schema, FTS5 query text, row statements and the vector source.

partition.py runs these inside its transactions; nothing here opens a
connection or takes a lock. The schema keeps FTS5 and the index log in the
same transaction as the chunk rows (triggers), which is what lets the usearch
index be derived and recovered from SQLite alone (vector_index.py).

Repair digests are kept the same way: every document row carries its bucket
(cluster/repair.py's bucket_of), and triggers on ``documents`` fold each
insert, change and delete into ``digest_buckets`` (count and XOR of entry
digests per bucket) inside the writing transaction, whatever the write path
(upsert, version-only update, tombstone, purge). Reading a partition's bucket
hashes is then 64 rows, and the entries of a bucket are an index range. The
triggers call Python functions (register_digest_functions): a connection
without them cannot write documents at all, so the buckets cannot drift
silently. Partitions made before this are migrated on open (add_bucket_column,
rebuild_digest).
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any, Iterator, Sequence

import numpy as np

from meshrag.store.digest import BUCKETS, DIGEST_BYTES, bucket_of, entry_digest, fold_buckets, xor_digests
from meshrag.store.types import DigestEntry, DocState

DB_FILE = "store.sqlite"
MAX_QUERY_TERMS = 64
_READ_BATCH = 4096
_QUERY_TERM = re.compile(r"[^\W_]+")  # the same word characters FTS5's unicode61 keeps
# Bump when the digest definition or BUCKETS changes: partitions rebuild their buckets on open.
DIGEST_FORMAT = f"xor-blake2b{DIGEST_BYTES}/{BUCKETS}"

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id       TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    text         TEXT NOT NULL,
    metadata     TEXT NOT NULL,              -- JSON object
    deleted      INTEGER NOT NULL DEFAULT 0, -- 1: tombstone (text emptied, no chunks)
    updated_at   REAL NOT NULL,              -- wall seconds of the local write
    bucket       INTEGER NOT NULL DEFAULT -1 -- repair digest bucket of doc_id (-1: not migrated yet)
);
CREATE TABLE IF NOT EXISTS chunks (
    key        INTEGER PRIMARY KEY AUTOINCREMENT, -- the usearch key; never reused
    chunk_id   TEXT NOT NULL UNIQUE,
    doc_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    text       TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char   INTEGER NOT NULL,
    vector     BLOB NOT NULL                      -- float32[dim]
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id, seq);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='key',
    tokenize='porter unicode61 remove_diacritics 2'
);
-- AUTOINCREMENT: seqs keep growing after the log is trimmed empty.
CREATE TABLE IF NOT EXISTS index_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op  TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    key INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partition_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Triggers keep FTS and the index log in the transaction that changes chunks.
CREATE TRIGGER IF NOT EXISTS chunks_added AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.key, new.text);
    INSERT INTO index_log(op, key) VALUES ('add', new.key);
END;
CREATE TRIGGER IF NOT EXISTS chunks_removed AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.key, old.text);
    INSERT INTO index_log(op, key) VALUES ('remove', old.key);
END;
"""

# After SCHEMA and add_bucket_column (an index on bucket needs the column).
DIGEST_SCHEMA = """
CREATE INDEX IF NOT EXISTS documents_by_bucket ON documents(bucket);
CREATE TABLE IF NOT EXISTS digest_buckets (
    bucket  INTEGER PRIMARY KEY,
    entries INTEGER NOT NULL, -- documents and tombstones in the bucket
    digest  BLOB NOT NULL     -- XOR of their entry digests
);
CREATE TRIGGER IF NOT EXISTS documents_digest_added AFTER INSERT ON documents BEGIN
    UPDATE digest_buckets SET entries = entries + 1,
        digest = meshrag_xor(digest, meshrag_entry_digest(new.doc_id, new.version, new.deleted, new.content_hash))
    WHERE bucket = new.bucket;
END;
CREATE TRIGGER IF NOT EXISTS documents_digest_removed AFTER DELETE ON documents BEGIN
    UPDATE digest_buckets SET entries = entries - 1,
        digest = meshrag_xor(digest, meshrag_entry_digest(old.doc_id, old.version, old.deleted, old.content_hash))
    WHERE bucket = old.bucket;
END;
CREATE TRIGGER IF NOT EXISTS documents_digest_changed AFTER UPDATE OF version, deleted, content_hash ON documents BEGIN
    UPDATE digest_buckets SET digest = meshrag_xor(
        meshrag_xor(digest, meshrag_entry_digest(old.doc_id, old.version, old.deleted, old.content_hash)),
        meshrag_entry_digest(new.doc_id, new.version, new.deleted, new.content_hash))
    WHERE bucket = new.bucket;
END;
"""

HIT_COLUMNS = "c.key, c.chunk_id, c.doc_id, c.text, d.metadata, d.version"
CHUNKS_WITH_DOCS = "chunks c JOIN documents d ON d.doc_id = c.doc_id"


def fts_query(text: str) -> str:
    """Arbitrary user text as a safe FTS5 query: each word quoted, OR-ed; '' if none."""
    terms: list[str] = []
    for term in _QUERY_TERM.findall(text.lower()):
        if term not in terms:
            terms.append(term)
        if len(terms) == MAX_QUERY_TERMS:
            break
    return " OR ".join(f'"{term}"' for term in terms)


class ChunkVectors:
    """The partition's SQLite as the vector index's source of truth (a ``VectorSource``).

    Reads through the connection it is given; the partition passes its writer,
    under its write lock, so the view cannot shift while the index reads it.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def keys_logged_after(self, seq: int) -> list[int]:
        return [key for (key,) in self._conn.execute("SELECT key FROM index_log WHERE seq > ? ORDER BY seq", (seq,))]

    def log_trimmed_through(self) -> int | None:
        row = self._conn.execute("SELECT value FROM partition_meta WHERE name = 'log_trimmed_through'").fetchone()
        return None if row is None else int(row[0])

    def vectors_of(self, keys: Sequence[int]) -> dict[int, bytes]:
        present: dict[int, bytes] = {}
        for start in range(0, len(keys), _READ_BATCH):
            batch = json.dumps(list(keys[start : start + _READ_BATCH]))
            rows = self._conn.execute("SELECT key, vector FROM chunks WHERE key IN (SELECT value FROM json_each(?))", (batch,))
            present.update(rows)
        return present

    def all_keys(self) -> np.ndarray:
        return np.fromiter((key for (key,) in self._conn.execute("SELECT key FROM chunks")), dtype=np.uint64)

    def all_vectors(self) -> Iterator[list[tuple[int, bytes]]]:
        cursor = self._conn.execute("SELECT key, vector FROM chunks ORDER BY key")
        while rows := cursor.fetchmany(_READ_BATCH):
            yield rows


def doc_state(conn: sqlite3.Connection, doc_id: str) -> DocState | None:
    row = conn.execute("SELECT version, content_hash, deleted FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
    return None if row is None else DocState(row[0], row[1], bool(row[2]))


def put_document(
    conn: sqlite3.Connection,
    doc_id: str,
    version: int,
    content_hash: str,
    text: str,
    metadata: str,
    deleted: bool,
    now: float,
) -> None:
    conn.execute(
        "INSERT INTO documents(doc_id, version, content_hash, text, metadata, deleted, updated_at, bucket) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(doc_id) DO UPDATE SET version = excluded.version, "
        "content_hash = excluded.content_hash, text = excluded.text, metadata = excluded.metadata, "
        "deleted = excluded.deleted, updated_at = excluded.updated_at",
        (doc_id, version, content_hash, text, metadata, int(deleted), now, bucket_of(doc_id)),
    )


def insert_chunk(
    conn: sqlite3.Connection, doc_id: str, chunk_id: str, seq: int, text: str, start: int, end: int, vector: np.ndarray
) -> int:
    cursor = conn.execute(
        "INSERT INTO chunks(chunk_id, doc_id, seq, text, start_char, end_char, vector) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (chunk_id, doc_id, seq, text, start, end, vector.tobytes()),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def metadata_json(metadata: dict[str, Any]) -> str:
    """Strict JSON (no NaN): SQLite's json functions, which filters use, reject anything else."""
    return json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def log_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'index_log'").fetchone()
    return 0 if row is None else int(row[0])


# ------------------------------------------------------------------ repair digests
def register_digest_functions(conn: sqlite3.Connection) -> None:
    """The Python functions the digest triggers call: repair.py's definition, the only one."""
    conn.create_function("meshrag_entry_digest", 4, _entry_digest, deterministic=True)
    conn.create_function("meshrag_xor", 2, xor_digests, deterministic=True)


def _entry_digest(doc_id: str, version: int, deleted: int, content_hash: str) -> bytes:
    return entry_digest(doc_id, version, bool(deleted), content_hash)


def add_bucket_column(conn: sqlite3.Connection) -> None:
    """Partitions created before digests were kept lack the column (rebuild_digest fills it)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(documents)")}
    if "bucket" not in columns:
        conn.execute("ALTER TABLE documents ADD COLUMN bucket INTEGER NOT NULL DEFAULT -1")


def digest_is_current(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT value FROM partition_meta WHERE name = 'digest_format'").fetchone()
    return row is not None and row[0] == DIGEST_FORMAT


def rebuild_digest(conn: sqlite3.Connection) -> None:
    """Recompute every row's bucket and every bucket from scratch (in the caller's transaction)."""
    buckets = [(bucket_of(doc_id), doc_id) for (doc_id,) in conn.execute("SELECT doc_id FROM documents")]
    conn.executemany("UPDATE documents SET bucket = ? WHERE doc_id = ?", buckets)
    rows = conn.execute("SELECT doc_id, version, deleted, content_hash FROM documents")
    folded = fold_buckets(DigestEntry(doc_id, version, bool(deleted), digest) for doc_id, version, deleted, digest in rows)
    conn.execute("DELETE FROM digest_buckets")
    conn.executemany(
        "INSERT INTO digest_buckets(bucket, entries, digest) VALUES (?, ?, ?)",
        [(bucket, count, value) for bucket, (count, value) in enumerate(folded)],
    )
    conn.execute(
        "INSERT INTO partition_meta(name, value) VALUES ('digest_format', ?) "
        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (DIGEST_FORMAT,),
    )
