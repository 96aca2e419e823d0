"""One partition on real files: versions, tombstones, atomic chunk replacement,
dense/BM25 search with filters, and index recovery (including a real kill -9)."""

from __future__ import annotations

import dataclasses
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from meshrag.cluster.repair import differing_buckets
from meshrag.store.digest import BUCKETS, bucket_hashes, bucket_of
from meshrag.errors import ConfigError, ValidationError
from meshrag.store.filters import parse_filter
from meshrag.store.partition import Partition
from meshrag.store.types import DocumentWrite, WriteResult, WriteStatus
from tests.store.conftest import DIM, bm25, brute_force, corpus, make_doc, open_partition, sql, unit_vector

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ helpers
def _result(doc_id: str, status: WriteStatus, version: int) -> WriteResult:
    return WriteResult(doc_id, status, version)


def chunk_keys(part: Partition, doc_id: str) -> list[int]:
    return [key for (key,) in sql(part, "SELECT key FROM chunks WHERE doc_id = ? ORDER BY seq", doc_id)]


def index_contains(part: Partition, keys: list[int]) -> list[bool]:
    return part._require_index().contains(keys)


def assert_index_consistent(part: Partition) -> None:
    keys = [key for (key,) in sql(part, "SELECT key FROM chunks")]
    assert part.stats()["index_size"] == len(keys)
    assert all(index_contains(part, keys))


# ------------------------------------------------------- versions and writes
def test_upsert_creates_then_get_returns_document_with_ordered_chunks(partition: Partition) -> None:
    doc = make_doc("a", texts=["alpha one", "alpha two", "alpha three"], metadata={"lang": "en"})
    assert partition.upsert([doc]) == [_result("a", WriteStatus.CREATED, 1)]
    stored = partition.get("a")
    assert stored is not None
    assert (stored.version, stored.text, stored.metadata, stored.deleted, stored.partition) == (1, doc.text, {"lang": "en"}, False, 3)
    assert [(c.chunk_id, c.seq, c.text, c.start, c.end) for c in stored.chunks] == [
        (c.chunk_id, c.seq, c.text, c.start, c.end) for c in doc.chunks
    ]
    assert partition.get("missing") is None


def test_update_replaces_all_chunks_in_sqlite_fts_and_index(partition: Partition) -> None:
    partition.upsert([make_doc("a", 1, ["zebra stripes here", "zebra again", "zebra third"])])
    old_keys = chunk_keys(partition, "a")
    [result] = partition.upsert([make_doc("a", 2, ["giraffe necks", "giraffe legs"])])
    assert result == _result("a", WriteStatus.UPDATED, 2)

    assert sql(partition, "SELECT chunk_id FROM chunks WHERE doc_id = 'a' ORDER BY seq") == [("a#2#0",), ("a#2#1",)]
    assert partition.term_stats(["zebra"]).df == {"zebra": 0}
    assert bm25(partition, "zebra", 10) == []
    assert index_contains(partition, old_keys) == [False, False, False]
    assert sorted(h.chunk_id for h in bm25(partition, "giraffe", 10)) == ["a#2#0", "a#2#1"]
    old_vector = unit_vector("a#1#0")
    assert all(not h.chunk_id.startswith("a#1#") for h in partition.search_dense(old_vector, 10))
    assert_index_consistent(partition)


def test_same_content_newer_version_only_moves_the_version(partition: Partition) -> None:
    partition.upsert([make_doc("a", 5)])
    before = sql(partition, "SELECT version, updated_at FROM documents WHERE doc_id = 'a'")
    keys_before = chunk_keys(partition, "a")
    log_before = sql(partition, "SELECT seq FROM sqlite_sequence WHERE name = 'index_log'")
    time.sleep(0.01)

    same_content_newer_version = make_doc("a", 9)
    assert same_content_newer_version.content_hash == make_doc("a", 5).content_hash
    assert partition.upsert([same_content_newer_version]) == [_result("a", WriteStatus.UNCHANGED, 9)]

    # Only the version moves (replicas converge on one version); nothing is re-indexed.
    assert sql(partition, "SELECT version, updated_at FROM documents WHERE doc_id = 'a'") == [(9, before[0][1])]
    assert chunk_keys(partition, "a") == keys_before
    assert sql(partition, "SELECT seq FROM sqlite_sequence WHERE name = 'index_log'") == log_before


def test_older_or_equal_versions_are_stale_and_ignored(partition: Partition) -> None:
    partition.upsert([make_doc("a", 10, ["current text"])])
    assert partition.upsert([make_doc("a", 9, ["older text"])]) == [_result("a", WriteStatus.STALE, 10)]
    stored = partition.get("a")
    assert stored is not None and stored.version == 10 and stored.text == "current text"


def test_a_version_tie_goes_to_the_larger_content_hash_whatever_the_arrival_order(tmp_path: Path) -> None:
    """Two coordinators may stamp one HLC version on different content; replicas must agree."""
    first, second = make_doc("a", 10, ["text from one coordinator"]), make_doc("a", 10, ["text from another"])
    winner = max(first, second, key=lambda doc: doc.content_hash)
    for order, pid in (((first, second), 1), ((second, first), 2)):
        part = open_partition(tmp_path, pid=pid)
        for doc in order:
            part.upsert([doc])
        stored = part.get("a")
        assert stored is not None and stored.text == winner.text
        part.close()


def test_later_write_in_one_batch_wins_over_earlier(partition: Partition) -> None:
    results = partition.upsert([make_doc("a", 1, ["one"]), make_doc("a", 3, ["three"]), make_doc("a", 2, ["two"])])
    assert [r.status for r in results] == [WriteStatus.CREATED, WriteStatus.UPDATED, WriteStatus.STALE]
    stored = partition.get("a")
    assert stored is not None and stored.text == "three" and [c.text for c in stored.chunks] == ["three"]


def test_tombstone_prevents_resurrection_by_an_older_write(partition: Partition) -> None:
    partition.upsert([make_doc("a", 1, ["hello world"])])
    assert partition.delete("a", 3) == _result("a", WriteStatus.DELETED, 3)
    assert partition.upsert([make_doc("a", 2, ["hello again"])]) == [_result("a", WriteStatus.STALE, 3)]
    assert bm25(partition, "hello", 10) == []
    assert partition.search_dense(unit_vector("a#1#0"), 10) == []
    assert_index_consistent(partition)
    # A newer write is a genuine re-creation.
    assert partition.upsert([make_doc("a", 4, ["hello back"])]) == [_result("a", WriteStatus.CREATED, 4)]


def test_get_of_a_tombstone_shows_it_deleted_and_empty(partition: Partition) -> None:
    partition.upsert([make_doc("a", 1, metadata={"k": "v"})])
    partition.delete("a", 2)
    stored = partition.get("a")
    assert stored is not None
    assert (stored.deleted, stored.version, stored.text, stored.metadata, stored.chunks) == (True, 2, "", {}, ())
    assert sql(partition, "SELECT COUNT(*) FROM chunks") == [(0,)]


def test_deleting_an_unknown_id_leaves_a_tombstone_that_beats_late_writes(partition: Partition) -> None:
    assert partition.delete("ghost", 5) == _result("ghost", WriteStatus.DELETED, 5)
    assert partition.upsert([make_doc("ghost", 4)]) == [_result("ghost", WriteStatus.STALE, 5)]
    assert partition.doc_states(["ghost"])["ghost"].deleted



def test_at_one_version_a_tombstone_beats_a_document_in_either_arrival_order(partition: Partition) -> None:
    partition.upsert([make_doc("first-live", 5)])
    assert partition.delete("first-live", 5).status is WriteStatus.DELETED
    partition.delete("first-dead", 5)
    assert partition.upsert([make_doc("first-dead", 5)])[0].status is WriteStatus.STALE
    for doc_id in ("first-live", "first-dead"):
        held = partition.get(doc_id)
        assert held is not None and held.deleted and held.version == 5
    assert partition.delete("first-dead", 5).status is WriteStatus.STALE, "a tombstone does not beat its equal"

def test_delete_older_than_stored_is_stale(partition: Partition) -> None:
    partition.upsert([make_doc("a", 7)])
    assert partition.delete("a", 6) == _result("a", WriteStatus.STALE, 7)
    stored = partition.get("a")
    assert stored is not None and not stored.deleted and len(stored.chunks) == 2


def test_a_failing_batch_writes_nothing(partition: Partition) -> None:
    good = make_doc("good", 1)
    clashing = make_doc("bad", 1)
    clashing = DocumentWrite("bad", 1, "h", "t", {}, (clashing.chunks[0], clashing.chunks[0]))  # duplicate chunk id
    with pytest.raises(ValueError, match="nothing written"):
        partition.upsert([good, clashing])
    assert partition.get("good") is None
    assert sql(partition, "SELECT COUNT(*) FROM chunks") == [(0,)]
    assert partition.stats()["index_size"] == 0


def test_a_vector_of_the_wrong_size_is_rejected_before_writing(partition: Partition) -> None:
    with pytest.raises(ValueError, match=f"{DIM} finite"):
        partition.upsert([make_doc("a", vectors=[np.ones(DIM + 1, np.float32), unit_vector(1)])])
    assert partition.get("a") is None


def test_doc_states_report_version_hash_and_tombstones(partition: Partition) -> None:
    doc = make_doc("a", 3)
    partition.upsert([doc, make_doc("b", 4)])
    partition.delete("b", 6)
    states = partition.doc_states(["a", "b", "nope"])
    assert set(states) == {"a", "b"}
    assert (states["a"].version, states["a"].content_hash, states["a"].deleted) == (3, doc.content_hash, False)
    assert (states["b"].version, states["b"].deleted) == (6, True)


def test_purge_tombstones_removes_only_old_tombstones(partition: Partition) -> None:
    partition.upsert([make_doc("live", 1)])
    partition.delete("old", 10)
    partition.delete("recent", 30)
    assert partition.purge_tombstones(older_than_version=20) == 1
    assert partition.get("old") is None
    assert partition.get("recent") is not None and partition.get("live") is not None


def test_stats_count_documents_tombstones_chunks_and_bytes(partition: Partition) -> None:
    partition.upsert([make_doc("a"), make_doc("b", texts=["one"])])
    partition.delete("c", 1)
    stats = partition.stats()
    assert (stats["documents"], stats["tombstones"], stats["chunks"], stats["index_size"]) == (2, 1, 3, 3)
    assert stats["bytes"] > 0 and stats["recovery"] == "new"


# ------------------------------------------------------------ repair digest
def assert_digest_kept(part: Partition) -> None:
    """The buckets kept with every write equal repair.py's from-scratch definition."""
    assert part.bucket_hashes() == bucket_hashes(part.digest_entries())


def test_an_empty_partition_keeps_empty_buckets(partition: Partition) -> None:
    assert partition.bucket_hashes() == [""] * BUCKETS


def test_every_write_path_keeps_the_buckets_equal_to_a_full_recomputation(partition: Partition) -> None:
    docs = corpus(40)
    steps: list[Callable[[], object]] = [
        lambda: partition.upsert(docs),                                       # inserts
        lambda: partition.upsert([make_doc("d1", 2, ["new text"])]),          # new content
        lambda: partition.upsert([dataclasses.replace(docs[2], version=5)]),  # same content, version only
        lambda: partition.upsert([make_doc("d3", 0)]),                        # stale: nothing changes
        lambda: partition.delete("d4", 9),                                    # tombstone
        lambda: partition.delete("never-stored", 3),                          # tombstone of an unknown id
        lambda: partition.upsert([dataclasses.replace(make_doc("d5", 7), deleted=True)]),  # replicated tombstone
        lambda: partition.upsert([make_doc("d4", 10)]),                       # back after its tombstone
        lambda: partition.purge_tombstones(older_than_version=8),             # purge
    ]
    for step in steps:
        before = partition.bucket_hashes()
        step()
        assert_digest_kept(partition)
        assert (partition.bucket_hashes() == before) == (step is steps[3]), "only the stale write changes nothing"


def test_a_random_sequence_of_writes_keeps_the_buckets_exact(partition: Partition) -> None:
    rng = random.Random(11)
    ids = [f"doc{i}" for i in range(30)]
    for step in range(300):
        doc_id, version = rng.choice(ids), rng.randrange(1, 40)
        action = rng.random()
        if action < 0.6:
            partition.upsert([make_doc(doc_id, version, [f"{doc_id} text {rng.randrange(3)}"])])
        elif action < 0.9:
            partition.delete(doc_id, version)
        else:
            partition.purge_tombstones(older_than_version=rng.randrange(1, 40))
        if step % 25 == 0:
            assert_digest_kept(partition)
    assert_digest_kept(partition)


def test_one_change_changes_exactly_its_bucket(partition: Partition) -> None:
    partition.upsert(corpus(50))
    before = partition.bucket_hashes()
    partition.upsert([make_doc("d7", 2, ["changed"])])
    assert differing_buckets(before, partition.bucket_hashes()) == [bucket_of("d7")]


def test_entries_of_given_buckets_are_exactly_those_buckets_entries(partition: Partition) -> None:
    partition.upsert(corpus(60))
    partition.delete("gone", 4)
    everything = partition.digest_entries()
    wanted = sorted({bucket_of("d3"), bucket_of("gone")})
    assert partition.digest_entries(wanted) == [e for e in everything if bucket_of(e.doc_id) in wanted]
    assert partition.digest_entries([]) == []


def test_a_connection_without_the_digest_functions_cannot_write_documents(partition: Partition) -> None:
    """The buckets cannot drift behind the partition's back: the triggers need repair.py's functions."""
    partition.upsert([make_doc("a")])
    with pytest.raises(sqlite3.OperationalError, match="no such function"):
        sql(partition, "UPDATE documents SET version = 9 WHERE doc_id = 'a'")
    assert_digest_kept(partition)


def test_a_partition_from_before_kept_digests_is_migrated_on_open(tmp_path: Path) -> None:
    part = open_partition(tmp_path)
    part.upsert(corpus(30))
    part.delete("d3", 5)
    expected = part.bucket_hashes()
    part.close()
    conn = sqlite3.connect(part.db_path)  # back to the schema of commit be0c157
    conn.executescript(
        "DROP TRIGGER documents_digest_added; DROP TRIGGER documents_digest_removed; DROP TRIGGER documents_digest_changed;"
        "DROP INDEX documents_by_bucket; DROP TABLE digest_buckets; ALTER TABLE documents DROP COLUMN bucket;"
        "DELETE FROM partition_meta WHERE name = 'digest_format';"
    )
    conn.close()
    reopened = open_partition(tmp_path)
    try:
        assert reopened.bucket_hashes() == expected
        assert reopened.digest_entries([bucket_of("d5")]) == [e for e in reopened.digest_entries() if bucket_of(e.doc_id) == bucket_of("d5")]
        reopened.upsert([make_doc("d5", 2, ["after the migration"])])
        assert_digest_kept(reopened)
    finally:
        reopened.close()


def test_buckets_of_another_digest_format_are_rebuilt_on_open(tmp_path: Path) -> None:
    part = open_partition(tmp_path)
    part.upsert(corpus(10))
    expected = part.bucket_hashes()
    part.close()
    conn = sqlite3.connect(part.db_path)
    conn.execute("UPDATE digest_buckets SET entries = 0")  # what an older definition left
    conn.execute("UPDATE partition_meta SET value = 'older' WHERE name = 'digest_format'")
    conn.commit()
    conn.close()
    reopened = open_partition(tmp_path)
    try:
        assert reopened.bucket_hashes() == expected
    finally:
        reopened.close()


# ------------------------------------------------------------------- dense
def test_dense_search_returns_the_exact_nearest_for_a_known_vector(partition: Partition) -> None:
    docs = corpus(150)
    partition.upsert(docs)
    target = docs[42].chunks[1]
    top = partition.search_dense(target.vector, 5)
    assert top[0].chunk_id == target.chunk_id and top[0].doc_id == "d42"
    assert top[0].score == pytest.approx(1.0, abs=1e-5)
    assert (top[0].version, top[0].partition) == (1, 3)
    [hit] = partition.hits(top[:1])
    assert (hit.chunk_id, hit.score, hit.text) == (target.chunk_id, top[0].score, target.text)
    assert hit.metadata == {"n": 42, "group": 2, "even": True} and hit.version == 1
    query = unit_vector(999)
    assert [h.chunk_id for h in partition.search_dense(query, 10)] == [cid for cid, _ in brute_force(docs, query, 10)]


def test_hits_keep_the_candidates_order_and_scores_and_drop_chunks_gone(partition: Partition) -> None:
    docs = corpus(30)
    partition.upsert(docs)
    found = partition.search_dense(unit_vector(31), 6)
    gone = found[2].doc_id
    partition.delete(gone, 9)  # between the phases: its chunks are gone
    hits = partition.hits(found)
    assert [h.chunk_id for h in hits] == [c.chunk_id for c in found if c.doc_id != gone]
    assert [h.score for h in hits] == [c.score for c in found if c.doc_id != gone]
    assert all(h.text == next(ch.text for d in docs for ch in d.chunks if ch.chunk_id == h.chunk_id) for h in hits)
    assert partition.hits([]) == []


@pytest.mark.parametrize("threshold", [4096, 0], ids=["exact-branch", "ann-branch"])
def test_dense_search_applies_the_filter(tmp_path: Path, threshold: int) -> None:
    part = open_partition(tmp_path, exact_search_threshold=threshold)
    try:
        docs = corpus(200)
        part.upsert(docs)
        flt = parse_filter({"group": {"$in": [3, 7]}, "even": False})
        query = unit_vector(12345)
        hits = part.search_dense(query, 10, flt)
        expected = brute_force(docs, query, 10, flt)
        assert [h.chunk_id for h in hits] == [cid for cid, _ in expected]
        assert [h.score for h in hits] == pytest.approx([score for _, score in expected], abs=1e-5)
        assert all(h.metadata["group"] in (3, 7) for h in part.hits(hits))
        # A rare filter: the ANN branch must widen its candidate pool to find k matches.
        rare = parse_filter({"n": {"$in": [5, 50, 99, 150, 199]}})
        assert [h.chunk_id for h in part.search_dense(query, 8, rare)] == [cid for cid, _ in brute_force(docs, query, 8, rare)]
        # Fewer matches than k: all of them come back (the ANN branch widens until exhausted).
        assert len(part.search_dense(query, 50, rare)) == 10
    finally:
        part.close()


def test_a_selective_filter_is_answered_exactly_from_the_vectors_in_sqlite(partition: Partition) -> None:
    docs = corpus(40)
    partition.upsert(docs)
    # Empty the ANN index behind SQLite's back: proves the exact branch does not consult it.
    all_keys = [key for (key,) in sql(partition, "SELECT key FROM chunks")]
    partition._require_index().update(all_keys, [], [], partition._chunk_vectors())
    flt = parse_filter({"group": 4})
    query = unit_vector(77)
    assert [h.chunk_id for h in partition.search_dense(query, 3, flt)] == [cid for cid, _ in brute_force(docs, query, 3, flt)]
    assert partition.search_dense(query, 3) == []  # unfiltered searches do use the (now empty) index


def test_dense_search_rejects_a_query_of_the_wrong_dimension(partition: Partition) -> None:
    with pytest.raises(ValidationError) as caught:
        partition.search_dense(np.ones(DIM - 1, np.float32), 5)
    assert caught.value.field == "vector"


# ---------------------------------------------------------------- recovery
def test_clean_reopen_loads_the_saved_index(tmp_path: Path) -> None:
    part = open_partition(tmp_path)
    part.upsert(corpus(20))
    part.close()
    assert sql(part, "SELECT COUNT(*) FROM index_log") == [(0,)]  # trimmed by the save in close()
    reopened = open_partition(tmp_path)
    try:
        assert reopened.recovery == "loaded"
        assert reopened.search_dense(unit_vector("d3#1#0"), 1)[0].chunk_id == "d3#1#0"
        assert_index_consistent(reopened)
    finally:
        reopened.close()


def crash_copy(part: Partition, destination: Path) -> Path:
    """The partition's files as a crash would leave them: committed, index not saved."""
    shutil.copytree(part.path, destination / part.path.name)
    return destination


def test_writes_after_the_last_save_are_caught_up_from_the_log(tmp_path: Path) -> None:
    part = open_partition(tmp_path / "live")
    part.upsert(corpus(30))
    assert part.save_index()
    part.upsert([make_doc("late", texts=["one", "two", "three"])])
    part.upsert([make_doc("d1", 2, ["rewritten"])])
    part.delete("d2", 5)
    crashed = crash_copy(part, tmp_path / "crashed")
    part.close()

    recovered = open_partition(crashed)
    try:
        # late: 3 adds; d1: 2 removes + 1 add; d2: 2 removes
        assert recovered.recovery == "caught_up:8"
        assert_index_consistent(recovered)
        assert recovered.search_dense(unit_vector("late#1#2"), 1)[0].chunk_id == "late#1#2"
        assert recovered.search_dense(unit_vector("d1#2#0"), 1)[0].chunk_id == "d1#2#0"
        assert all(h.doc_id != "d2" for h in recovered.search_dense(unit_vector("d2#1#0"), 60))
    finally:
        recovered.close()
    again = open_partition(crashed)
    assert again.recovery == "loaded"  # the catch-up was saved on close
    again.close()


def test_a_missing_index_file_is_rebuilt_from_sqlite(tmp_path: Path) -> None:
    part = open_partition(tmp_path)
    part.upsert(corpus(25))
    part.close()
    part.index_path.unlink()
    reopened = open_partition(tmp_path)
    try:
        assert reopened.recovery == "rebuilt"
        assert_index_consistent(reopened)
        assert reopened.search_dense(unit_vector("d7#1#1"), 1)[0].chunk_id == "d7#1#1"
    finally:
        reopened.close()


@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "sidecar-garbage"])
def test_a_corrupt_index_is_rebuilt_from_sqlite(tmp_path: Path, damage: str) -> None:
    part = open_partition(tmp_path)
    part.upsert(corpus(25))
    part.close()
    if damage == "flip-bytes":  # hits the stored vectors: usearch loads this silently, the checksum catches it
        data = bytearray(part.index_path.read_bytes())
        data[16:80] = b"\x7f" * 64
        part.index_path.write_bytes(bytes(data))
    elif damage == "truncate":
        part.index_path.write_bytes(part.index_path.read_bytes()[:100])
    else:
        part.sidecar_path.write_text("{not json")
    reopened = open_partition(tmp_path)
    try:
        assert reopened.recovery == "rebuilt"
        assert_index_consistent(reopened)
        assert reopened.search_dense(unit_vector("d9#1#0"), 1)[0].chunk_id == "d9#1#0"
    finally:
        reopened.close()


def test_an_index_older_than_the_trimmed_log_is_rebuilt(tmp_path: Path) -> None:
    part = open_partition(tmp_path)
    part.upsert(corpus(10))
    part.save_index()
    old_index, old_sidecar = part.index_path.read_bytes(), part.sidecar_path.read_bytes()
    part.upsert([make_doc("newer")])
    part.close()  # saves and trims the log past the old index's seq
    part.index_path.write_bytes(old_index)
    part.sidecar_path.write_bytes(old_sidecar)
    reopened = open_partition(tmp_path)
    try:
        assert reopened.recovery == "rebuilt"
        assert reopened.search_dense(unit_vector("newer#1#0"), 1)[0].chunk_id == "newer#1#0"
    finally:
        reopened.close()


def test_reopening_with_another_dimension_is_a_config_error(tmp_path: Path) -> None:
    open_partition(tmp_path).close()
    with pytest.raises(ConfigError, match="16-dimensional"):
        open_partition(tmp_path, dim=DIM * 2)


def test_maybe_save_index_saves_only_past_the_threshold(partition: Partition) -> None:
    partition.save_index(force=True)
    partition.upsert([make_doc("a")])  # 2 index changes
    assert not partition.maybe_save_index(max_pending=3)
    partition.upsert([make_doc("b", texts=["x"])])
    assert partition.maybe_save_index(max_pending=3)
    assert partition.stats()["pending_index_changes"] == 0
    assert not partition.save_index()  # nothing left to save


WRITER_SNIPPET = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.store.conftest import make_doc
from meshrag.store.partition import IndexSettings, Partition

part = Partition(Path({root!r}), 3, {dim}, IndexSettings())
part.open()
i = 0
while True:
    docs = [make_doc(f"k{{j}}", texts=[f"marker{{j}} part {{s}}" for s in range(1 + j % 4)]) for j in range(i, i + 3)]
    part.upsert(docs)
    for doc in docs:
        print(doc.doc_id, flush=True)
    if i % 21 == 0:
        part.save_index()
    i += 3
"""


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    code = WRITER_SNIPPET.format(repo=str(REPO), root=str(tmp_path), dim=DIM)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < 150:
            line = child.stdout.readline()
            assert line, "the writer process died on its own"
            acknowledged.append(line.strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    part = open_partition(tmp_path)
    try:
        assert part.recovery == "loaded" or part.recovery.startswith("caught_up:")
        assert_index_consistent(part)
        for doc_id in acknowledged:
            n = int(doc_id[1:])
            stored = part.get(doc_id)
            assert stored is not None, doc_id
            assert [c.text for c in stored.chunks] == [f"marker{n} part {s}" for s in range(1 + n % 4)]
            top = part.search_dense(unit_vector(f"{doc_id}#1#0"), 1)
            assert top[0].chunk_id == f"{doc_id}#1#0"
            assert bm25(part, f"marker{n}", 1)[0].doc_id == doc_id
        # No document anywhere (acknowledged or caught mid-write) has a partial set of chunks.
        for doc_id, count in sql(part, "SELECT d.doc_id, COUNT(c.key) FROM documents d LEFT JOIN chunks c USING (doc_id) GROUP BY d.doc_id"):
            assert count == 1 + int(doc_id[1:]) % 4, doc_id
    finally:
        part.close()


def test_concurrent_writes_and_searches_stay_consistent(partition: Partition) -> None:
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(offset, offset + 40, 4):
                partition.upsert([make_doc(f"w{i + j}") for j in range(4)])
                partition.delete(f"w{i}", 2)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(60):
                partition.search_dense(unit_vector(i), 5)
                bm25(partition, "first part", 5)
                partition.get(f"w{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 1000, 2000)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stats = partition.stats()
    assert (stats["documents"], stats["tombstones"], stats["chunks"]) == (90, 30, 180)
    assert_index_consistent(partition)
