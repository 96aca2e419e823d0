"""Term statistics and Lucene BM25 scoring, without SQLite."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meshrag.store.lexical import TermStats, bm25_scores, idf, ranked_windows


def test_lucene_bm25_matches_a_hand_computed_example() -> None:
    # Corpus of 4 chunks with 40 terms: avgdl 10. "wing" in 2 chunks, "flow" in 1.
    stats = TermStats(chunks=4, terms=40, df={"wing": 2, "flow": 1})
    postings = {"wing": np.array([[7, 2], [9, 1]]), "flow": np.array([[9, 3]])}
    lengths = np.array([[9, 20], [7, 5]])
    keys, scores = bm25_scores(postings, lengths, stats)
    idf_wing = math.log(1 + (4 - 2 + 0.5) / (2 + 0.5))  # ln 2 = 0.693147...
    idf_flow = math.log(1 + (4 - 1 + 0.5) / (1 + 0.5))  # ln(10/3) = 1.203972...
    # chunk 7: dl 5 -> 1 - b + b * 0.5 = 0.625; tf 2: 2 * 2.2 / (2 + 1.2 * 0.625) = 4.4 / 2.75 = 1.6
    chunk7 = idf_wing * 1.6
    # chunk 9: dl 20 -> 1 - b + b * 2 = 1.75, 1.2 * 1.75 = 2.1; wing tf 1: 2.2 / 3.1; flow tf 3: 6.6 / 5.1
    chunk9 = idf_wing * 2.2 / 3.1 + idf_flow * 6.6 / 5.1
    assert keys.tolist() == [7, 9]
    assert scores.tolist() == pytest.approx([chunk7, chunk9], abs=1e-12)
    assert scores.tolist() == pytest.approx([1.1090355, 2.0499934], abs=1e-6)


def test_idf_is_lucenes_and_positive_even_for_a_term_in_every_chunk() -> None:
    assert idf(0, 10) == pytest.approx(math.log(1 + 10.5 / 0.5))
    assert 0 < idf(10, 10) < idf(5, 10) < idf(1, 10)


def test_k1_and_b_are_honoured() -> None:
    stats = TermStats(2, 20, {"t": 1})
    postings, lengths = {"t": np.array([[1, 3]])}, np.array([[1, 30]])
    _, no_length_norm = bm25_scores(postings, lengths, stats, b=0.0)
    assert no_length_norm[0] == pytest.approx(idf(1, 2) * 3 * 2.2 / (3 + 1.2))
    _, binary = bm25_scores(postings, lengths, stats, k1=0.0)
    assert binary[0] == pytest.approx(idf(1, 2))


def test_scores_depend_only_on_the_chunk_and_the_statistics() -> None:
    """The same chunk scored among other chunks or alone gets the very same float."""
    stats = TermStats(100, 1234, {"a": 10, "b": 30, "c": 3})
    rng = np.random.default_rng(1)
    keys = np.arange(1, 200)
    postings = {}
    for term in ("a", "b", "c"):
        chosen = np.sort(rng.choice(keys, 60, replace=False))
        postings[term] = np.stack([chosen, rng.integers(1, 6, len(chosen))], axis=1)
    lengths = np.stack([keys, rng.integers(1, 40, len(keys))], axis=1)
    all_keys, all_scores = bm25_scores(postings, lengths, stats)
    for key in all_keys[:25].tolist():
        alone = {t: rows[rows[:, 0] == key] for t, rows in postings.items()}
        alone = {t: rows for t, rows in alone.items() if len(rows)}
        one_key, one_score = bm25_scores(alone, lengths[lengths[:, 0] == key], stats)
        assert one_key.tolist() == [key] and one_score[0] == all_scores[all_keys.tolist().index(key)]


def test_scoring_needs_a_df_for_every_term_and_a_length_for_every_chunk() -> None:
    with pytest.raises(ValueError, match="no document frequency"):
        bm25_scores({"t": np.array([[1, 1]])}, np.array([[1, 3]]), TermStats(1, 3, {}))
    with pytest.raises(ValueError, match="no length for chunk keys \\[2\\]"):
        bm25_scores({"t": np.array([[1, 1], [2, 1]])}, np.array([[1, 3]]), TermStats(2, 6, {"t": 2}))


def test_no_postings_score_nothing_and_empty_statistics_do_not_divide_by_zero() -> None:
    keys, scores = bm25_scores({}, np.zeros((0, 2), int), TermStats(0, 0, {}))
    assert len(keys) == len(scores) == 0
    _, stale = bm25_scores({"t": np.array([[1, 2]])}, np.array([[1, 4]]), TermStats(0, 0, {"t": 0}))
    assert np.isfinite(stale).all()


def test_statistics_add_and_merge() -> None:
    a = TermStats(10, 100, {"wing": 3, "flow": 1})
    b = TermStats(5, 40, {"wing": 2, "jet": 4})
    assert a + b == TermStats(15, 140, {"wing": 5, "flow": 1, "jet": 4})
    assert TermStats.merged([a, b, TermStats(0, 0, {})]) == a + b
    assert TermStats.merged([]) == TermStats(0, 0, {})
    assert a.df == {"wing": 3, "flow": 1}  # adding never changes the parts
    assert a.avgdl == 10.0 and TermStats(0, 0, {}).avgdl == 0.0


def test_statistics_round_trip_the_wire() -> None:
    stats = TermStats(10, 100, {"wing": 3, "café": 0})
    assert TermStats.from_wire(stats.to_wire()) == stats
    assert stats.to_wire() == {"chunks": 10, "terms": 100, "df": {"wing": 3, "café": 0}}


@pytest.mark.parametrize(
    "raw, message",
    [
        ([10, 100, {}], "must be a map"),
        ({"chunks": 10, "terms": 100}, "'df' must be a map"),
        ({"chunks": -1, "terms": 100, "df": {}}, "chunks must be an integer >= 0"),
        ({"chunks": 1.5, "terms": 100, "df": {}}, "chunks must be an integer"),
        ({"chunks": True, "terms": 100, "df": {}}, "chunks must be an integer"),
        ({"chunks": 1, "df": {}}, "terms must be an integer"),
        ({"chunks": 1, "terms": 1, "df": {"t": "3"}}, "df of 't' must be an integer"),
        ({"chunks": 1, "terms": 1, "df": {b"t": 3}}, "is not a string"),
    ],
)
def test_malformed_wire_statistics_are_refused(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TermStats.from_wire(raw)


def test_ranked_windows_grow_and_never_split_a_tie() -> None:
    scores = np.array([5.0, 9.0, 7.0, 7.0, 7.0, 1.0, 3.0, 2.0, 0.5, 0.25])
    windows = [w.tolist() for w in ranked_windows(scores, 2)]
    assert windows == [[1, 2, 3, 4], [0, 6, 7, 5, 8, 9]]  # 2, widened over the tie at 7; then 8
    assert sorted(i for w in windows for i in w) == list(range(10))
    assert [w.tolist() for w in ranked_windows(scores, 100)] == [[1, 2, 3, 4, 0, 6, 7, 5, 8, 9]]
    assert list(ranked_windows(np.zeros(0), 3)) == []
