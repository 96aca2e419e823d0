"""What an embedder advertises, and what a coordinator knows of it.

Every node with the embedding model loaded advertises it in gossip, beside the
model name it always carried (``meta["embedder"]``, which the cluster's model
check and older nodes read):

    meta["embedding"] = {"dim": 384, "rate": 18.7, "queued": 12, "limit": 1024}

* ``rate``: texts per second its recent batches ran at, measured by the node
  itself (so it already includes whatever else competes for its CPU or GPU);
* ``queued``: texts waiting in its micro-batcher when it advertised;
* ``limit``: queued texts beyond which /_mesh/embed answers 503 (backpressure).

Gossip refreshes this every few seconds; each /_mesh/embed reply carries the
same figures fresh, and the coordinator prefers those (embedding/router.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

DEFAULT_RATE = 20.0  # texts/s assumed of an embedder that has not measured itself yet (one CPU thread)


@dataclass(frozen=True)
class EmbedderInfo:
    """An embedder as the coordinator sees it: from gossip metadata, or this node's own."""

    node_id: str
    name: str
    address: str  # host:port of its HTTP listener
    model: str  # `<name>@<weights digest>`: equal wherever the weights are equal
    dim: int
    rate: float  # texts/s
    queued: int  # texts waiting, as last advertised
    limit: int  # queue bound (texts)
    local: bool = False  # this node's own: called in-process
    suspect: bool = False  # gossip suspects it: no new parts, but parts already there are left to finish

    @classmethod
    def from_metadata(cls, node_id: str, name: str, meta: Mapping[str, Any], local: bool = False, suspect: bool = False) -> EmbedderInfo | None:
        """None when the metadata advertises no (well-formed) embedder."""
        model, figures = meta.get("embedder"), meta.get("embedding")
        if not isinstance(model, str) or not model or not isinstance(figures, Mapping):
            return None
        dim = _number(figures.get("dim"), 0.0)
        if dim < 1:
            return None
        return cls(
            node_id=node_id,
            name=name,
            address=str(meta.get("http") or ""),
            model=model,
            dim=int(dim),
            rate=_number(figures.get("rate"), 0.0) or DEFAULT_RATE,
            queued=int(_number(figures.get("queued"), 0.0)),
            limit=max(1, int(_number(figures.get("limit"), 1.0))),
            local=local,
            suspect=suspect,
        )


def embedding_metadata(dim: int, rate: float, queued: int, limit: int) -> dict[str, Any]:
    """What a node advertises (small: it rides on alive messages). The rate is rounded so
    that noise in the last digits does not make a metadata change to gossip."""
    return {"dim": dim, "rate": round(rate, 0 if rate >= 100 else 1), "queued": queued, "limit": limit}


@dataclass(frozen=True)
class EmbedReply:
    """One part's vectors, and the embedder's load right after it (fresher than gossip)."""

    vectors: np.ndarray  # float32 [texts, dim], rows L2-normalised
    queued: int | None = None
    rate: float | None = None


class EmbedFailed(Exception):
    """One part failed on one embedder (it died, timed out, or answered nonsense): try another."""


def _number(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return default
    return float(value)
