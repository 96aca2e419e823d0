"""Durable hinted handoff: writes a replica missed, kept until it can take them.

When a coordinator cannot reach a replica it stores the replica's share of
the write here (already chunked and embedded: replaying never re-embeds) and
replays it when gossip sees the replica alive. SQLite in WAL mode: a
committed hint survives kill -9 of the coordinator and is delivered after
its restart. Replays are idempotent: replicas apply
documents by version (last writer wins), so a hint delivered twice is a no-op.

Bounded, as Cassandra's hints are: per target at most ``max_bytes_per_target``
bytes (a write beyond it is not hinted), and hints older than the hint window
are expired (``expire``). A hint dropped either way, or one its replica
refuses for good, is counted by reason (``dropped``): anti-entropy repair
still brings the replica its copy, only later.

Methods block; run them in the storage executor.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    target     TEXT NOT NULL,     -- node id of the replica that missed the write
    created_at REAL NOT NULL,     -- wall seconds
    documents  INTEGER NOT NULL,  -- documents and tombstones in the body
    body       BLOB NOT NULL      -- the replica-apply request, msgpack
);
CREATE INDEX IF NOT EXISTS hints_by_target ON hints(target, id);
CREATE INDEX IF NOT EXISTS hints_by_age ON hints(created_at);
"""
DROP_REASONS = ("over_budget", "expired", "window", "undeliverable")


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
    def __init__(self, path: Path, max_bytes_per_target: int = 0, wall: Callable[[], float] = time.time) -> None:
        """``max_bytes_per_target``: 0 = unbounded. ``wall``: the node's wall clock."""
        self.path = Path(path)
        self.max_bytes_per_target = max_bytes_per_target
        self._wall = wall
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._bytes: dict[str, int] = {}  # pending body bytes per target, kept in step with the table
        self._dropped: dict[str, int] = {reason: 0 for reason in DROP_REASONS}  # documents, by reason

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # committed = in the WAL: survives kill -9
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._recount_bytes()

    def _recount_bytes(self) -> None:
        rows = self._db().execute("SELECT target, SUM(LENGTH(body)) FROM hints GROUP BY target").fetchall()
        self._bytes = {target: int(size) for target, size in rows}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("hint store is not open")
        return self._conn

    def add(self, target: str, body: bytes, documents: int) -> int | None:
        """Store a hint; None (counted as over_budget) when the target's budget is spent."""
        with self._lock:
            held = self._bytes.get(target, 0)
            if self.max_bytes_per_target and held + len(body) > self.max_bytes_per_target:
                self._dropped["over_budget"] += documents
                return None
            cursor = self._db().execute(
                "INSERT INTO hints(target, created_at, documents, body) VALUES (?, ?, ?, ?)",
                (target, self._wall(), documents, body),
            )
            self._bytes[target] = held + len(body)
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def expire(self, older_than: float) -> int:
        """Drop hints created before ``older_than`` (wall seconds); returns documents dropped."""
        with self._lock:
            db = self._db()
            (documents,) = db.execute("SELECT COALESCE(SUM(documents), 0) FROM hints WHERE created_at < ?", (older_than,)).fetchone()
            if documents:
                db.execute("DELETE FROM hints WHERE created_at < ?", (older_than,))
                self._dropped["expired"] += int(documents)
                self._recount_bytes()
            return int(documents)

    def discard(self, hint: Hint, reason: str) -> None:
        """Drop one hint that cannot be delivered (its replica refuses it for good)."""
        self.remove([hint.hint_id])
        self.count_dropped(reason, hint.documents)

    def count_dropped(self, reason: str, documents: int) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + documents

    @property
    def dropped(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped)

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
            db = self._db()
            sizes = db.execute(
                "SELECT target, LENGTH(body) FROM hints WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
            ).fetchall()
            cursor = db.executemany("DELETE FROM hints WHERE id = ?", [(i,) for i in ids])
            for target, size in sizes:
                self._bytes[target] = max(0, self._bytes.get(target, 0) - int(size))
            return cursor.rowcount

    def drop_target(self, target: str) -> int:
        """Forget a removed node's hints (its partitions are re-replicated by repair)."""
        with self._lock:
            self._bytes.pop(target, None)
            return self._db().execute("DELETE FROM hints WHERE target = ?", (target,)).rowcount

    def pending(self) -> dict[str, PendingHints]:
        with self._lock:
            rows = self._db().execute(
                "SELECT target, COUNT(*), SUM(documents), SUM(LENGTH(body)), MIN(created_at) FROM hints GROUP BY target"
            ).fetchall()
        return {target: PendingHints(count, docs, size, oldest) for target, count, docs, size, oldest in rows}
