"""rag/ranking.py: merging partition answers and reciprocal rank fusion."""

from __future__ import annotations

import pytest

from meshrag.rag.ranking import RRF_K, merge_top_k, reciprocal_rank_fusion
from meshrag.store.types import Hit


def hit(chunk_id: str, score: float, version: int = 1) -> Hit:
    return Hit(chunk_id=chunk_id, doc_id=chunk_id.split("#")[0], score=score, text=chunk_id, metadata={}, version=version, partition=0)


def test_merge_keeps_best_k_by_score_across_lists() -> None:
    merged = merge_top_k([[hit("a", 0.9), hit("b", 0.5)], [hit("c", 0.7), hit("d", 0.1)]], k=3)
    assert [h.chunk_id for h in merged] == ["a", "c", "b"]


def test_merge_dedupes_chunks_keeping_highest_version() -> None:
    merged = merge_top_k([[hit("a", 0.4, version=1)], [hit("a", 0.3, version=2)]], k=5)
    assert len(merged) == 1 and merged[0].version == 2


def test_merge_breaks_score_ties_deterministically() -> None:
    lists = [[hit("b", 0.5)], [hit("a", 0.5)]]
    assert [h.chunk_id for h in merge_top_k(lists, 2)] == ["a", "b"]


def test_rrf_rewards_agreement_between_rankings() -> None:
    dense = [hit("x", 0.9), hit("shared", 0.8)]
    lexical = [hit("y", 12.0), hit("shared", 11.0)]
    fused = reciprocal_rank_fusion([dense, lexical], k=3)
    assert fused[0].chunk_id == "shared"
    assert fused[0].score == pytest.approx(2 / (RRF_K + 2))


def test_rrf_scores_are_independent_of_raw_score_scales() -> None:
    a = reciprocal_rank_fusion([[hit("p", 1000.0), hit("q", 999.0)]], k=2)
    b = reciprocal_rank_fusion([[hit("p", 0.02), hit("q", 0.01)]], k=2)
    assert [h.score for h in a] == [h.score for h in b]
