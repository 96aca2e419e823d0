"""Ingest, search and answer on this node: the coordinator's RAG logic.

The pipeline chunks and embeds once, then hands the finished documents to
the cluster service (cluster/service.py): replicated writes with a
consistency level, reads from one replica per partition, scatter-gather
search. Blocking work (tokenising) runs in the storage executor; embedding
goes through the embedder's micro-batcher.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence, TypeVar

import numpy as np

from meshrag.clock import HybridLogicalClock
from meshrag.errors import NotFound, Unavailable
from meshrag.embedding.service import EmbeddingService
from meshrag.generation.base import GenerationRequest, StreamReport
from meshrag.generation.service import GenerationService
from meshrag.observability import Metrics, Stopwatch
from meshrag.rag.chunking import Chunker, TextChunk
from meshrag.rag.embedder import Embedder
from meshrag.rag.prompt import Passage, build_messages
from meshrag.rag.ranking import merge_top_k, reciprocal_rank_fusion
from meshrag.rag.requests import AskRequest, IncomingDocument, SearchRequest
from meshrag.cluster.search import Gathered, Prepared, SearchPlan, require_coverage
from meshrag.cluster.service import ClusterService
from meshrag.cluster.session import decode_session, encode_session
from meshrag.store.types import ChunkWrite, DocumentWrite, Hit, StoredDocument, WriteResult, WriteStatus

log = logging.getLogger(__name__)
T = TypeVar("T")

# Candidates each ranking contributes to hybrid fusion: fusion needs more than
# k from each list, or documents ranked k+1 by both would be lost.
HYBRID_CANDIDATES = 100


@dataclass
class IngestOutcome:
    results: list[WriteResult]
    session: str


@dataclass
class SearchOutcome:
    hits: list[Hit]
    coverage: float
    missing_partitions: list[int]
    timings: dict[str, float] = field(default_factory=dict)


def content_hash(doc: IncomingDocument, chunking_fingerprint: str, model_name: str) -> str:
    """Identity of a document's content: same hash means nothing to re-embed."""
    digest = hashlib.sha256()
    for part in (doc.text, json.dumps(doc.metadata, sort_keys=True, separators=(",", ":")), chunking_fingerprint, model_name):
        digest.update(part.encode())
        digest.update(b"\x00")
    if doc.vector is not None:
        digest.update(np.asarray(doc.vector, dtype="<f4").tobytes())
    return digest.hexdigest()


def default_doc_id(text: str) -> str:
    """Documents posted without an id are named by their text, so re-posting is idempotent."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def chunk_id_for(doc_id: str, version: int, seq: int) -> str:
    return f"{doc_id}#{version:x}.{seq}"


class RagPipeline:
    def __init__(
        self,
        cluster: ClusterService,
        embedder: Embedder,
        embedding: EmbeddingService,
        chunker: Chunker,
        hlc: HybridLogicalClock,
        executor: Executor,
        metrics: Metrics,
        generation: GenerationService | None = None,
        search_timeout_s: float = 2.0,
    ) -> None:
        self._cluster = cluster
        self._embedder = embedder
        self._embedding = embedding
        self._chunker = chunker
        self._hlc = hlc
        self._executor = executor
        self._metrics = metrics
        self._generation = generation
        self._search_timeout_s = search_timeout_s

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---------------------------------------------------------------- ingest
    async def ingest(self, documents: Sequence[IncomingDocument], consistency: str = "quorum", session: str | None = None) -> IngestOutcome:
        """Upsert a batch on its replicas; unchanged documents are neither embedded nor rewritten."""
        session_map = decode_session(session)
        ids, hashes = await self._blocking(self._identify, documents)  # hashing MiBs of text: off the loop
        prior = await self._cluster.prior_states(ids, hashes, consistency)
        changed = [i for i, doc_id in enumerate(ids) if doc_id not in prior.unchanged]
        writes = await self._prepare_writes([documents[i] for i in changed], [ids[i] for i in changed], [hashes[i] for i in changed])
        token = encode_session(session_map)
        superseded: dict[str, int] = {}
        if writes:
            outcome, token = await self._cluster.write(writes, consistency, session_map)
            superseded = outcome.superseded
        written = {write.doc_id: write for write in writes}
        results: list[WriteResult] = []
        for doc_id in ids:
            if doc_id in written:
                status = WriteStatus.UPDATED if doc_id in prior.existing else WriteStatus.CREATED
                results.append(_verdict(WriteResult(doc_id, status, written[doc_id].version), superseded))
            else:
                results.append(WriteResult(doc_id=doc_id, status=WriteStatus.UNCHANGED, version=prior.unchanged[doc_id].version))
        for result in results:
            self._metrics.documents_written.labels(status=result.status.value).inc()
        return IngestOutcome(results, token)

    def _identify(self, documents: Sequence[IncomingDocument]) -> tuple[list[str], list[str]]:
        """Each document's id (given, or named by its text) and content hash."""
        fingerprint, model = self._chunker.fingerprint(), self._embedder.model_name
        ids = [doc.doc_id or default_doc_id(doc.text) for doc in documents]
        return ids, [content_hash(doc, fingerprint, model) for doc in documents]

    async def _prepare_writes(self, docs: list[IncomingDocument], ids: list[str], hashes: list[str]) -> list[DocumentWrite]:
        chunked = await self._blocking(self._chunk_all, docs)
        # A document that brings its vector is one chunk with that vector: nothing to embed.
        texts = [chunk.text for doc, doc_chunks in zip(docs, chunked) if doc.vector is None for chunk in doc_chunks]
        vectors = await self._embed_for_ingest(texts)
        self._metrics.chunks_embedded.inc(len(texts))
        vector_rows = iter(vectors)
        writes = []
        for doc, doc_id, digest, doc_chunks in zip(docs, ids, hashes, chunked):
            version = self._hlc.now()
            chunk_writes = tuple(
                ChunkWrite(
                    chunk_id=chunk_id_for(doc_id, version, chunk.seq),
                    seq=chunk.seq,
                    text=chunk.text,
                    start=chunk.start,
                    end=chunk.end,
                    vector=doc.vector if doc.vector is not None else next(vector_rows),
                )
                for chunk in doc_chunks
            )
            writes.append(DocumentWrite(doc_id, version, digest, doc.text, doc.metadata, chunk_writes))
        return writes

    async def _embed_for_ingest(self, texts: list[str]) -> np.ndarray:
        """An ingest's texts over the cluster's embedders (embedding/service.py; queries stay on
        this node's embedder). Before anything is written: a batch that cannot be embedded fails whole."""
        return await self._embedding.embed(texts)

    def _chunk_all(self, docs: list[IncomingDocument]) -> list[list[TextChunk]]:
        """Chunk every document; one given vector means one chunk of the whole text."""
        result = []
        for doc in docs:
            if doc.vector is not None:
                result.append([TextChunk(seq=0, text=doc.text, start=0, end=len(doc.text), n_tokens=0)])
            else:
                result.append(self._chunker.chunk(doc.text))
        return result

    async def delete(self, doc_id: str, consistency: str = "quorum", session: str | None = None) -> IngestOutcome:
        """Replicate a tombstone: a replica that missed it cannot bring the document back.

        The replicas' versions are read (and observed) first, so the tombstone is
        stamped after them even when this node's clock is behind."""
        session_map = decode_session(session)
        await self._cluster.read_versions([doc_id])
        tombstone = DocumentWrite(doc_id, self._hlc.now(), "", "", {}, (), deleted=True)
        outcome, token = await self._cluster.write([tombstone], consistency, session_map)
        result = _verdict(WriteResult(doc_id, WriteStatus.DELETED, tombstone.version), outcome.superseded)
        self._metrics.documents_written.labels(status=result.status.value).inc()
        return IngestOutcome([result], token)

    async def get(self, doc_id: str, session: str | None = None, local: bool = False, consistency: str = "quorum") -> StoredDocument:
        """The newest copy among ``consistency`` replicas (the session's first), or only this node's copy."""
        if local:
            doc = await self._cluster.get_local(doc_id)
            where = " on this node"
        else:
            doc = await self._cluster.get(doc_id, decode_session(session), consistency)
            where = ""
        if doc is None or doc.deleted:
            raise NotFound(f"document {doc_id!r} not found{where}", field="id")
        return doc

    # ---------------------------------------------------------------- search
    async def search(self, request: SearchRequest) -> SearchOutcome:
        """Candidates from every partition (ids and scores), ranked and fused here, then
        text and metadata for the final k only; all within the search's deadline."""
        watch = Stopwatch()
        timings: dict[str, float] = {}
        kinds = {"dense": ("dense",), "bm25": ("bm25",), "hybrid": ("dense", "bm25")}[request.mode]
        depth = request.k if request.mode != "hybrid" else max(request.k, HYBRID_CANDIDATES)
        timeout_s = request.timeout_ms / 1000 if request.timeout_ms is not None else self._search_timeout_s
        left_s = lambda: max(0.0, timeout_s - watch.ms() / 1000)  # noqa: E731  (the deadline covers embedding too)
        plan = SearchPlan(kinds, request.vector, request.query, depth, request.filter, decode_session(request.session), timeout_s)
        prepared, vector = await self._prepare_while_embedding(plan, timings, watch)
        plan = dataclasses.replace(plan, vector=vector)
        here = await self._cluster.search.search_here(plan, prepared)  # every partition here: one step
        if here is None:
            gathered, hits = await self._gather_and_fetch(plan, prepared, request, left_s)
        else:
            gathered, hits = here
            if request.require_full_coverage:
                require_coverage(gathered)
        timings.update(gathered.timings)
        timings["total_ms"] = watch.ms()
        timings["search_ms"] = round(timings["total_ms"] - timings.get("embed_ms", 0.0), 2)
        self._metrics.search_latency.labels(stage="total").observe(timings["total_ms"] / 1000)
        if gathered.missing:
            self._metrics.partial_searches.inc()
        return SearchOutcome(hits=hits, coverage=gathered.coverage, missing_partitions=gathered.missing, timings=timings)

    async def _gather_and_fetch(
        self, plan: SearchPlan, prepared: Prepared, request: SearchRequest, left_s: Callable[[], float],
    ) -> tuple[Gathered, list[Hit]]:
        """Candidates from every partition's chosen replica, ranked and fused here, then the
        text and metadata of the final k from the nodes that answered for them."""
        gathered = await self._cluster.search.gather(plan, prepared)
        if request.require_full_coverage:
            require_coverage(gathered)  # before the fetch: a refused search fetches nothing
        ranked = {kind: merge_top_k([gathered.lists.get(kind, [])], plan.k) for kind in plan.kinds}
        if request.mode == "hybrid":
            final = reciprocal_rank_fusion([ranked["dense"], ranked["bm25"]], request.k)
        else:
            final = ranked[plan.kinds[0]][: request.k]
        fetch_watch = Stopwatch()
        hits = await self._cluster.search.fetch(final, gathered.holders, left_s(), gathered.texts)
        gathered.timings["fetch_ms"] = fetch_watch.ms()
        return gathered, hits

    async def _prepare_while_embedding(
        self, plan: SearchPlan, timings: dict[str, float], watch: Stopwatch,
    ) -> tuple[Prepared, np.ndarray | None]:
        """The search's replica ranking, query terms and term statistics (a round trip to
        other nodes for BM25), computed while the embedder works on the query: the event
        loop is idle during an embedding, and neither needs the other."""
        if plan.vector is not None or "dense" not in plan.kinds:
            return await self._cluster.search.prepare(plan), plan.vector
        assert plan.query is not None
        embedding = asyncio.ensure_future(self._embedder.embed([plan.query]))
        embedding.add_done_callback(lambda _: timings.setdefault("embed_ms", watch.ms()))
        try:
            prepared = await self._cluster.search.prepare(plan)
            vectors = await embedding
        finally:
            if not embedding.done():
                embedding.cancel()  # prepare failed: the batcher skips the query
            elif not embedding.cancelled():
                embedding.exception()  # seen: prepare's error, if any, is the one raised
        return prepared, vectors[0]

    # ------------------------------------------------------------------- ask
    async def retrieve_for_ask(self, request: AskRequest) -> tuple[list[Passage], SearchOutcome]:
        search = SearchRequest(query=request.query, vector=None, k=request.k, mode="hybrid", filter=request.filter, session=request.session)
        outcome = await self.search(search)
        passages = [
            Passage(n=i + 1, doc_id=hit.doc_id, chunk_id=hit.chunk_id, text=hit.text, score=hit.score)
            for i, hit in enumerate(outcome.hits)
        ]
        return passages, outcome

    async def generate(
        self, question: str, passages: Sequence[Passage], max_tokens: int, temperature: float, report: StreamReport | None = None,
    ) -> AsyncIterator[str]:
        """Stream the answer from the cluster's generators (any node can ask; the router fails
        over between them); ``report`` fills with the generator used and any failover."""
        request = GenerationRequest(messages=build_messages(question, passages), max_tokens=max_tokens, temperature=temperature)
        async with aclosing(self.generate_messages(request, report or StreamReport())) as pieces:
            async for piece in pieces:
                yield piece

    async def generate_messages(self, request: GenerationRequest, report: StreamReport) -> AsyncIterator[str]:
        """Any prepared request (the OpenAI-compatible API's own messages too), with metrics."""
        if self._generation is None:
            raise Unavailable("generation is not started yet", retry_after_s=2)
        watch = Stopwatch()
        outcome = "failed"
        try:
            async with aclosing(self._generation.stream(request, report)) as pieces:
                async for piece in pieces:
                    if report.pieces == 1:
                        self._metrics.generation_ttft.observe(watch.ms() / 1000)
                    self._metrics.generated_tokens.inc()
                    yield piece
            outcome = "completed"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self._metrics.generations.labels(outcome=outcome).inc()


def _verdict(applied: WriteResult, superseded: dict[str, int]) -> WriteResult:
    """What the client is told of a write: ``applied``, unless a replica holds a newer version
    (a concurrent write won), then superseded with that version, never updated."""
    newer = superseded.get(applied.doc_id)
    return applied if newer is None else WriteResult(applied.doc_id, WriteStatus.SUPERSEDED, newer)
