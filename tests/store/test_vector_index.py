"""The derived vector index on its own: save/load, refusal of damaged or foreign
files, catch-up and the rebuild decision, updates, and exact vs ANN search.

Its source of truth is real: ``ChunkVectors`` over the SQLite file of a real
partition (opened through a second connection, as a recovering process would),
while the index under test lives in a directory of its own.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from meshrag.errors import ValidationError
from meshrag.store.partition import ChunkVectors, Partition
from meshrag.store.vector_index import IndexSettings, VectorIndex, exact_top_k, unit_query_vector
from tests.store.conftest import DIM, corpus, make_doc, open_partition, sql, unit_vector


# ------------------------------------------------------------------ helpers
@pytest.fixture
def part(tmp_path: Path) -> Iterator[Partition]:
    """A real partition holding 30 documents (60 chunks): the truth the index derives from."""
    partition = open_partition(tmp_path / "sqlite")
    partition.upsert(corpus(30))
    yield partition
    partition.close()


@pytest.fixture
def source(part: Partition) -> Iterator[ChunkVectors]:
    conn = sqlite3.connect(part.db_path)
    yield ChunkVectors(conn)
    conn.close()


def new_index(tmp_path: Path, dim: int = DIM, **settings: Any) -> VectorIndex:
    directory = tmp_path / "index"
    directory.mkdir(exist_ok=True)
    return VectorIndex(directory, dim, IndexSettings(**settings), name="test index")


def log_seq(part: Partition) -> int:
    return int(sql(part, "SELECT seq FROM sqlite_sequence WHERE name = 'index_log'")[0][0])


def key_of(part: Partition, chunk_id: str) -> int:
    return int(sql(part, "SELECT key FROM chunks WHERE chunk_id = ?", chunk_id)[0][0])


def saved_index(tmp_path: Path, part: Partition, source: ChunkVectors) -> VectorIndex:
    """An index built from the source and saved as covering the log as it stands."""
    index = new_index(tmp_path)
    index.rebuild(source)
    index.save(log_seq(part))
    index.mark_saved()
    return index


# ------------------------------------------------------------- save / load
def test_save_then_load_restores_the_same_index_and_log_seq(tmp_path: Path, source: ChunkVectors) -> None:
    index = new_index(tmp_path)
    index.rebuild(source)
    assert index.pending == len(index) + 1 == 61  # a rebuilt index is unsaved
    index.save(log_seq=42)
    index.mark_saved()
    assert index.pending == 0

    loaded = new_index(tmp_path)
    assert len(loaded) == 0
    assert loaded.load_saved() == 42
    assert len(loaded) == 60 and all(loaded.contains(source.all_keys()))
    query = unit_vector(5)
    original, restored = index.search(query, 10), loaded.search(query, 10)
    assert [key for key, _ in restored] == [key for key, _ in original]
    assert [score for _, score in restored] == pytest.approx([score for _, score in original], abs=1e-6)


def test_without_saved_files_load_finds_nothing(tmp_path: Path) -> None:
    index = new_index(tmp_path)
    assert index.load_saved() is None and len(index) == 0


def test_a_checksum_mismatch_refuses_the_saved_index_and_recovery_rebuilds(
    tmp_path: Path, part: Partition, source: ChunkVectors
) -> None:
    saved = saved_index(tmp_path, part, source)
    data = bytearray(saved.index_path.read_bytes())
    data[16:80] = b"\x7f" * 64  # same size, different vectors: only the checksum can tell
    saved.index_path.write_bytes(bytes(data))

    reloaded = new_index(tmp_path)
    assert reloaded.load_saved() is None
    assert len(reloaded) == 0  # the damaged file was not adopted
    assert reloaded.recover(source, fresh=False) == "rebuilt"
    assert reloaded.matches(source) and reloaded.pending == len(reloaded) + 1


@pytest.mark.parametrize("other", [{"connectivity": 32}, {"dim": DIM * 2}], ids=["connectivity", "dim"])
def test_an_index_saved_with_other_settings_is_refused(
    tmp_path: Path, part: Partition, source: ChunkVectors, other: dict[str, int]
) -> None:
    saved_index(tmp_path, part, source)
    assert new_index(tmp_path).load_saved() == log_seq(part)  # the same settings do load it
    assert new_index(tmp_path, **other).load_saved() is None


# ---------------------------------------------------------------- recovery
def test_recovery_replays_the_log_after_the_saved_seq(tmp_path: Path, part: Partition, source: ChunkVectors) -> None:
    saved = saved_index(tmp_path, part, source)
    saved_seq = log_seq(part)
    part.upsert([make_doc("late", texts=["one", "two", "three"])])  # 3 adds
    part.delete("d1", 5)  # 2 removes

    recovered = new_index(tmp_path)
    assert recovered.recover(source, fresh=False) == "caught_up:5"
    assert recovered.matches(source) and len(recovered) == len(saved) + 1
    assert recovered.pending == 5
    [(key, score)] = recovered.search(unit_vector("late#1#2"), 1)
    assert key == key_of(part, "late#1#2") and score == pytest.approx(1.0, abs=1e-5)
    # Replaying again changes nothing: recovery may repeat work after a crash.
    assert recovered.catch_up(source, saved_seq) == 5
    assert recovered.matches(source) and len(recovered) == len(saved) + 1


def test_recovery_rebuilds_when_the_log_no_longer_reaches_back_to_the_saved_seq(
    tmp_path: Path, part: Partition, source: ChunkVectors
) -> None:
    saved_index(tmp_path, part, source)
    part.upsert([make_doc("newer")])
    assert part.save_index()  # trims the log past the seq our index was saved at
    recovered = new_index(tmp_path)
    assert recovered.recover(source, fresh=False) == "rebuilt"
    assert recovered.matches(source)


def test_recovery_without_saved_files_builds_from_sqlite(tmp_path: Path, source: ChunkVectors) -> None:
    assert new_index(tmp_path).recover(source, fresh=True) == "new"
    rebuilt = new_index(tmp_path)
    assert rebuilt.recover(source, fresh=False) == "rebuilt"
    assert rebuilt.matches(source) and len(rebuilt) == 60


def test_an_index_missing_a_key_does_not_match_sqlite(tmp_path: Path, source: ChunkVectors) -> None:
    index = new_index(tmp_path)
    index.rebuild(source)
    assert index.matches(source)
    index.update([int(source.all_keys()[0])], [], [], source)
    assert not index.matches(source)


# ------------------------------------------------------------------ update
def test_update_mirrors_removals_and_additions_and_counts_them_pending(tmp_path: Path, source: ChunkVectors) -> None:
    index = new_index(tmp_path)
    index.rebuild(source)
    index.mark_saved()
    gone = [int(key) for key in source.all_keys()[:2]]
    assert index.update(gone, [10_001, 10_002], [unit_vector(1), unit_vector(2)], source) is False
    assert index.contains([*gone, 10_001, 10_002]) == [False, False, True, True]
    assert index.pending == 4
    assert index.update([], [], [], source) is False and index.pending == 4


def test_a_failed_update_rebuilds_from_the_source(tmp_path: Path, part: Partition, source: ChunkVectors) -> None:
    index = new_index(tmp_path)
    index.rebuild(source)
    old_keys = [key_of(part, "d4#1#0"), key_of(part, "d4#1#1")]
    part.upsert([make_doc("d4", 2, ["rewritten"])])  # SQLite commits: d4's chunks replaced
    new_key = key_of(part, "d4#2#0")
    duplicate = key_of(part, "d5#1#0")
    # usearch refuses a key it already holds: a real failure mid-update, after which only SQLite can be trusted.
    rebuilt = index.update(old_keys, [duplicate, new_key], [unit_vector(1), unit_vector("d4#2#0")], source)
    assert rebuilt is True
    assert index.matches(source) and index.contains([new_key, *old_keys]) == [True, False, False]


# ------------------------------------------------------------------ search
def test_exact_top_k_ranks_by_cosine_and_ignores_vector_length() -> None:
    query = unit_query_vector(np.array([1.0, 0.0, 0.0, 0.0], np.float32), 4)
    rows = [
        (7, np.array([0.0, 1.0, 0.0, 0.0], np.float32).tobytes()),  # orthogonal
        (8, np.array([10.0, 10.0, 0.0, 0.0], np.float32).tobytes()),  # 45 degrees, long
        (9, np.array([0.5, 0.0, 0.0, 0.0], np.float32).tobytes()),  # same direction, short
        (3, np.zeros(4, np.float32).tobytes()),  # zero vector: scores 0, never divides by zero
    ]
    top = exact_top_k(query, 3, rows, 4)
    assert [key for key, _ in top] == [9, 8, 7]
    assert [score for _, score in top] == pytest.approx([1.0, np.sqrt(0.5), 0.0], abs=1e-6)
    assert exact_top_k(query, 0, rows, 4) == [] and exact_top_k(query, 5, [], 4) == []


def test_unit_query_vector_normalises_and_rejects_bad_queries() -> None:
    assert np.linalg.norm(unit_query_vector(np.full(DIM, 3.0), DIM)) == pytest.approx(1.0)
    for bad in (np.ones(DIM - 1), np.zeros(DIM), np.full(DIM, np.nan)):
        with pytest.raises(ValidationError) as caught:
            unit_query_vector(bad, DIM)
        assert caught.value.field == "vector"


def test_ann_search_agrees_with_exact_search(tmp_path: Path) -> None:
    """Recall@10 of the default settings on 3000 random 384-d vectors (the hard case)."""
    dim, count = 384, 3000
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    part = open_partition(tmp_path / "sqlite", dim=dim)
    conn = sqlite3.connect(part.db_path)
    try:
        docs = [make_doc(f"v{i}", texts=["x"], dim=dim, vectors=[vectors[i]]) for i in range(count)]
        for start in range(0, count, 500):
            part.upsert(docs[start : start + 500])
        source = ChunkVectors(conn)
        index = new_index(tmp_path, dim=dim)
        index.rebuild(source)
        rows = [row for batch in source.all_vectors() for row in batch]
        recalls = []
        for query in rng.standard_normal((50, dim)).astype(np.float32):
            unit = unit_query_vector(query, dim)
            exact = dict(exact_top_k(unit, 10, rows, dim))
            approximate = dict(index.search(unit, 10))
            shared = exact.keys() & approximate.keys()
            recalls.append(len(shared) / 10)
            assert [approximate[key] for key in shared] == pytest.approx([exact[key] for key in shared], abs=1e-4)
        assert float(np.mean(recalls)) >= 0.97  # 0.998 measured with the default expansion_search
    finally:
        conn.close()
        part.close()


def test_search_until_widens_the_pool_until_k_candidates_survive(tmp_path: Path, source: ChunkVectors) -> None:
    index = new_index(tmp_path)
    index.rebuild(source)
    rows = [row for batch in source.all_vectors() for row in batch]
    wanted = {key for key, _ in rows[::15]}  # 4 of 60 keys survive, as after a rare filter
    query = unit_query_vector(unit_vector(99), DIM)
    resolved: list[int] = []

    def keep_wanted(scored: list[tuple[int, float]]) -> list[tuple[int, float]]:
        resolved.append(len(scored))
        return [(key, score) for key, score in scored if key in wanted]

    hits = index.search_until(query, 3, keep_wanted, oversample=False)
    expected = exact_top_k(query, 3, [row for row in rows if row[0] in wanted], DIM)
    assert [key for key, _ in hits] == [key for key, _ in expected]
    assert resolved[0] == 3 and resolved == sorted(resolved)  # started at k, widened from there
    # Fewer survivors than k: the index is exhausted and all of them come back.
    assert len(index.search_until(query, 10, keep_wanted, oversample=True)) == 4
