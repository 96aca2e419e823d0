"""A partition's SQLite: schema, BM25 reads, row statements and the vector source.

partition.py runs these inside its transactions; nothing here opens a
connection or takes a lock. The schema keeps the lexical index and the index
log in the same transaction as the chunk rows (triggers), which is what lets
the usearch index be derived and recovered from SQLite alone (node_index.py).

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

BM25 (LEXICAL_SCHEMA) indexes the analyzer's terms, not the raw text: a
trigger on ``chunks`` stores each chunk's analyzed terms in ``chunk_terms``
(through the Python function ``meshrag_analyze``, register_lexical_functions),
and triggers on ``chunk_terms`` feed an FTS5 table over them and the partition
totals (chunks, terms) in ``lexical_totals``. FTS5 serves only as a compact
inverted index, read through fts5vocab tables: document frequency per term
(``chunk_terms_df``) and term frequency per chunk (``chunk_terms_tf``); scoring
happens in lexical.py with statistics that may come from the whole cluster.
Partitions indexed another way (the old porter FTS5 over chunk text, another
analyzer) are re-indexed once on open (drop_porter_fts, rebuild_lexical).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterator, Sequence

import numpy as np

from meshrag.store.analysis import Analyzer
from meshrag.store.digest import BUCKETS, DIGEST_BYTES, bucket_of, entry_digest, fold_buckets, xor_digests
from meshrag.store.lexical import TermStats
from meshrag.store.types import DigestEntry, DocState

DB_FILE = "store.sqlite"
_READ_BATCH = 4096
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
-- AUTOINCREMENT: seqs keep growing after the log is trimmed empty.
CREATE TABLE IF NOT EXISTS index_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op  TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    key INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partition_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Triggers keep the index log in the transaction that changes chunks (LEXICAL_SCHEMA's do the same for BM25).
CREATE TRIGGER IF NOT EXISTS chunks_added AFTER INSERT ON chunks BEGIN
    INSERT INTO index_log(op, key) VALUES ('add', new.key);
END;
CREATE TRIGGER IF NOT EXISTS chunks_removed AFTER DELETE ON chunks BEGIN
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

CHUNKS_WITH_DOCS = "chunks c JOIN documents d ON d.doc_id = c.doc_id"


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


# ------------------------------------------------------------------ BM25
# Bump when the lexical tables or triggers change: partitions re-index on open.
LEXICAL_LAYOUT = "fts5-ascii/v1"

# Statements, not a script: rebuild_lexical runs them inside the caller's transaction.
# The FTS5 tokenizer is 'ascii', not unicode61: it splits only on ASCII separators and
# folds only ASCII case, so the tokens FTS5 sees are exactly the analyzer's terms (which
# hold no ASCII separator and are folded already), whatever SQLite's Unicode tables say.
# External content (chunk_terms) rather than contentless: SQLite 3.40 has no
# contentless_delete, and an FTS5 delete must be given the very terms once inserted;
# chunk_terms keeps them, so a delete never depends on re-analysing old text the same way.
LEXICAL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS chunk_terms (
        key      INTEGER PRIMARY KEY, -- chunks.key
        analyzed TEXT NOT NULL,       -- the analyzer's terms, joined by single spaces
        terms    INTEGER NOT NULL GENERATED ALWAYS AS
                 (length(analyzed) - length(replace(analyzed, ' ', '')) + (analyzed != '')) STORED
    )""",
    """CREATE VIRTUAL TABLE IF NOT EXISTS chunk_terms_fts USING fts5(
        analyzed, content='chunk_terms', content_rowid='key', tokenize='ascii', columnsize=0
    )""",
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunk_terms_df USING fts5vocab(chunk_terms_fts, row)",
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunk_terms_tf USING fts5vocab(chunk_terms_fts, instance)",
    """CREATE TABLE IF NOT EXISTS lexical_totals (
        id     INTEGER PRIMARY KEY CHECK (id = 0),
        chunks INTEGER NOT NULL,
        terms  INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO lexical_totals(id, chunks, terms) VALUES (0, 0, 0)",
    """CREATE TRIGGER IF NOT EXISTS chunks_analyzed AFTER INSERT ON chunks BEGIN
        INSERT INTO chunk_terms(key, analyzed) VALUES (new.key, meshrag_analyze(new.text));
    END""",
    """CREATE TRIGGER IF NOT EXISTS chunks_unanalyzed AFTER DELETE ON chunks BEGIN
        DELETE FROM chunk_terms WHERE key = old.key;
    END""",
    """CREATE TRIGGER IF NOT EXISTS chunk_terms_added AFTER INSERT ON chunk_terms BEGIN
        INSERT INTO chunk_terms_fts(rowid, analyzed) VALUES (new.key, new.analyzed);
        UPDATE lexical_totals SET chunks = chunks + 1, terms = terms + new.terms;
    END""",
    """CREATE TRIGGER IF NOT EXISTS chunk_terms_removed AFTER DELETE ON chunk_terms BEGIN
        INSERT INTO chunk_terms_fts(chunk_terms_fts, rowid, analyzed) VALUES ('delete', old.key, old.analyzed);
        UPDATE lexical_totals SET chunks = chunks - 1, terms = terms - old.terms;
    END""",
)
_LEXICAL_DROP = (
    "DROP TRIGGER IF EXISTS chunks_analyzed",
    "DROP TRIGGER IF EXISTS chunks_unanalyzed",
    "DROP TABLE IF EXISTS chunk_terms_df",
    "DROP TABLE IF EXISTS chunk_terms_tf",
    "DROP TABLE IF EXISTS chunk_terms_fts",
    "DROP TABLE IF EXISTS chunk_terms",  # its own triggers go with it
    "DROP TABLE IF EXISTS lexical_totals",
)
CANDIDATE_COLUMNS = "c.key, c.chunk_id, c.doc_id, d.version"
# A term's chunks with its frequency and their lengths; instance rows are one per occurrence.
_POSTINGS = (
    "SELECT g.doc, g.tf, t.terms FROM (SELECT doc, COUNT(*) AS tf FROM chunk_terms_tf WHERE term = ? GROUP BY doc) AS g "
    "JOIN chunk_terms t ON t.key = g.doc"
)


def register_lexical_functions(conn: sqlite3.Connection, analyzer: Analyzer) -> None:
    """The analyzer the chunk triggers index with; a connection without it cannot write chunks."""
    conn.create_function("meshrag_analyze", 1, lambda text: " ".join(analyzer.terms(text)), deterministic=True)


def lexical_format(analyzer: Analyzer) -> str:
    return f"{LEXICAL_LAYOUT}+{analyzer.fingerprint()}"


def create_lexical_schema(conn: sqlite3.Connection) -> None:
    for statement in LEXICAL_SCHEMA:
        conn.execute(statement)


def lexical_is_current(conn: sqlite3.Connection, analyzer: Analyzer) -> bool:
    row = conn.execute("SELECT value FROM partition_meta WHERE name = 'lexical_format'").fetchone()
    return row is not None and row[0] == lexical_format(analyzer)


def has_porter_fts(conn: sqlite3.Connection) -> bool:
    """Whether this partition still has the FTS5 index of older code (porter over chunk text)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'chunks_fts'").fetchone() is not None


def drop_porter_fts(conn: sqlite3.Connection) -> None:
    """Remove the old FTS5 table and the chunk triggers that fed it, and re-create those
    triggers from SCHEMA (they also keep the index log), in one transaction of its own:
    executescript, because SCHEMA is a script. rebuild_lexical then indexes the chunks."""
    try:
        conn.executescript(
            "BEGIN IMMEDIATE; DROP TRIGGER IF EXISTS chunks_added; DROP TRIGGER IF EXISTS chunks_removed; "
            f"DROP TABLE IF EXISTS chunks_fts; {SCHEMA}; COMMIT;"
        )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def rebuild_lexical(conn: sqlite3.Connection, analyzer: Analyzer) -> None:
    """Index every chunk anew with ``analyzer`` (in the caller's transaction; the analyzer
    must be the one register_lexical_functions gave this connection)."""
    for statement in _LEXICAL_DROP:
        conn.execute(statement)
    create_lexical_schema(conn)
    conn.execute("INSERT INTO chunk_terms(key, analyzed) SELECT key, meshrag_analyze(text) FROM chunks ORDER BY key")
    conn.execute(
        "INSERT INTO partition_meta(name, value) VALUES ('lexical_format', ?) "
        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        (lexical_format(analyzer),),
    )


def read_term_stats(conn: sqlite3.Connection, terms: Sequence[str]) -> TermStats:
    """Chunk count, total terms and the df of every asked term (0 if absent): O(terms)."""
    chunks, total = conn.execute("SELECT chunks, terms FROM lexical_totals WHERE id = 0").fetchone()
    df = dict.fromkeys(terms, 0)
    rows = conn.execute("SELECT term, doc FROM chunk_terms_df WHERE term IN (SELECT value FROM json_each(?))", (json.dumps(list(df)),))
    df.update(rows)
    return TermStats(int(chunks), int(total), df)


def read_postings(conn: sqlite3.Connection, terms: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """lexical.bm25_scores' inputs: per term present, (chunk key, tf) rows by key; and
    (chunk key, terms) rows of those chunks (a chunk holding two terms appears twice).

    One index-assisted fts5vocab read per term (instance rows, one per occurrence),
    joined to the chunk's length in the same query: a partition's fixed cost per
    query term is what dominates a node holding many small partitions.
    """
    postings: dict[str, np.ndarray] = {}
    lengths: list[np.ndarray] = []
    for term in terms:
        rows = conn.execute(_POSTINGS, (term,)).fetchall()
        if rows:
            table = np.array(rows, dtype=np.int64)
            postings[term] = table[:, :2]
            lengths.append(table[:, [0, 2]])
    return postings, np.concatenate(lengths) if lengths else np.zeros((0, 2), np.int64)


def read_candidates(conn: sqlite3.Connection, keys: np.ndarray, where: tuple[str, list[Any]]) -> dict[int, tuple[str, str, int]]:
    """Chunk id, doc id and version of those ``keys`` whose document passes the SQL filter ``where``."""
    sql = f"SELECT {CANDIDATE_COLUMNS} FROM {CHUNKS_WITH_DOCS} WHERE c.key IN (SELECT value FROM json_each(?)) AND {where[0]}"
    rows = conn.execute(sql, (json.dumps(keys.tolist()), *where[1]))
    return {key: (chunk_id, doc_id, version) for key, chunk_id, doc_id, version in rows}


def read_candidate_texts(
    conn: sqlite3.Connection, keys: np.ndarray, where: tuple[str, list[Any]],
) -> dict[int, tuple[str, str, int, str, str]]:
    """``read_candidates`` with each chunk's text and its document's metadata (JSON) in the
    same query: for a search that needs the text of what it finds right away."""
    sql = (f"SELECT {CANDIDATE_COLUMNS}, c.text, d.metadata FROM {CHUNKS_WITH_DOCS} "
           f"WHERE c.key IN (SELECT value FROM json_each(?)) AND {where[0]}")
    rows = conn.execute(sql, (json.dumps(keys.tolist()), *where[1]))
    return {row[0]: row[1:] for row in rows}
