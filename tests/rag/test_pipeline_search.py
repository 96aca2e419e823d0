"""The coordinator's search pipeline: what runs while the query is being embedded.

The cluster side is a recording stand-in (its real phases are tested in
tests/cluster/test_search.py); what is under test here is the order and overlap
of the pipeline's own steps, on a virtual-time loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pytest

from meshrag.cluster.search import Gathered, Prepared, SearchPlan
from meshrag.observability import Metrics
from meshrag.rag.pipeline import RagPipeline
from meshrag.rag.requests import SearchRequest
from meshrag.store.types import Candidate, Hit
from tests.virtual_loop import run_virtual

EMBED_S = 0.010
PREPARE_S = 0.004
QUERY_VECTOR = np.full(4, 0.5, dtype=np.float32)


@dataclass
class SlowEmbedder:
    """Embeds in EMBED_S of virtual time; records when, and whether it was cancelled."""

    events: list[tuple[str, float]]
    cancelled: bool = False

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        self.events.append(("embed start", loop.time()))
        try:
            await asyncio.sleep(EMBED_S)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.events.append(("embed end", loop.time()))
        return np.stack([QUERY_VECTOR for _ in texts])


@dataclass
class RecordingSearch:
    events: list[tuple[str, float]]
    fail_prepare: bool = False
    plans: list[SearchPlan] = field(default_factory=list)

    async def prepare(self, plan: SearchPlan) -> Prepared:
        loop = asyncio.get_running_loop()
        self.events.append(("prepare start", loop.time()))
        await asyncio.sleep(PREPARE_S)  # a term-statistics round trip
        if self.fail_prepare:
            raise RuntimeError("the pre-pass failed")
        self.events.append(("prepare end", loop.time()))
        return Prepared({0: ["n1"]}, loop.time() + plan.timeout_s, terms=["flutter"])

    async def search_here(self, plan: SearchPlan, prepared: Prepared) -> None:
        return None  # partition 0's replica is another node: the scatter path is under test

    async def gather(self, plan: SearchPlan, prepared: Prepared | None = None) -> Gathered:
        assert prepared is not None
        self.plans.append(plan)
        self.events.append(("gather", asyncio.get_running_loop().time()))
        candidate = Candidate(chunk_id="d#1.0", doc_id="d", score=0.9, version=1, partition=0)
        return Gathered({kind: [candidate] for kind in plan.kinds}, {0: "n1"}, [], 1.0)

    async def fetch(self, final: Sequence[Candidate], holders: Any, left_s: float, texts: Any = None) -> list[Hit]:
        return [Hit(c.chunk_id, c.doc_id, c.score, "text", {}, c.version, c.partition) for c in final]


@dataclass
class StandInCluster:
    search: RecordingSearch


def pipeline(events: list[tuple[str, float]], fail_prepare: bool = False) -> tuple[RagPipeline, SlowEmbedder, RecordingSearch]:
    embedder = SlowEmbedder(events)
    search = RecordingSearch(events, fail_prepare)
    built = RagPipeline(
        cluster=StandInCluster(search),  # type: ignore[arg-type]
        embedder=embedder,  # type: ignore[arg-type]
        embedding=None,  # type: ignore[arg-type]  (ingest only)
        chunker=None,  # type: ignore[arg-type]
        hlc=None,  # type: ignore[arg-type]
        executor=None,  # type: ignore[arg-type]
        metrics=Metrics(),
    )
    return built, embedder, search


def request(mode: str, vector: np.ndarray | None = None) -> SearchRequest:
    return SearchRequest(query="flutter of panels", vector=vector, k=3, mode=mode, filter=None, session=None)


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_replicas_and_term_statistics_are_prepared_while_the_query_is_embedded(mode: str) -> None:
    events: list[tuple[str, float]] = []
    built, _, search = pipeline(events)

    outcome, _ = run_virtual(built.search, request(mode))

    at = dict(events)
    assert at["prepare start"] < at["embed end"]  # not after it
    assert at["gather"] == pytest.approx(max(EMBED_S, PREPARE_S))  # the two overlapped
    np.testing.assert_array_equal(search.plans[0].vector, QUERY_VECTOR)
    assert "embed_ms" in outcome.timings  # wall-clock (perf_counter): not advanced by virtual time
    assert [hit.chunk_id for hit in outcome.hits] == ["d#1.0"]


def test_a_search_with_its_own_vector_or_bm25_only_embeds_nothing() -> None:
    for mode, vector in (("dense", QUERY_VECTOR), ("bm25", None)):
        events: list[tuple[str, float]] = []
        built, _, search = pipeline(events)
        outcome, _ = run_virtual(built.search, request(mode, vector))
        assert [name for name, _ in events] == ["prepare start", "prepare end", "gather"]
        assert "embed_ms" not in outcome.timings


def test_a_failed_preparation_cancels_the_embedding_and_is_the_error_raised() -> None:
    events: list[tuple[str, float]] = []
    built, embedder, _ = pipeline(events, fail_prepare=True)

    with pytest.raises(RuntimeError, match="pre-pass failed"):
        run_virtual(built.search, request("hybrid"))

    assert embedder.cancelled
    assert "embed end" not in dict(events)
