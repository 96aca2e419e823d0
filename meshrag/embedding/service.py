"""Embedding as a cluster service: which embedders exist, and one batch embedded over them.

Glue between gossip (who advertises an embedder, its model, rate and queue),
this node's own embedder (called in-process, its figures read live), the
peers (/_mesh/embed over HTTP) and the router's protocol logic
(embedding/router.py). node.py builds it; the ingest pipeline calls it.

Only embedders of the cluster's model and dimension are candidates: the
cluster settings fix both (a node with other weights cannot even join), and
checking here too keeps a misconfigured embedder-only node out of the index.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from meshrag.embedding.base import EmbedderInfo, EmbedReply
from meshrag.embedding.local import LocalEmbedding
from meshrag.embedding.remote import RemoteEmbedders
from meshrag.embedding.router import EmbedRouter
from meshrag.errors import Unavailable
from meshrag.gossip.state import LIVE_STATES, Member, MemberState


class EmbeddingService:
    def __init__(
        self,
        local_id: str,
        members: Callable[[], Sequence[Member]],
        local: LocalEmbedding | None,
        remote: RemoteEmbedders,
        router_factory: Callable[[Callable[[EmbedderInfo, Sequence[str]], Any]], EmbedRouter],
        distribute: bool = True,
    ) -> None:
        """``distribute``: False keeps every part on this node (embedder.distribute = false)."""
        self._local_id = local_id
        self._members = members
        self._local = local
        self._remote = remote
        self._distribute = distribute
        self.router = router_factory(self._send)

    @property
    def model(self) -> str:
        if self._local is None:
            raise Unavailable("this node has no embedder", retry_after_s=5)
        return self._local.embedder.model_name

    def candidates(self) -> list[EmbedderInfo]:
        """Live (alive or suspect) embedders of this node's model and dimension: its own (figures
        read now), others' from gossip."""
        local = self._local
        if local is None:
            return []
        model, dim = local.embedder.model_name, local.embedder.dim
        found: list[EmbedderInfo] = []
        for member in self._members():
            if member.node_id == self._local_id:  # its figures read now, not as last gossiped
                info = EmbedderInfo(member.node_id, member.name, member.address, model, dim, local.rate, local.queued, local.limit, local=True)
            elif self._distribute and member.state in LIVE_STATES:
                # A suspect stays a candidate: a node whose CPU is saturated by embedding misses
                # probe acks and is suspected for a while; abandoning its parts would throw away
                # the work it is doing. The router sends it nothing new until it is alive again.
                info = EmbedderInfo.from_metadata(member.node_id, member.name, member.meta,
                                                  suspect=member.state is MemberState.SUSPECT)
            else:
                continue
            if info is not None and info.model == model and info.dim == dim and (info.local or info.address):
                found.append(info)
        return found

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], rows in the order of ``texts``."""
        if self._local is None:
            raise Unavailable("this node has no embedder", retry_after_s=5)
        if not texts:
            return np.zeros((0, self._local.embedder.dim), dtype=np.float32)
        return await self.router.embed(texts, self.candidates)  # re-read while parts run: a departed embedder's parts move

    async def _send(self, target: EmbedderInfo, texts: Sequence[str]) -> EmbedReply:
        if target.local and self._local is not None:
            return await self._local.embed(texts)
        return await self._remote.send(target, texts)

    def view(self) -> dict[str, Any]:
        """For /v1/cluster and `meshrag status`: each embedder, its figures and its breaker."""
        breakers = self.router.breakers.snapshot()
        stats = self.router.stats
        return {
            "distribute": self._distribute,
            "embedders": [
                {
                    "node": info.name, "id": info.node_id, "model": info.model, "dim": info.dim, "rate": info.rate,
                    "queued": info.queued, "limit": info.limit, "in_flight": self.router.in_flight(info.node_id),
                    "local": info.local, "suspect": info.suspect, "breaker": breakers.get(info.node_id, {"state": "closed"})["state"],
                    "texts": stats.texts[info.name], "failures": stats.failures[info.name], "busy": stats.busy[info.name],
                }
                for info in self.candidates()
            ],
            "retries": stats.retries,
            "breaker_events": self.router.breakers.counters(),
        }
