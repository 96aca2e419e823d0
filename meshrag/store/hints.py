"""Durable hinted handoff: writes a replica missed, kept until it can take them.

When a coordinator cannot reach a replica it stores the replica's share of
the write here (already chunked and embedded: replaying never re-embeds) and
replays it when gossip sees the replica alive. SQLite in WAL mode: a
committed hint survives kill -9 of the coordinator and is delivered after
its restart. Replays are idempotent: replicas apply
documents by version (last writer wins), so a hint delivered twice is a no-op.

Methods block; run them in the storage executor.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    target     TEXT NOT NULL,     -- node id of the replica that missed the write
    created_at REAL NOT NULL,     -- wall seconds
    documents  INTEGER NOT NULL,  -- documents and tombstones in the body
    body       BLOB NOT NULL      -- the replica-apply request, msgpack
);
CREATE INDEX IF NOT EXISTS hints_by_target ON hints(target, id);
"""


@dataclass(frozen=True, slots=True)
class Hint:
    hint_id: int
    target: str
    created_at: float
    documents: int
    body: bytes


@dataclass(frozen=True, slots=True)
class PendingHints:
    hints: int
    documents: int
    bytes: int
    oldest: float


class HintStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # committed = in the WAL: survives kill -9
        conn.executescript(_SCHEMA)
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("hint store is not open")
        return self._conn

    def add(self, target: str, body: bytes, documents: int) -> int:
        with self._lock:
            cursor = self._db().execute(
                "INSERT INTO hints(target, created_at, documents, body) VALUES (?, ?, ?, ?)",
                (target, time.time(), documents, body),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def next_for(self, target: str, limit: int) -> list[Hint]:
        """The oldest hints for one replica, in the order they were written."""
        with self._lock:
            rows = self._db().execute(
                "SELECT id, target, created_at, documents, body FROM hints WHERE target = ? ORDER BY id LIMIT ?",
                (target, limit),
            ).fetchall()
        return [Hint(*row) for row in rows]

    def remove(self, hint_ids: Iterable[int]) -> int:
        ids = list(hint_ids)
        with self._lock:
            cursor = self._db().executemany("DELETE FROM hints WHERE id = ?", [(i,) for i in ids])
            return cursor.rowcount

    def drop_target(self, target: str) -> int:
        """Forget a removed node's hints (its partitions are re-replicated by repair)."""
        with self._lock:
            return self._db().execute("DELETE FROM hints WHERE target = ?", (target,)).rowcount

    def pending(self) -> dict[str, PendingHints]:
        with self._lock:
            rows = self._db().execute(
                "SELECT target, COUNT(*), SUM(documents), SUM(LENGTH(body)), MIN(created_at) FROM hints GROUP BY target"
            ).fetchall()
        return {target: PendingHints(count, docs, size, oldest) for target, count, docs, size, oldest in rows}
