"""The storage engine: placement by doc id, meta checks, routing and merged search."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from meshrag.errors import ConfigError
from meshrag.ring import partition_for
from meshrag.store.engine import StorageEngine
from meshrag.store.filters import parse_filter
from meshrag.store.types import WriteStatus
from tests.store.conftest import ANALYZER, DIM, bm25, brute_force, make_doc, unit_vector

PARTITIONS = 8


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[StorageEngine]:
    eng = StorageEngine(tmp_path / "data", PARTITIONS, DIM)
    eng.open()
    yield eng
    eng.close()


def ids_in_distinct_partitions(count: int, partitions: int = PARTITIONS) -> list[str]:
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < count:
        chosen.setdefault(partition_for(f"doc-{i}", partitions), f"doc-{i}")
        i += 1
    return list(chosen.values())


# --------------------------------------------------------------- placement
def test_partitions_spread_evenly_over_64_for_1000_ids() -> None:
    counts = Counter(partition_for(f"document-{i}", 64) for i in range(1000))
    expected = 1000 / 64
    assert set(counts) == set(range(64))
    assert max(counts.values()) < 2.2 * expected
    chi_square = sum((counts[p] - expected) ** 2 / expected for p in range(64))
    assert chi_square < 110  # 63 degrees of freedom; p ~ 0.0002 for uniform placement


def test_placement_is_the_same_in_another_process() -> None:
    """Unlike hash(), placement must not depend on the process (PYTHONHASHSEED)."""
    ids = [f"id-{i}" for i in range(20)] + ["ünïcode", ""]
    code = (
        "import json, sys; from meshrag.ring import partition_for; "
        "print(json.dumps([partition_for(i, 64) for i in json.loads(sys.argv[1])]))"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(ids)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [partition_for(i, 64) for i in ids]


def test_engine_routes_documents_by_partition_for(engine: StorageEngine) -> None:
    assert engine.partition_of("abc") == partition_for("abc", PARTITIONS)


# ----------------------------------------------------------------- meta
def test_opening_with_another_partition_count_is_a_config_error(tmp_path: Path) -> None:
    eng = StorageEngine(tmp_path, 64, DIM)
    eng.open()
    eng.upsert([make_doc("a")])
    eng.close()
    with pytest.raises(ConfigError) as caught:
        StorageEngine(tmp_path, 32, DIM).open()
    assert "64 partitions, not 32" in caught.value.message
    assert caught.value.field == "cluster.partitions"


def test_opening_with_another_dimension_is_a_config_error(tmp_path: Path) -> None:
    StorageEngine(tmp_path, 4, DIM).open()
    with pytest.raises(ConfigError, match=f"{DIM}-dimensional"):
        StorageEngine(tmp_path, 4, DIM * 2).open()


def test_damaged_meta_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text("{")
    with pytest.raises(ConfigError, match="damaged"):
        StorageEngine(tmp_path, 4, DIM).open()


# -------------------------------------------------------------- lifecycle
def test_partitions_are_created_lazily_and_found_again_on_open(tmp_path: Path) -> None:
    eng = StorageEngine(tmp_path, PARTITIONS, DIM)
    eng.open()
    assert eng.local_partitions() == []
    ids = ids_in_distinct_partitions(3)
    eng.upsert([make_doc(doc_id) for doc_id in ids])
    expected = sorted(partition_for(doc_id, PARTITIONS) for doc_id in ids)
    assert eng.local_partitions() == expected
    eng.close()

    reopened = StorageEngine(tmp_path, PARTITIONS, DIM)
    reopened.open()
    try:
        assert reopened.local_partitions() == expected
        assert {reopened.partition(pid).recovery for pid in expected} == {"loaded"}
        assert reopened.get(ids[0]) is not None
    finally:
        reopened.close()


def test_partition_lookup_and_drop(engine: StorageEngine) -> None:
    [doc_id] = ids_in_distinct_partitions(1)
    pid = engine.partition_of(doc_id)
    with pytest.raises(KeyError):
        engine.partition(pid)
    engine.upsert([make_doc(doc_id)])
    assert engine.partition(pid).pid == pid
    other = (pid + 1) % PARTITIONS
    assert engine.partition(other, create=True).is_open
    assert engine.drop_partition(pid)
    assert pid not in engine.local_partitions()
    assert not (engine.root / f"p{pid:04d}").exists()
    assert engine.get(doc_id) is None


# ----------------------------------------------------------------- writes
def test_upsert_results_come_back_in_input_order(engine: StorageEngine) -> None:
    ids = [f"o{i}" for i in range(30)]
    engine.upsert([make_doc(ids[3])])
    results = engine.upsert([make_doc(doc_id, 2 if doc_id == ids[3] else 1, ["new text"]) for doc_id in ids])
    assert [r.doc_id for r in results] == ids
    assert [r.status for r in results] == [WriteStatus.UPDATED if i == 3 else WriteStatus.CREATED for i in range(30)]
    assert len(engine.local_partitions()) > 1


def test_delete_writes_a_tombstone_in_the_right_partition(engine: StorageEngine) -> None:
    assert engine.delete("never-seen", 7).status is WriteStatus.DELETED
    stored = engine.get("never-seen")
    assert stored is not None and stored.deleted and stored.partition == partition_for("never-seen", PARTITIONS)
    assert engine.upsert([make_doc("never-seen", 6)])[0].status is WriteStatus.STALE


def test_doc_states_cover_many_partitions_and_skip_unknown_ids(engine: StorageEngine) -> None:
    ids = ids_in_distinct_partitions(5)
    engine.upsert([make_doc(doc_id, 3) for doc_id in ids[:4]])
    states = engine.doc_states(ids)
    assert set(states) == set(ids[:4])
    assert all(state.version == 3 and not state.deleted for state in states.values())


def test_stats_total_the_partitions(engine: StorageEngine) -> None:
    engine.upsert([make_doc(f"s{i}") for i in range(20)])
    engine.delete("s0", 9)
    stats = engine.stats()
    assert (stats["documents"], stats["tombstones"], stats["chunks"], stats["index_size"]) == (19, 1, 38, 38)
    assert stats["documents"] == sum(p["documents"] for p in stats["partitions"].values())
    assert set(stats["partitions"]) == set(engine.local_partitions())


def test_stats_skip_a_partition_dropped_while_they_are_read(engine: StorageEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """/v1/cluster reads stats in a thread while a handoff may drop a partition: no 500."""
    first, second = ids_in_distinct_partitions(2)
    engine.upsert([make_doc(first), make_doc(second)])
    dropped = partition_for(second, PARTITIONS)
    victim = engine.partition(dropped)
    read_stats = victim.stats

    def dropped_meanwhile() -> dict[str, object]:
        engine.drop_partition(dropped)
        return read_stats()

    monkeypatch.setattr(victim, "stats", dropped_meanwhile)
    stats = engine.stats()
    assert set(stats["partitions"]) == {partition_for(first, PARTITIONS)}
    assert stats["documents"] == 1


def test_stats_still_fail_for_a_fault_in_a_held_partition(engine: StorageEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.upsert([make_doc("held")])
    held = engine.partition(partition_for("held", PARTITIONS))

    def broken() -> dict[str, object]:
        raise RuntimeError("disk fault")

    monkeypatch.setattr(held, "stats", broken)
    with pytest.raises(RuntimeError, match="disk fault"):
        engine.stats()


def test_save_indexes_saves_only_changed_partitions(engine: StorageEngine) -> None:
    ids = ids_in_distinct_partitions(3)
    engine.upsert([make_doc(doc_id) for doc_id in ids])
    assert engine.save_indexes() == 3
    engine.upsert([make_doc(ids[0], 2, ["changed"])])
    assert engine.save_indexes() == 1


# ----------------------------------------------------------------- search
def test_dense_search_merges_top_k_across_partitions(engine: StorageEngine) -> None:
    docs = [make_doc(f"m{i}", metadata={"i": i}) for i in range(60)]
    engine.upsert(docs)
    assert len(engine.local_partitions()) == PARTITIONS
    query = unit_vector(4242)
    hits = engine.search_dense(query, 12)
    expected = brute_force(docs, query, 12)
    assert [h.chunk_id for h in hits] == [cid for cid, _ in expected]
    assert len({h.partition for h in hits}) > 1
    assert all(h.partition == engine.partition_of(h.doc_id) for h in hits)


def test_dense_search_with_filter_across_partitions(engine: StorageEngine) -> None:
    docs = [make_doc(f"m{i}", metadata={"i": i}) for i in range(60)]
    engine.upsert(docs)
    flt = parse_filter({"i": {"$gte": 10, "$lt": 20}})
    query = unit_vector(99)
    assert [h.chunk_id for h in engine.search_dense(query, 5, flt)] == [cid for cid, _ in brute_force(docs, query, 5, flt)]


@pytest.mark.parametrize("flt", [None, {"i": {"$gte": 10, "$lt": 20}}], ids=["index", "selective filter"])
def test_dense_search_reads_the_text_of_what_it_finds_when_asked_the_same_as_hits(engine: StorageEngine, flt: dict | None) -> None:
    docs = [make_doc(f"m{i}", metadata={"i": i}) for i in range(60)]
    engine.upsert(docs)
    parsed = parse_filter(flt) if flt is not None else None
    texts: dict = {}
    found = engine.search_dense(unit_vector(7), 5, parsed, texts=texts)
    assert found == engine.search_dense(unit_vector(7), 5, parsed)  # the same candidates either way
    assert [texts[c.chunk_id] for c in found] == engine.hits(found)  # text, metadata, version, score


def test_search_restricted_to_given_partitions(engine: StorageEngine) -> None:
    docs = [make_doc(f"m{i}", texts=[f"common word {i}"]) for i in range(60)]
    engine.upsert(docs)
    chosen = engine.local_partitions()[:2]
    dense = engine.search_dense(unit_vector(5), 100, partitions=chosen)
    lexical = engine.search_bm25(ANALYZER.query_terms("common"), 100, partitions=[*chosen, 999])  # unknown partitions are ignored
    in_chosen = {d.doc_id for d in docs if engine.partition_of(d.doc_id) in chosen}
    assert {h.doc_id for h in dense} == in_chosen
    assert {h.doc_id for h in lexical} == in_chosen


def test_bm25_merges_across_partitions_best_first(engine: StorageEngine) -> None:
    ids = ids_in_distinct_partitions(4)
    texts = ["propeller noise", "propeller noise propeller noise reduction", "wing flutter", "propeller"]
    engine.upsert([make_doc(doc_id, texts=[text]) for doc_id, text in zip(ids, texts)])
    hits = bm25(engine, "propeller noise", 10)
    assert {h.doc_id for h in hits} == {ids[0], ids[1], ids[3]}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.partition for h in hits}) == 3


def test_bulk_upsert_of_1400_documents_stores_every_chunk(tmp_path: Path) -> None:
    """The write path without embedding: 1400 docs x 2 chunks of dim 384 in batches of 32, P=64.

    The time it takes is printed for information; timing goals live in scripts/bench.py.
    """
    dim = 384
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2800, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [make_doc(f"b{i}", dim=dim, vectors=[vectors[2 * i], vectors[2 * i + 1]]) for i in range(1400)]
    eng = StorageEngine(tmp_path, 64, dim)
    eng.open()
    try:
        started = time.perf_counter()
        for start in range(0, len(docs), 32):
            eng.upsert(docs[start : start + 32])
        elapsed = time.perf_counter() - started
        print(f"\nupserted 1400 docs (2800 chunks, dim {dim}, 64 partitions) in {elapsed:.2f} s")
        assert eng.stats()["chunks"] == 2800
        assert sum(eng.partition(pid).stats()["documents"] for pid in eng.local_partitions()) == 1400
    finally:
        eng.close()
