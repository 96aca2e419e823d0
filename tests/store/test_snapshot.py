"""store/snapshot.py: a copy of a partition database taken while a writer keeps committing is a
valid SQLite database holding one consistent state, and it opens as a partition with the same
documents and repair digests."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from meshrag.store.engine import StorageEngine
from meshrag.store.snapshot import backup_database, integrity_problem, summarize_database
from tests.store.conftest import DIM, make_doc


def _writer(engine: StorageEngine, stop: threading.Event, written: list[int]) -> None:
    i = 0
    while not stop.is_set() and i < 100_000:
        engine.upsert([make_doc(f"w{i:06d}")])
        written.append(i)
        i += 1


def test_a_copy_taken_under_writes_is_one_consistent_state(tmp_path: Path) -> None:
    engine = StorageEngine(tmp_path / "live", partitions=1, dim=DIM)
    engine.open()
    engine.upsert([make_doc(f"seed{i}") for i in range(300)])
    stop, written = threading.Event(), []
    writer = threading.Thread(target=_writer, args=(engine, stop, written))
    writer.start()
    try:
        while len(written) < 50:  # the writer is committing when the copy starts
            threading.Event().wait(0.01)
        before = len(written)
        copy = tmp_path / "copy.sqlite"
        steps: list[int] = []
        size = backup_database(engine.database_of(0), copy, step_pages=8, on_step=steps.append)
        after = len(written)
    finally:
        stop.set()
        writer.join()
    assert integrity_problem(copy) is None
    assert size == copy.stat().st_size and sum(steps) >= size - 8 * 4096 and len(steps) > 1
    summary = summarize_database(copy)
    # Every document has its two chunks, and the digest buckets (kept by triggers in each write's
    # transaction) count exactly the documents present: no write is half in the copy.
    assert summary.chunks == 2 * summary.documents
    assert 300 + before <= summary.documents <= 300 + after + 1
    conn = sqlite3.connect(copy)
    assert conn.execute("SELECT SUM(entries) FROM digest_buckets").fetchone()[0] == summary.documents
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
    conn.close()
    engine.close()


def test_a_copy_opens_as_a_partition_with_the_same_documents_and_digests(tmp_path: Path) -> None:
    engine = StorageEngine(tmp_path / "live", partitions=4, dim=DIM)
    engine.open()
    engine.upsert([make_doc(f"d{i}", version=5) for i in range(200)])
    for i in range(0, 200, 7):
        engine.delete(f"d{i}", 9)  # tombstones come back too
    restored = tmp_path / "restored"
    restored.mkdir()
    engine.save_indexes()
    with engine.hold_index_log_trims():
        engine.link_index_files(restored)
        for pid in engine.local_partitions():
            source = engine.database_of(pid)
            (restored / source.parent.name).mkdir()
            backup_database(source, restored / source.parent.name / source.name)
    copy = StorageEngine(restored, partitions=4, dim=DIM)
    copy.open()
    for pid in engine.local_partitions():
        assert copy.digest_entries(pid) == engine.digest_entries(pid)
        assert copy.bucket_hashes(pid) == engine.bucket_hashes(pid)
        recovery = copy.stats()["partitions"][pid]["recovery"]
        assert recovery == "loaded" or recovery.startswith("caught_up")  # the copied index serves, not rebuilt
    assert copy.get("d7").deleted and copy.get("d7").version == 9
    assert copy.get("d8").version == 5 and len(copy.get("d8").chunks) == 2
    copy.close()
    engine.close()
