"""A partition's SQLite: schema, FTS5 query text, row statements and the vector source.

partition.py runs these inside its transactions; nothing here opens a
connection or takes a lock. The schema keeps FTS5 and the index log in the
same transaction as the chunk rows (triggers), which is what lets the usearch
index be derived and recovered from SQLite alone (vector_index.py).
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any, Iterator, Sequence

import numpy as np

from meshrag.store.types import DocState

DB_FILE = "store.sqlite"
MAX_QUERY_TERMS = 64
_READ_BATCH = 4096
_QUERY_TERM = re.compile(r"[^\W_]+")  # the same word characters FTS5's unicode61 keeps

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id       TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    text         TEXT NOT NULL,
    metadata     TEXT NOT NULL,              -- JSON object
    deleted      INTEGER NOT NULL DEFAULT 0, -- 1: tombstone (text emptied, no chunks)
    updated_at   REAL NOT NULL               -- wall seconds of the local write
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
        "INSERT INTO documents(doc_id, version, content_hash, text, metadata, deleted, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(doc_id) DO UPDATE SET version = excluded.version, "
        "content_hash = excluded.content_hash, text = excluded.text, metadata = excluded.metadata, "
        "deleted = excluded.deleted, updated_at = excluded.updated_at",
        (doc_id, version, content_hash, text, metadata, int(deleted), now),
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
