"""Public HTTP API: /v1/documents, /v1/search, /v1/ask, /v1/cluster, health, metrics.

Handlers only translate: decode and validate the body (api/schema.py), call
the pipeline, encode the answer. They never block the loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Any, Callable, Protocol, TypeVar

from aiohttp import web

from meshrag.api.errors import json_response
from meshrag.api import openapi
from meshrag.api.schema import parse_ask, parse_doc_id, parse_node_ref, parse_search, parse_upsert
from meshrag.config import Config
from meshrag.cluster.rpc import OFFLOAD_BYTES
from meshrag.cluster.service import ClusterService
from meshrag.cluster.writes import CONSISTENCY_LEVELS
from meshrag.errors import MeshragError, NotServedHere, PayloadTooLarge, Unavailable, UnsupportedMediaType, ValidationError
from meshrag.generation.base import StreamReport
from meshrag.generation.service import GenerationService
from meshrag.observability import Metrics, Stopwatch
from meshrag.rag.pipeline import RagPipeline
from meshrag.rag.prompt import Passage
from meshrag.store.types import Hit, StoredDocument
from meshrag.wire import JSON, MSGPACK_TYPES, decode_body, dumps_json

log = logging.getLogger(__name__)
T = TypeVar("T")


class NodeView(Protocol):
    """What the API needs from the running node (node.py provides it)."""

    config: Config
    metrics: Metrics
    pipeline: RagPipeline | None

    def readiness(self) -> dict[str, bool]: ...

    cluster: ClusterService | None
    generation: GenerationService | None

    async def cluster_view(self) -> dict[str, Any]: ...

    def embedding_dim(self) -> int: ...


def _require_storage_role(node: NodeView) -> None:
    """421, not 503: an embedder- or generator-only node will never serve this, so retrying is pointless."""
    if "storage" not in node.config.node.roles:
        roles = ",".join(node.config.node.roles)
        raise NotServedHere(f"this node holds no data (roles {roles}); send documents, searches, questions and ring changes to a storage node")


def _pipeline(node: NodeView) -> RagPipeline:
    _require_storage_role(node)
    if node.pipeline is None:
        waiting = [name for name, ok in node.readiness().items() if not ok]
        raise Unavailable(f"node is starting; still loading: {', '.join(waiting)}", retry_after_s=2)
    return node.pipeline


def _cluster(node: NodeView) -> ClusterService:
    _require_storage_role(node)
    if node.cluster is None:
        raise Unavailable("cluster storage is still starting", retry_after_s=2)
    return node.cluster


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ValidationError(f"{name} must be true or false", field=name)
    return value in ("true", "1")


def _consistency(request: web.Request, default: str) -> str:
    consistency = request.query.get("consistency", default)
    if consistency not in CONSISTENCY_LEVELS:
        raise ValidationError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}", field="consistency")
    return consistency


async def read_body(request: web.Request, max_bytes: int, parse: Callable[[Any], T], executor: Executor | None = None) -> T:
    """The request body decoded and validated by ``parse``; a large one in ``executor``: decoding
    and checking a multi-MiB body takes tens of milliseconds, and gossip shares the event loop."""
    content_type = request.content_type or JSON
    if content_type != JSON and content_type not in MSGPACK_TYPES:
        raise UnsupportedMediaType(f"Content-Type {content_type!r}; send application/json or application/msgpack", field="body")
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"body of {request.content_length} bytes exceeds the limit of {max_bytes}", field="body")
    data = await request.read()
    if len(data) > max_bytes:  # a chunked body announces no length
        raise PayloadTooLarge(f"body of {len(data)} bytes exceeds the limit of {max_bytes}", field="body")

    def decode_and_parse() -> T:
        return parse(decode_body(data, content_type))

    if executor is None or len(data) < OFFLOAD_BYTES:
        return decode_and_parse()
    return await asyncio.get_running_loop().run_in_executor(executor, decode_and_parse)


def hit_dict(hit: Hit) -> dict[str, Any]:
    return {"chunk_id": hit.chunk_id, "doc_id": hit.doc_id, "score": round(float(hit.score), 6), "text": hit.text, "metadata": hit.metadata}


def document_dict(doc: StoredDocument) -> dict[str, Any]:
    chunks = [{"chunk_id": c.chunk_id, "seq": c.seq, "text": c.text, "start": c.start, "end": c.end} for c in doc.chunks]
    return {"id": doc.doc_id, "text": doc.text, "metadata": doc.metadata, "version": doc.version, "chunks": chunks}


def report_dict(report: StreamReport) -> dict[str, Any]:
    """Which generator answered, and every failover on the way (the client's ``failover`` note)."""
    return {
        "generator": report.generator, "generator_name": report.generator_name, "model": report.model, "attempts": report.attempts,
        "failover": [f.as_dict() for f in report.failovers], "retries": report.retries,
        "timings": report.timings,
    }


def source_dict(passage: Passage) -> dict[str, Any]:
    return {"n": passage.n, "doc_id": passage.doc_id, "chunk_id": passage.chunk_id, "score": round(float(passage.score), 6), "text": passage.text}


class PublicApi:
    def __init__(self, node: NodeView, executor: Executor | None = None) -> None:
        self._node = node
        self._executor = executor  # where large bodies are decoded and validated

    async def _body(self, request: web.Request, parse: Callable[[Any], T]) -> T:
        return await read_body(request, self._limits.max_body_bytes, parse, self._executor)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/documents", self.upsert),
            web.get("/v1/documents/{doc_id:.+}", self.get_document),
            web.delete("/v1/documents/{doc_id:.+}", self.delete_document),
            web.post("/v1/search", self.search),
            web.post("/v1/ask", self.ask),
            web.get("/v1/cluster", self.cluster),
            web.get("/v1/cluster/status", self.cluster_status),
            web.get("/v1/cluster/verify", self.cluster_verify),
            web.post("/v1/cluster/decommission", self.decommission),
            web.post("/v1/cluster/remove", self.remove),
            web.get("/health", self.health),
            web.get("/ready", self.ready),
            web.get("/metrics", self.metrics),
            web.get("/openapi.json", self.openapi),
        ]

    @property
    def _limits(self) -> Any:
        return self._node.config.api

    async def upsert(self, request: web.Request) -> web.Response:
        pipeline = _pipeline(self._node)
        dim = self._node.embedding_dim()
        parsed = await self._body(request, lambda body: parse_upsert(body, self._limits, dim))
        outcome = await pipeline.ingest(parsed.documents, parsed.consistency, parsed.session)
        return json_response(request, {
            "results": [{"id": r.doc_id, "status": r.status.value, "version": r.version} for r in outcome.results],
            "session": outcome.session,
        })

    async def get_document(self, request: web.Request) -> web.Response:
        """?consistency=one|quorum|all (default quorum): replicas read, newest wins, stale
        ones repaired; ?local=true: this node's own copy only; ?session=TOKEN: read your writes."""
        local = _flag(request, "local")
        consistency = _consistency(request, "quorum")
        doc_id = parse_doc_id(request.match_info["doc_id"])
        doc = await _pipeline(self._node).get(doc_id, request.query.get("session"), local, consistency)
        return json_response(request, document_dict(doc))

    async def delete_document(self, request: web.Request) -> web.Response:
        consistency = _consistency(request, "quorum")
        doc_id = parse_doc_id(request.match_info["doc_id"])
        outcome = await _pipeline(self._node).delete(doc_id, consistency, request.query.get("session"))
        [result] = outcome.results
        return json_response(request, {"id": result.doc_id, "status": result.status.value, "version": result.version, "session": outcome.session})

    async def decommission(self, request: web.Request) -> web.Response:
        """Stream this node's partitions to their next owners, then leave the ring."""
        return json_response(request, {"ring": _cluster(self._node).admin.decommission()})

    async def remove(self, request: web.Request) -> web.Response:
        """Take a dead node out of the ring; its partitions are re-replicated from the survivors."""
        node = await self._body(request, parse_node_ref)
        return json_response(request, {"ring": _cluster(self._node).admin.remove(node)})

    async def search(self, request: web.Request) -> web.Response:
        pipeline = _pipeline(self._node)
        dim = self._node.embedding_dim()
        parsed = await self._body(request, lambda body: parse_search(body, self._limits, dim))
        outcome = await pipeline.search(parsed)
        return json_response(request, {
            "hits": [hit_dict(h) for h in outcome.hits],
            "coverage": outcome.coverage,
            "missing_partitions": outcome.missing_partitions,
            "timings": outcome.timings,
        })

    async def ask(self, request: web.Request) -> web.StreamResponse:
        pipeline = _pipeline(self._node)
        parsed = await self._body(request, lambda body: parse_ask(body, self._limits, self._node.config.generation))
        watch = Stopwatch()
        passages, outcome = await pipeline.retrieve_for_ask(parsed)
        timings = dict(outcome.timings, retrieve_ms=watch.ms())
        report = StreamReport()
        stream = pipeline.generate(parsed.query, passages, parsed.max_tokens, self._node.config.generation.temperature, report)
        if parsed.stream:
            return await self._ask_stream(request, stream, passages, outcome.coverage, timings, watch, report)
        pieces: list[str] = []
        try:
            async for piece in stream:
                if not pieces:
                    timings["first_token_ms"] = watch.ms()
                pieces.append(piece)
        finally:
            await stream.aclose()
        timings.update(total_ms=watch.ms(), tokens=len(pieces))
        return json_response(request, {
            "answer": "".join(pieces).strip(),
            "sources": [source_dict(p) for p in passages],
            "coverage": outcome.coverage,
            "timings": timings,
            "generation": report_dict(report),
        })

    async def _ask_stream(
        self, request: web.Request, stream: Any, passages: list[Passage], coverage: float,
        timings: dict[str, Any], watch: Stopwatch, report: StreamReport,
    ) -> web.StreamResponse:
        """Server-sent events: sources, tokens, then done (or a typed error, never a bare end).

        The first piece is awaited before the response starts, so a cluster whose
        generators are all busy is still a plain 503 with Retry-After.
        """
        try:
            first = await anext(stream, None)
            timings["first_token_ms"] = watch.ms()
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            await _sse(response, "sources", {"sources": [source_dict(p) for p in passages], "coverage": coverage})
            tokens = await self._relay_tokens(response, first, stream, report)
        finally:
            await stream.aclose()
        if tokens is not None:
            timings.update(total_ms=watch.ms(), tokens=tokens)
            await _sse(response, "done", {"timings": timings, "coverage": coverage, "generation": report_dict(report)})
            await response.write_eof()
        return response

    async def _relay_tokens(self, response: web.StreamResponse, first: str | None, stream: Any, report: StreamReport) -> int | None:
        """Write token events; on a generation failure write a typed error event and return None."""
        tokens = 0
        try:
            if first is not None:
                tokens += 1
                await _sse(response, "token", {"text": first})
                async for piece in stream:
                    tokens += 1
                    await _sse(response, "token", {"text": piece})
        except MeshragError as exc:
            await _sse(response, "error", {"error": exc.to_dict(), "generation": report_dict(report)})
            await response.write_eof()
            return None
        return tokens

    async def cluster(self, request: web.Request) -> web.Response:
        return json_response(request, await self._node.cluster_view())

    async def cluster_status(self, request: web.Request) -> web.Response:
        """`meshrag status`: /v1/cluster's view of this node (its config left out) plus what every ring
        member reports: balance, replication, hints, transfers, reachability (cluster/inspection.py)."""
        inspector = _cluster(self._node).inspector
        view, whole = await asyncio.gather(self._node.cluster_view(), inspector.status())
        view.pop("config", None)  # the status scope need not see this node's settings
        return json_response(request, {**view, **whole})

    async def cluster_verify(self, request: web.Request) -> web.Response:
        """`meshrag verify`: every partition's replicas compared by repair digest (cluster/verify.py)."""
        return json_response(request, await _cluster(self._node).inspector.verify())

    async def health(self, request: web.Request) -> web.Response:
        return json_response(request, {"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        components = self._node.readiness()
        ready = all(components.values())
        return json_response(request, {"ready": ready, "components": components}, status=200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI document of this node's public API (api/openapi.py), with its limits."""
        dim = self._node.embedding_dim() if self._node.pipeline is not None else None
        return json_response(request, openapi.document(self._node.config, dim))

    async def metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._node.metrics.render())
        response.headers["Content-Type"] = self._node.metrics.content_type
        return response


async def _sse(response: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    await response.write(b"event: " + event.encode() + b"\ndata: " + dumps_json(data) + b"\n\n")
