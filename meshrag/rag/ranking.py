"""Pure rules for combining ranked hit lists.

Used to merge the answers of several partitions (and, with the cluster issues,
several nodes) and to fuse dense and BM25 rankings. No I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Protocol, Sequence, TypeVar


class Ranked(Protocol):
    """What ranking needs of a result: search candidates (ids and scores) and hits alike."""

    @property
    def chunk_id(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def version(self) -> int: ...


R = TypeVar("R", bound=Ranked)

# The constant of reciprocal rank fusion (Cormack et al., 2009): damps the
# weight of the very first ranks so one list cannot dominate.
RRF_K = 60


def merge_top_k(hit_lists: Iterable[Sequence[R]], k: int) -> list[R]:
    """Best k hits by score; a chunk seen twice keeps its highest version."""
    best: dict[str, R] = {}
    for hits in hit_lists:
        for hit in hits:
            current = best.get(hit.chunk_id)
            if current is None or (hit.version, hit.score) > (current.version, current.score):
                best[hit.chunk_id] = hit
    return sorted(best.values(), key=lambda h: (-h.score, h.chunk_id))[:k]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[R]], k: int, rrf_k: int = RRF_K) -> list[R]:
    """Fuse rankings by sum of 1/(rrf_k + rank); the hit's score becomes that sum."""
    scores: dict[str, float] = {}
    hits: dict[str, R] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (rrf_k + rank)
            hits.setdefault(hit.chunk_id, hit)
    ordered = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))[:k]
    return [dataclasses.replace(hits[chunk_id], score=scores[chunk_id]) for chunk_id in ordered]  # type: ignore[type-var]
