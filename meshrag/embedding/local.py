"""This node's embedder as a cluster service: bounded queue, measured rate.

The micro-batcher (rag/embedder.py) queues without bound; a node that other
coordinators send parts to must say no instead, before starting any work, once
``limit`` texts wait (503 with Retry-After: the coordinator tries another
embedder or slows down). Search queries never come through here: a query is
one text, embedded at once by the batcher, and refusing it for an ingest's
backlog would turn ingestion into search outages.

The rate advertised is this node's own measurement: an exponentially weighted
mean of texts/s over its recent batches (each weighted by its size), so a
node whose CPU is shared with other work advertises what it actually delivers.
"""

from __future__ import annotations

from typing import Any, Sequence

from meshrag.embedding.base import DEFAULT_RATE, EmbedReply, embedding_metadata
from meshrag.errors import EmbedderBusy
from meshrag.rag.embedder import Embedder

RATE_SMOOTHING = 0.2  # weight of a 64-text batch in the mean; a batch of n texts weighs n/64 of that
FULL_BATCH = 64


class RateMeter:
    """Texts/s over recent batches, size-weighted (small batches run slower per text and say less)."""

    def __init__(self, initial: float = 0.0) -> None:
        self.rate = initial

    def observe(self, texts: int, seconds: float) -> None:
        if texts <= 0 or seconds <= 0:
            return
        sample = texts / seconds
        if not self.rate:
            self.rate = sample
            return
        weight = min(1.0, RATE_SMOOTHING * texts / FULL_BATCH)
        self.rate += weight * (sample - self.rate)


class LocalEmbedding:
    """Admission in front of this node's Embedder, for parts coordinators send it (its own included)."""

    def __init__(self, embedder: Embedder, limit: int, meter: RateMeter) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1 text")
        self.embedder = embedder
        self.limit = limit
        self.meter = meter

    @property
    def queued(self) -> int:
        return self.embedder.queued_texts

    @property
    def rate(self) -> float:
        return self.meter.rate or DEFAULT_RATE

    def admit(self, texts: int) -> None:
        """EmbedderBusy, before any work, when ``texts`` more would overflow the queue. An empty
        queue takes any part: a part larger than the limit must still be embeddable somewhere."""
        queued = self.queued
        if queued and queued + texts > self.limit:
            drain_s = (queued + texts - self.limit) / self.rate
            raise EmbedderBusy(f"embedder queue holds {queued} texts (limit {self.limit})", retry_after_s=max(0.5, round(drain_s, 1)))

    async def embed(self, texts: Sequence[str]) -> EmbedReply:
        self.admit(len(texts))
        vectors = await self.embedder.embed(texts)
        return EmbedReply(vectors, queued=self.queued, rate=self.rate)

    def metadata(self) -> dict[str, Any]:
        return embedding_metadata(self.embedder.dim, self.rate, self.queued, self.limit)
