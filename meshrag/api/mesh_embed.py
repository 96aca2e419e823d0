"""/_mesh/embed: an embedder node embeds a part of a coordinator's batch.

The request passes its signature check (security/mesh_auth.py) and the size limit, is validated
(embedding/remote.py), must name this node's model (409 otherwise: vectors of
other weights must never reach the index), and is admitted or refused at once
with 503 and Retry-After when the embedder's queue is full
(embedding/local.py), before any work. The reply carries the vectors and this
node's queue and rate right after, which the coordinator's router prefers to
gossip's older figures.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from meshrag import wire
from meshrag.cluster.messages import EMBED_PATH
from meshrag.cluster.rpc import BodyCodec
from meshrag.config import Config
from meshrag.embedding.local import LocalEmbedding
from meshrag.embedding.remote import reply_to_wire, request_from_wire
from meshrag.errors import MeshragError, PayloadTooLarge, Unavailable


class ModelMismatch(MeshragError):
    status = 409
    code = "model_mismatch"


class EmbedderView(Protocol):
    config: Config
    local_embedding: LocalEmbedding | None


class EmbedRoute:
    def __init__(self, node: EmbedderView, codec: BodyCodec | None = None) -> None:
        self._node = node
        self._codec = codec or BodyCodec()  # a large part is unpacked and packed off the event loop

    def routes(self) -> list[web.RouteDef]:
        return [web.post(EMBED_PATH, self.embed)]

    async def embed(self, request: web.Request) -> web.Response:
        config = self._node.config
        local = self._node.local_embedding
        if local is None:
            raise Unavailable("this node's embedder is not loaded yet", retry_after_s=2)
        limit = config.cluster.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"body over {limit} bytes", field="body")
        parse = lambda body: request_from_wire(body, config.api.max_text_chars)  # noqa: E731
        model, texts = await self._codec.decode(await request.read(), parse)
        own = local.embedder.model_name
        if model != own:
            raise ModelMismatch(f"this node embeds with {own}, not {model}", field="model")
        reply = await local.embed(texts)
        return web.Response(body=await self._codec.pack(reply_to_wire(own, reply)), content_type=wire.MSGPACK)
