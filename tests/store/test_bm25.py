"""BM25 in the store: analyzed FTS5 postings scored with global statistics.

The central property: scored with the statistics of the whole corpus, every
partition ranks as one index holding everything would, so 1 and 16 partitions
give the same ranked chunk ids and scores, and both match a plain-Python BM25.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from meshrag.store.analysis import MAX_QUERY_TERMS, Analyzer
from meshrag.store.engine import StorageEngine
from meshrag.store.filters import parse_filter
from meshrag.store.lexical import B, K1, TermStats
from meshrag.store.partition import Partition
from meshrag.store.schema import lexical_format
from meshrag.store.types import DocumentWrite
from tests.store.conftest import ANALYZER, DIM, bm25, make_doc, open_partition, sql

# Stems with their inflections, so stemming matters, and stop words, so removal does.
_WORDS = [w for stem in ("flow", "wing", "layer", "shock", "jet", "plate", "cone", "load", "panel") for w in (stem, stem + "s", stem + "ing")]
_WORDS += ["pressure", "pressures", "boundary", "boundaries", "nozzle", "heated", "heating", "turbulent", "vortices", "vortex"]
_WORDS += ["the", "of", "a", "and", "in", "mach", "2", "café", "Ångström", "x"]


def synthetic_corpus(count: int, seed: int = 7) -> list[DocumentWrite]:
    """Documents of 1..3 chunks of Zipf-distributed words: many shared terms, many ties."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(count):
        texts = [
            " ".join(_WORDS[min(int(rng.zipf(1.3)) - 1, len(_WORDS) - 1)] for _ in range(int(rng.integers(3, 40))))
            for _ in range(int(rng.integers(1, 4)))
        ]
        docs.append(make_doc(f"doc{i:03d}", texts=texts, metadata={"i": i}))
    return docs


QUERIES = ["flow over a wing", "pressure boundary layers", "shock jets and heated plates", "café ångström x", "mach 2 cone vortices",
           "loading panels", "turbulent nozzle flows"]


def reference_bm25(docs: list[DocumentWrite], query: str) -> list[tuple[str, float]]:
    """Lucene BM25 over every chunk, written out plainly (the definition the store must meet)."""
    chunks = [(chunk.chunk_id, ANALYZER.terms(chunk.text)) for doc in docs for chunk in doc.chunks]
    avgdl = sum(len(terms) for _, terms in chunks) / len(chunks)
    df = Counter(term for _, terms in chunks for term in set(terms))
    scored = []
    for chunk_id, terms in chunks:
        tf = Counter(terms)
        present = [t for t in ANALYZER.query_terms(query) if tf[t]]
        if present:
            score = sum(
                math.log(1 + (len(chunks) - df[t] + 0.5) / (df[t] + 0.5))
                * tf[t] * (K1 + 1) / (tf[t] + K1 * (1 - B + B * len(terms) / avgdl))
                for t in present
            )
            scored.append((chunk_id, score))
    return sorted(scored, key=lambda item: (-item[1], item[0]))


def open_engine(root: Path, partitions: int, analyzer: Analyzer | None = None) -> StorageEngine:
    engine = StorageEngine(root, partitions, DIM, analyzer=analyzer)
    engine.open()
    return engine


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[StorageEngine, StorageEngine, list[DocumentWrite]]]:
    docs = synthetic_corpus(300)
    one, sixteen = open_engine(tmp_path / "one", 1), open_engine(tmp_path / "sixteen", 16)
    for engine in (one, sixteen):
        engine.upsert(docs)
    yield one, sixteen, docs
    one.close()
    sixteen.close()


# ------------------------------------------------------------ global statistics
def test_one_and_sixteen_partitions_rank_identically_and_as_the_reference(engines) -> None:
    one, sixteen, docs = engines
    assert len(sixteen.local_partitions()) == 16
    for query in QUERIES:
        single, spread = bm25(one, query, 1000), bm25(sixteen, query, 1000)
        expected = reference_bm25(docs, query)
        assert [c.chunk_id for c in single] == [c.chunk_id for c in spread] == [cid for cid, _ in expected], query
        assert np.allclose([c.score for c in single], [c.score for c in spread], rtol=0, atol=1e-9)
        assert np.allclose([c.score for c in single], [s for _, s in expected], rtol=0, atol=1e-9)
        top = bm25(sixteen, query, 10)
        assert [c.chunk_id for c in top] == [c.chunk_id for c in single[:10]]


def test_term_stats_sum_over_partitions_to_those_of_one(engines) -> None:
    one, sixteen, _ = engines
    terms = ANALYZER.query_terms("flows pressure café unknownword")
    assert sixteen.term_stats(terms) == one.term_stats(terms)
    stats = one.term_stats(terms)
    assert stats.df["unknownword"] == 0 and stats.df["flow"] > 0 and stats.chunks == sum(len(d.chunks) for d in synthetic_corpus(300))
    parts = [sixteen.term_stats(terms, [pid]) for pid in sixteen.local_partitions()]
    assert TermStats.merged(parts) == stats


def test_a_partition_scores_with_the_statistics_it_is_given(engines) -> None:
    one, sixteen, _ = engines
    terms = ANALYZER.query_terms("shock jets")
    pid = sixteen.local_partitions()[0]
    own = sixteen.search_bm25(terms, 1000, partitions=[pid])
    cluster = sixteen.search_bm25(terms, 1000, partitions=[pid], stats=one.term_stats(terms))
    assert {c.chunk_id for c in own} == {c.chunk_id for c in cluster}
    assert [c.score for c in own] != [c.score for c in cluster]  # 1/16 of the corpus has other idf and avgdl
    by_id = {c.chunk_id: c.score for c in bm25(one, "shock jets", 1000)}
    assert all(abs(c.score - by_id[c.chunk_id]) < 1e-9 for c in cluster)


# ------------------------------------------------------------ ranking and queries
def test_bm25_ranks_the_document_with_the_query_words_first(partition: Partition) -> None:
    partition.upsert(
        [
            make_doc("wing", texts=["the boundary layer over a swept wing at supersonic speed"]),
            make_doc("heat", texts=["heat transfer in a laminar boundary layer"]),
            make_doc("misc", texts=["an unrelated note about compilers and parsers"]),
        ]
    )
    found = bm25(partition, "swept wing boundary layer", 3)
    assert [c.doc_id for c in found] == ["wing", "heat"]
    assert found[0].score > found[1].score > 0
    assert (found[0].chunk_id, found[0].version, found[0].partition) == ("wing#1#0", 1, 3)


def test_bm25_stems_and_folds_words(partition: Partition) -> None:
    partition.upsert([make_doc("a", texts=["the flows were measured"]), make_doc("b", texts=["CAFÉ Crème"])])
    assert [c.doc_id for c in bm25(partition, "flow measurement", 5)] == ["a"]
    assert [c.doc_id for c in bm25(partition, "cafe creme", 5)] == ["b"]


@pytest.mark.parametrize("query", ['NEAR("a" b', 'wing AND OR NOT * ^ "', "col:umn - + ( ) {x}", "wing\x00"])
def test_bm25_treats_query_syntax_as_plain_words(partition: Partition, query: str) -> None:
    partition.upsert([make_doc("a", texts=["wing column near"])])
    assert [c.doc_id for c in bm25(partition, query, 5)] in (["a"], [])


def test_bm25_of_a_query_without_terms_is_empty(partition: Partition) -> None:
    partition.upsert([make_doc("a", texts=["the wing of it"])])
    assert bm25(partition, "  ?! -- ", 5) == []
    assert bm25(partition, "the of it", 5) == []  # stop words only
    assert partition.search_bm25([], 5) == [] and partition.search_bm25(["wing"], 0) == []
    assert partition.search_bm25(["nosuchterm"], 5) == []


def test_bm25_refuses_query_text_and_more_terms_than_a_query_can_have(partition: Partition) -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_QUERY_TERMS}"):
        partition.search_bm25([f"t{i}" for i in range(MAX_QUERY_TERMS + 1)], 5)
    assert partition.search_bm25(["wing"] * (MAX_QUERY_TERMS + 1), 5) == []  # repeats count once
    with pytest.raises(TypeError, match="analyzed terms"):
        partition.search_bm25("wing", 5)  # query text, not terms


def test_bm25_breaks_ties_by_chunk_id(tmp_path: Path) -> None:
    engine = open_engine(tmp_path, 8)
    try:
        engine.upsert([make_doc(f"same{i}", texts=["identical wing text"]) for i in (5, 3, 9, 1, 7)])
        found = bm25(engine, "wing", 3)
        assert [c.chunk_id for c in found] == ["same1#1#0", "same3#1#0", "same5#1#0"]
        assert len({c.score for c in found}) == 1
    finally:
        engine.close()


def test_bm25_applies_the_metadata_filter(partition: Partition) -> None:
    partition.upsert(
        [
            make_doc("en", texts=["rocket engine nozzle"], metadata={"lang": "en", "year": 1999}),
            make_doc("de", texts=["rocket engine nozzle"], metadata={"lang": "de", "year": 2005}),
        ]
    )
    assert [c.doc_id for c in bm25(partition, "rocket", 5, parse_filter({"lang": "de"}))] == ["de"]
    assert [c.doc_id for c in bm25(partition, "rocket", 5, parse_filter({"year": {"$lt": 2000}}))] == ["en"]
    assert bm25(partition, "rocket", 5, parse_filter({"lang": "fr"})) == []


def test_a_selective_filter_widens_until_the_best_passing_chunks_are_found(partition: Partition) -> None:
    # 200 chunks match; the only two that pass the filter rank last (one occurrence in a long text).
    strong = [make_doc(f"s{i:03d}", texts=["wing " * (1 + i % 5)], metadata={"keep": False}) for i in range(200)]
    weak = [make_doc(f"w{i}", texts=["wing " + "filler " * 30], metadata={"keep": True}) for i in range(2)]
    partition.upsert(strong + weak)
    found = bm25(partition, "wing", 2, parse_filter({"keep": True}))
    assert [c.doc_id for c in found] == ["w0", "w1"]
    unfiltered = {c.chunk_id: c.score for c in bm25(partition, "wing", 1000)}
    assert [c.score for c in found] == [unfiltered[c.chunk_id] for c in found]


def test_a_filter_across_partitions_keeps_the_global_ranking(engines) -> None:
    one, sixteen, docs = engines
    flt = parse_filter({"i": {"$gte": 100, "$lt": 160}})
    kept = {chunk.chunk_id for doc in docs if 100 <= doc.metadata["i"] < 160 for chunk in doc.chunks}
    expected = [cid for cid, _ in reference_bm25(docs, "pressure boundary layers") if cid in kept][:7]
    for engine in (one, sixteen):
        assert [c.chunk_id for c in bm25(engine, "pressure boundary layers", 7, flt)] == expected


def test_phase_one_reads_no_text_or_metadata(partition: Partition) -> None:
    partition.upsert([make_doc(f"d{i}", texts=[f"wing flow {i}", "shock layer"], metadata={"i": i}) for i in range(20)])
    bm25(partition, "wing", 5)  # a pooled reader exists now
    read: set[tuple[str, str]] = set()

    def record(action: int, table: str | None, column: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_READ and table is not None and column is not None:
            read.add((table, column))
        return sqlite3.SQLITE_OK

    for conn in partition._readers:
        conn.set_authorizer(record)
    assert len(bm25(partition, "wing shock", 5)) == 5
    assert read and not read & {("chunks", "text"), ("documents", "text"), ("documents", "metadata"), ("chunk_terms", "analyzed")}
    bm25(partition, "wing", 5, parse_filter({"i": {"$lt": 3}}))
    assert ("documents", "metadata") in read  # a filter must read it; the text still is not
    assert not read & {("chunks", "text"), ("documents", "text")}


# ------------------------------------------------------------ writes keep the index exact
def lexical_state(part: Partition) -> tuple[list[tuple], list[tuple]]:
    """Totals and the full vocabulary (term, df, occurrences): what ghosts would show in."""
    return sql(part, "SELECT chunks, terms FROM lexical_totals"), sql(part, "SELECT term, doc, cnt FROM chunk_terms_df ORDER BY term")


def test_updates_and_deletes_leave_no_ghost_postings(tmp_path: Path) -> None:
    kept = [make_doc("keep", texts=["wing flow", "shock layer"])]
    fresh = open_partition(tmp_path / "fresh")
    fresh.upsert(kept)
    expected = lexical_state(fresh)
    fresh.close()

    part = open_partition(tmp_path / "churned")
    part.upsert(kept + [make_doc("gone", texts=["zebra flows", "zebra giraffe"]), make_doc("moved", 1, ["okapi wings"])])
    part.upsert([make_doc("moved", 2, ["quokka shocks"])])  # an update replaces every chunk
    assert part.term_stats(["okapi", "quokka"]).df == {"okapi": 0, "quokka": 1}
    part.delete("gone", 5)
    part.delete("moved", 5)
    part.purge_tombstones(10)
    assert lexical_state(part) == expected
    assert part.term_stats(["zebra", "flow", "wing"]) == TermStats(2, 4, {"zebra": 0, "flow": 1, "wing": 1})
    assert bm25(part, "zebra okapi quokka giraffe", 10) == []
    conn = sqlite3.connect(part.db_path)
    conn.execute("INSERT INTO chunk_terms_fts(chunk_terms_fts) VALUES ('integrity-check')")  # raises if not exact
    conn.close()
    part.close()


def test_a_version_only_update_keeps_postings_and_moves_candidates_to_the_new_chunk_ids(partition: Partition) -> None:
    partition.upsert([make_doc("a", 1, ["wing flow"])])
    before = lexical_state(partition)
    partition.upsert([make_doc("a", 4, ["wing flow"])])  # same content, newer version
    assert lexical_state(partition) == before
    [found] = bm25(partition, "wing", 5)
    assert (found.chunk_id, found.version) == ("a#4#0", 4)


# ------------------------------------------------------------ migration and analyzers
# The schema of a partition created before BM25 indexed analyzed terms (meshrag/store/schema.py then).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id       TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    text         TEXT NOT NULL,
    metadata     TEXT NOT NULL,
    deleted      INTEGER NOT NULL DEFAULT 0,
    updated_at   REAL NOT NULL,
    bucket       INTEGER NOT NULL DEFAULT -1
);
CREATE TABLE IF NOT EXISTS chunks (
    key        INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_id   TEXT NOT NULL UNIQUE,
    doc_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    text       TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char   INTEGER NOT NULL,
    vector     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id, seq);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='key',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS index_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op  TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    key INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partition_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS chunks_added AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.key, new.text);
    INSERT INTO index_log(op, key) VALUES ('add', new.key);
END;
CREATE TRIGGER IF NOT EXISTS chunks_removed AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.key, old.text);
    INSERT INTO index_log(op, key) VALUES ('remove', old.key);
END;
"""


def write_old_partition(root: Path, pid: int, docs: list[DocumentWrite]) -> Path:
    path = root / f"p{pid:04d}" / "store.sqlite"
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.execute("INSERT INTO partition_meta(name, value) VALUES ('dim', ?)", (str(DIM),))
    for doc in docs:
        conn.execute(
            "INSERT INTO documents(doc_id, version, content_hash, text, metadata, updated_at) VALUES (?, ?, ?, ?, '{}', 0)",
            (doc.doc_id, doc.version, doc.content_hash, doc.text),
        )
        conn.executemany(
            "INSERT INTO chunks(chunk_id, doc_id, seq, text, start_char, end_char, vector) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(c.chunk_id, doc.doc_id, c.seq, c.text, c.start, c.end, c.vector.tobytes()) for c in doc.chunks],
        )
    conn.commit()
    conn.close()
    return path


def test_a_partition_with_the_old_porter_fts_is_reindexed_on_open(tmp_path: Path) -> None:
    write_old_partition(tmp_path, 3, [make_doc("old", texts=["the flows were measured", "Ångström wings"])])
    part = open_partition(tmp_path)
    try:
        assert sql(part, "SELECT name FROM sqlite_master WHERE name = 'chunks_fts'") == []
        assert sql(part, "SELECT value FROM partition_meta WHERE name = 'lexical_format'") == [(lexical_format(ANALYZER),)]
        assert [c.chunk_id for c in bm25(part, "flow measurement", 5)] == ["old#1#0"]
        assert [c.chunk_id for c in bm25(part, "angstrom wing", 5)] == ["old#1#1"]
        assert part.term_stats([]).chunks == 2
        # The chunk triggers were re-created: one index log entry and one lexical row per new chunk.
        logged = sql(part, "SELECT COUNT(*) FROM index_log")[0][0]
        part.upsert([make_doc("new", texts=["fresh nozzle"])])
        assert sql(part, "SELECT COUNT(*) FROM index_log")[0][0] == logged + 1
        assert [c.doc_id for c in bm25(part, "nozzle", 5)] == ["new"]
    finally:
        part.close()


def test_a_partition_indexed_with_another_analyzer_is_reindexed_on_open(tmp_path: Path) -> None:
    plain = Analyzer(language="none", stopwords="none")
    part = Partition(tmp_path, 3, DIM, analyzer=plain)
    part.open()
    part.upsert([make_doc("a", texts=["the flows"])])
    assert part.term_stats(["the", "flows", "flow"]).df == {"the": 1, "flows": 1, "flow": 0}
    part.close()

    part = open_partition(tmp_path)  # the default analyzer: English stemmer and stop words
    try:
        assert part.term_stats(["the", "flows", "flow"]) == TermStats(1, 1, {"the": 0, "flows": 0, "flow": 1})
        assert sql(part, "SELECT value FROM partition_meta WHERE name = 'lexical_format'") == [(lexical_format(ANALYZER),)]
    finally:
        part.close()
    reopened = open_partition(tmp_path)  # current: nothing to rebuild, the same index
    try:
        assert reopened.term_stats(["flow"]).df == {"flow": 1}
    finally:
        reopened.close()


def test_the_engine_hands_its_analyzer_to_every_partition(tmp_path: Path) -> None:
    plain = Analyzer(language="none")
    engine = StorageEngine(tmp_path, 4, DIM, None, analyzer=plain)  # positional parameters as before
    engine.open()
    try:
        engine.upsert([make_doc(f"d{i}", texts=["flows"]) for i in range(8)])
        assert engine.term_stats(["flows", "flow"]).df == {"flows": 8, "flow": 0}
        assert all(engine.partition(pid).analyzer is plain for pid in engine.local_partitions())
    finally:
        engine.close()
