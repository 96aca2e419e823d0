"""/_mesh/generate: a generator node streams an answer to the coordinator that asked.

The request passes its signature check (security/mesh_auth.py) and the size limit, is validated
(generation/remote.py), then admitted or refused at once with 503 and
Retry-After (generation/admission.py) before any byte of the stream is sent.
Admitted, the reply streams msgpack frames: pieces, then "end" or a typed
"error". When the coordinator goes away aiohttp cancels this handler
(handler_cancellation), and closing the stream stops the generation.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from aiohttp import web

from meshrag import wire
from meshrag.config import Config
from meshrag.errors import MeshragError, PayloadTooLarge, Unavailable, ValidationError
from meshrag.generation.admission import LocalGenerator
from meshrag.generation.remote import end_frame, error_frame, piece_frame, request_from_wire
from meshrag.cluster.messages import GENERATE_PATH

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4 * 1024 * 1024  # messages + continuation: a long prompt is well under this


class GeneratorView(Protocol):
    config: Config
    local_generator: LocalGenerator | None


class GenerateRoute:
    def __init__(self, node: GeneratorView) -> None:
        self._node = node

    def routes(self) -> list[web.RouteDef]:
        return [web.post(GENERATE_PATH, self.generate)]

    async def generate(self, request: web.Request) -> web.StreamResponse:
        received = time.perf_counter()
        config = self._node.config
        generator = self._node.local_generator
        if generator is None:
            raise Unavailable("this node has no generator loaded", retry_after_s=5)
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            raise PayloadTooLarge(f"body over {MAX_REQUEST_BYTES} bytes", field="body")
        body = wire.unpack(await request.read())
        if not isinstance(body, dict):
            raise ValidationError("body must be a map", field="body")
        parsed = request_from_wire(body, config.generation.max_tokens, MAX_REQUEST_BYTES)
        stream = generator.open(parsed)  # GeneratorBusy: a plain 503, nothing streamed yet
        try:
            response = web.StreamResponse(headers={"Content-Type": wire.MSGPACK})
            await response.prepare(request)
            pieces, first_piece_ms = 0, 0.0
            try:
                async for piece in stream:
                    pieces += 1
                    if pieces == 1:
                        first_piece_ms = (time.perf_counter() - received) * 1000
                    await response.write(piece_frame(piece))
            except MeshragError as exc:
                log.warning("generation for %s failed after %d pieces: %s", request.remote, pieces, exc.message)
                await response.write(error_frame(exc))
            else:
                await response.write(end_frame(pieces, first_piece_ms, (time.perf_counter() - received) * 1000))
            await response.write_eof()
            return response
        finally:
            await stream.aclose()
