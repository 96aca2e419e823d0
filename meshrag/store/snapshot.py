"""Consistent copies of live SQLite databases, and what a copy holds (snapshots, restores).

``backup_database`` uses SQLite's online backup API inside one read transaction
on the source. Why the transaction: a backup stepped a few pages at a time from
a connection without one restarts from the first page whenever another
connection commits, so under a steady writer it may never finish (measured: a
40 MB database with a writer committing every millisecond took 9.5 s and 1,788
restarts; inside a read transaction 0.26 s, no restart). In WAL mode a reader
never blocks the writer, so writes go on during the whole copy; the copy is the
database exactly as of the transaction's start. The price: the WAL cannot be
checkpointed past that point until the copy ends, so it grows by what is
written meanwhile (one partition's copy lasts well under a second at 10,000
documents). Steps of ``step_pages`` pages let the caller report progress.

Functions block: run them in the storage executor.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from meshrag.store.digest import bucket_hash

STEP_PAGES = 1024  # 4 MiB of the default 4 KiB pages per step
StepCallback = Callable[[int], None]  # bytes copied by one step


@dataclass(frozen=True)
class DatabaseSummary:
    """What a partition database holds, read from one consistent state of it."""

    documents: int
    tombstones: int
    chunks: int
    max_version: int
    bucket_hashes: tuple[str, ...]  # the repair digest's buckets, as repair compares them

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "bucket_hashes": list(self.bucket_hashes)}


def _read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that never creates the file (a partition dropped meanwhile is an error)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)


def backup_database(source: Path, target: Path, step_pages: int = STEP_PAGES, on_step: StepCallback | None = None) -> int:
    """Copy ``source`` (live, WAL) to ``target`` (must not exist) as of one instant; returns its size."""
    if target.exists():
        raise FileExistsError(f"{target} exists")
    src = _read_only(source)
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
        src.execute("BEGIN")
        src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the read transaction starts here
        done = [0]

        def progress(status: int, remaining: int, total: int) -> None:
            copied = (total - remaining) * page_size
            if on_step is not None and copied > done[0]:
                on_step(copied - done[0])
            done[0] = copied

        src.backup(dst, pages=step_pages, progress=progress, sleep=0.0)
        src.execute("COMMIT")
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file; the node turns WAL back on at open
    finally:
        dst.close()
        src.close()
    return target.stat().st_size


def summarize_database(path: Path) -> DatabaseSummary:
    """Document, tombstone and chunk counts, the highest version and the digest buckets of a
    partition database (a snapshot's copy or a live one), all from one read transaction."""
    conn = _read_only(path)
    try:
        conn.execute("BEGIN")
        documents, tombstones, max_version = conn.execute(
            "SELECT COALESCE(SUM(deleted = 0), 0), COALESCE(SUM(deleted = 1), 0), COALESCE(MAX(version), 0) FROM documents"
        ).fetchone()
        chunks = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        buckets = conn.execute("SELECT entries, digest FROM digest_buckets ORDER BY bucket").fetchall()
        conn.execute("COMMIT")
    finally:
        conn.close()
    return DatabaseSummary(int(documents), int(tombstones), int(chunks), int(max_version),
                           tuple(bucket_hash(count, digest) for count, digest in buckets))


def integrity_problem(path: Path) -> str | None:
    """None if SQLite's quick_check passes on ``path``, else what it reported."""
    conn = _read_only(path)
    try:
        result = [row[0] for row in conn.execute("PRAGMA quick_check")]
    finally:
        conn.close()
    return None if result == ["ok"] else "; ".join(result[:5])


def file_sha256(path: Path, on_chunk: StepCallback | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest()
