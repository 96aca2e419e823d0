"""Embedding across nodes: the /_mesh/embed body, its reply, and the client side.

    request  {"model": "<name>@<digest>", "texts": ["...", ...]}
    reply    {"model": ..., "vectors": float32 [texts, dim], "queued": int, "rate": float}

The model is named in the request and checked by the embedder: a node that
embeds with other weights refuses (409) instead of returning vectors that
would sit in the index beside incomparable ones. A full queue answers 503
with Retry-After before any work (embedding/local.py).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from meshrag import wire
from meshrag.cluster.messages import EMBED_PATH
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.embedding.base import EmbedderInfo, EmbedFailed, EmbedReply
from meshrag.errors import EmbedderBusy, ValidationError

MAX_TEXTS = 4096  # per part; coordinators send router.part_texts (32 by default)


def request_to_wire(model: str, texts: Sequence[str]) -> dict[str, Any]:
    return {"model": model, "texts": list(texts)}


def request_from_wire(body: Any, max_text_chars: int) -> tuple[str, list[str]]:
    """(model, texts), or ValidationError naming the field."""
    if not isinstance(body, Mapping):
        raise ValidationError("body must be a map", field="body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValidationError("model must be the embedding model's name", field="model")
    texts = body.get("texts")
    if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_TEXTS:
        raise ValidationError(f"texts must be a list of 1..{MAX_TEXTS} strings", field="texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValidationError(f"texts[{i}] must be a string", field=f"texts[{i}]")
        if len(text) > max_text_chars:
            raise ValidationError(f"texts[{i}] is {len(text)} characters; the limit is {max_text_chars}", field=f"texts[{i}]")
        wire.check_text(text, f"texts[{i}]")
    return model, texts


def reply_to_wire(model: str, reply: EmbedReply) -> dict[str, Any]:
    return {"model": model, "vectors": reply.vectors, "queued": reply.queued, "rate": reply.rate}


def reply_from_wire(body: Any, target: EmbedderInfo) -> EmbedReply:
    """The reply's vectors (shape and finiteness are the router's to check); EmbedFailed if malformed."""
    if not isinstance(body, Mapping) or not isinstance(body.get("vectors"), np.ndarray):
        raise EmbedFailed(f"{target.name} sent a malformed embed reply")
    if body.get("model") != target.model:
        raise EmbedFailed(f"{target.name} embedded with {body.get('model')!r}, not {target.model!r}")
    queued, rate = body.get("queued"), body.get("rate")
    return EmbedReply(
        vectors=np.asarray(body["vectors"], dtype=np.float32),
        queued=queued if isinstance(queued, int) and not isinstance(queued, bool) and queued >= 0 else None,
        rate=float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0 else None,
    )


class RemoteEmbedders:
    """Sends parts to other nodes' /_mesh/embed (the router's SendPart for non-local targets)."""

    def __init__(self, peers: PeerClient) -> None:
        self._peers = peers

    async def send(self, target: EmbedderInfo, texts: Sequence[str]) -> EmbedReply:
        """The part's reply; EmbedderBusy for a 503, EmbedFailed for anything else that goes wrong.
        The router bounds the wait (its part deadline), so the call itself has no timeout of its own
        beyond the peer client's connect bound."""
        try:
            body = await self._peers.call(target.address, EMBED_PATH, request_to_wire(target.model, texts), timeout_s=3600.0)
        except PeerError as exc:
            if exc.status == 503:
                raise EmbedderBusy(f"{target.name}: {exc.reason}", retry_after_s=exc.retry_after_s or 1.0) from None
            raise EmbedFailed(f"{target.name}: {exc.reason}") from None
        return reply_from_wire(body, target)
