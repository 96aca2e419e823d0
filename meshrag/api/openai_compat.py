"""OpenAI-compatible API: /v1/models and /v1/chat/completions, answers grounded in the cluster.

The official ``openai`` client works against any node unchanged. A chat
completion retrieves from the cluster for the last user message (hybrid
search, on by default), puts the numbered passages into that message (the
prompt /v1/ask uses, rag/prompt.py) while earlier turns stay as they are, and
streams the answer through the cluster's generators (the router fails over
between them). The sources travel beside ``choices``: ``sources``,
``citations`` (the passages the answer cites) and ``meshrag`` (coverage,
timings, which generator answered and any failover) in the response, or in
the final chunk of a stream.

MeshRAG's own request fields arrive as top-level body fields (the openai
client's ``extra_body``): ``retrieval`` (false turns it off; without it in the
body the header ``X-Meshrag-Retrieval: on|off`` decides), ``k``, ``filter`` (the
/v1/search syntax) and ``session``. ``max_tokens`` above generation.max_tokens is
clamped to it (finish_reason "length" says when it ran out), as is usual for a
proxy whose clients send a fixed budget. ``model``: with one model in the cluster
any name means it; with several, it must be one of them (else 404 model_not_found). OpenAI fields that only tune sampling or label the request
(top_p, seed, user, ...) are accepted and ignored; a value this API cannot
honour (n > 1, tools, logprobs, JSON output, audio) is a 400 naming the field,
and so is an unknown field (a misspelt ``retreival`` must not silently ask
the cluster).

Errors keep the API's shape ``{"error": {"code", "message", "field"}}`` and
add OpenAI's ``type`` and ``param`` (= field), which OpenAI clients read.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Awaitable, Callable

from aiohttp import web

from meshrag.api.errors import json_response
from meshrag.api.public import NodeView, _pipeline, read_body, report_dict, source_dict
from meshrag.api.openai_schema import CHARS_PER_TOKEN, ChatRequest, MAX_QUERY_CHARS, ModelNotFound, RETRIEVAL_HEADER, parse_chat, retrieval_header
from meshrag.errors import MeshragError, Unavailable, ValidationError
from meshrag.generation.base import GenerationRequest, GeneratorInfo, StreamReport
from meshrag.observability import Stopwatch
from meshrag.rag.prompt import Passage, build_messages, cited_numbers
from meshrag.rag.requests import AskRequest
from meshrag.wire import dumps_json

log = logging.getLogger(__name__)

def rag_messages(messages: list[dict[str, str]], index: int, passages: list[Passage]) -> list[dict[str, str]]:
    """``messages`` with message ``index`` (the question) replaced by the RAG prompt over ``passages``."""
    [prompt] = build_messages(messages[index]["content"], passages)
    return [dict(m, content=prompt["content"]) if i == index else m for i, m in enumerate(messages)]


def citations(answer: str, passages: list[Passage]) -> list[dict[str, Any]]:
    """The passages the answer cites ([2], [1, 3]), in order of first citation; numbers
    that name no passage are left out."""
    by_n = {p.n: p for p in passages}
    return [{"n": n, "doc_id": by_n[n].doc_id, "chunk_id": by_n[n].chunk_id} for n in cited_numbers(answer) if n in by_n]


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    return sum(math.ceil(len(m["content"]) / CHARS_PER_TOKEN) + 1 for m in messages)


def _error_type(status: int) -> str:
    return {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
            415: "invalid_request_error", 503: "service_unavailable"}.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_payload(exc: MeshragError) -> dict[str, Any]:
    """The API's error object plus OpenAI's type and param (clients read exc.param)."""
    return {"error": dict(exc.to_dict(), type=_error_type(exc.status), param=exc.field)}


def _openai_errors(handler: Callable[[Any, web.Request], Awaitable[web.StreamResponse]]) -> Callable[[Any, web.Request], Awaitable[web.StreamResponse]]:
    @functools.wraps(handler)
    async def wrapped(self: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(self, request)
        except MeshragError as exc:
            response = json_response(request, error_payload(exc), status=exc.status)
            if isinstance(exc, Unavailable):
                response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
            return response
    return wrapped


# ---------------------------------------------------------------- the API


class OpenAICompatApi:
    def __init__(self, node: NodeView, executor: Executor | None = None) -> None:
        self._node = node
        self._executor = executor  # where large bodies are decoded and validated
        self._created = int(time.time())  # models have no creation date here: the API's start

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/models", self.models),
            web.get("/v1/models/{model:.+}", self.model),
            web.post("/v1/chat/completions", self.chat_completions),
        ]

    def _served(self) -> dict[str, list[GeneratorInfo]]:
        generation = getattr(self._node, "generation", None)
        return generation.models() if generation is not None else {}

    def _model_dict(self, model: str, generators: list[GeneratorInfo]) -> dict[str, Any]:
        return {
            "id": model, "object": "model", "created": self._created, "owned_by": "meshrag",
            "generators": len(generators),
            "backends": sorted({g.backend for g in generators}),
            "context_tokens": min((g.context_tokens for g in generators), default=0),
        }

    @_openai_errors
    async def models(self, request: web.Request) -> web.Response:
        """The generator models live in the cluster, each with how many generators serve it."""
        served = self._served()
        return json_response(request, {"object": "list", "data": [self._model_dict(m, served[m]) for m in sorted(served)]})

    @_openai_errors
    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        served = self._served()
        if name not in served:
            raise ModelNotFound(f"model {name[:128]!r} is not served in this cluster; served: {', '.join(sorted(served)) or 'none'}", field="model")
        return json_response(request, self._model_dict(name, served[name]))

    def _resolve_model(self, requested: str | None) -> str:
        """The model to ask for: the requested one when served; with a single model in the
        cluster any name (OpenAI clients always send one) means that model."""
        served = self._served()
        if not served:
            raise Unavailable("no generator is live in the cluster yet", retry_after_s=2)
        if requested in served:
            return requested
        if len(served) == 1:
            return next(iter(served))
        if requested is None:
            return ""  # any generator, whatever it serves
        raise ModelNotFound(
            f"model {requested[:128]!r} is not served in this cluster; served: {', '.join(sorted(served))}", field="model",
        )

    @_openai_errors
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        pipeline = _pipeline(self._node)
        limits, generation = self._node.config.api, self._node.config.generation
        parsed = await read_body(request, limits.max_body_bytes, lambda body: parse_chat(body, limits, generation), self._executor)
        retrieval = parsed.retrieval
        if retrieval is None:
            header = retrieval_header(request.headers.get(RETRIEVAL_HEADER))
            retrieval = True if header is None else header
        model = self._resolve_model(parsed.model)
        watch = Stopwatch()
        messages, passages = parsed.messages, []
        meta: dict[str, Any] = {"retrieval": retrieval, "coverage": None, "max_tokens": parsed.max_tokens, "timings": {}}
        if retrieval:
            query = _retrieval_query(parsed)
            ask = AskRequest(query=query, k=parsed.k, filter=parsed.filter, stream=parsed.stream, max_tokens=parsed.max_tokens, session=parsed.session)
            passages, outcome = await pipeline.retrieve_for_ask(ask)
            messages = rag_messages(messages, parsed.query_index, passages)
            meta.update(coverage=outcome.coverage, timings=dict(outcome.timings, retrieve_ms=watch.ms()))
        report = StreamReport()
        gen_request = GenerationRequest(
            messages=messages, max_tokens=parsed.max_tokens, temperature=parsed.temperature, stop=parsed.stop, model=model,
        )
        answer = _Answer(
            id="chatcmpl-" + secrets.token_hex(12), created=int(time.time()), model=model, passages=passages,
            prompt_tokens=estimate_tokens(messages), max_tokens=parsed.max_tokens, meta=meta, report=report, watch=watch,
        )
        stream = pipeline.generate_messages(gen_request, report)
        try:
            if parsed.stream:
                return await self._stream(request, stream, answer, parsed.include_usage)
            pieces: list[str] = []
            async for piece in stream:
                if not pieces:
                    meta["timings"]["first_token_ms"] = watch.ms()
                pieces.append(piece)
        finally:
            await stream.aclose()
        text = "".join(pieces).strip()
        return json_response(request, answer.completion(text, len(pieces)))

    async def _stream(self, request: web.Request, stream: AsyncGenerator[str, None], answer: "_Answer", include_usage: bool) -> web.StreamResponse:
        """chat.completion.chunk events: the role, the content deltas, a final chunk with the
        finish reason and the sources, then [DONE]; a failure no generator could take over
        ends with an error chunk (never a bare end).

        The first piece is awaited before the response starts, so a cluster whose
        generators are all busy is still a plain 503 with Retry-After."""
        first = await anext(stream, None)
        answer.meta["timings"]["first_token_ms"] = answer.watch.ms()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await _data(response, answer.chunk({"role": "assistant", "content": ""}, usage=include_usage))
        text, count, error = "", 0, None
        try:
            piece: str | None = first
            while piece is not None:
                count += 1
                if not text:
                    piece = piece.lstrip()  # as the whole answer is stripped when not streamed
                if piece:
                    text += piece
                    await _data(response, answer.chunk({"content": piece}, usage=include_usage))
                piece = await anext(stream, None)
        except ConnectionError:
            raise  # the client went away: nobody to tell (the caller closes the generation)
        except MeshragError as exc:
            error = error_payload(exc)
        except Exception:  # noqa: BLE001 - the stream has started: a typed error chunk, not a bare end
            log.exception("chat completion stream failed")
            error = error_payload(MeshragError("internal error while streaming the answer"))
        if error is not None:
            error["meshrag"] = answer.meta_dict()
            await _data(response, error)
        else:
            final = answer.chunk({}, finish_reason=answer.finish_reason(count), usage=include_usage)
            final.update(answer.extras(text, count))
            await _data(response, final)
            if include_usage:
                await _data(response, dict(answer.chunk(None), choices=[], usage=answer.usage(count)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _retrieval_query(parsed: ChatRequest) -> str:
    if parsed.query_index < 0:
        raise ValidationError(
            "retrieval needs a user message to search for; add one, or turn retrieval off (retrieval: false)", field="messages",
        )
    query = parsed.messages[parsed.query_index]["content"]
    path = f"messages[{parsed.query_index}].content"
    if not query.strip():
        raise ValidationError(f"{path} is empty: retrieval has nothing to search for", field=path)
    if len(query) > MAX_QUERY_CHARS:
        raise ValidationError(
            f"{path} has {len(query)} characters; a retrieval query may have {MAX_QUERY_CHARS} (or turn retrieval off)", field=path,
        )
    return query


@dataclass
class _Answer:
    """One completion's identity and what it reports beside the text."""

    id: str
    created: int
    model: str
    passages: list[Passage]
    prompt_tokens: int  # estimated
    max_tokens: int
    meta: dict[str, Any]
    report: StreamReport
    watch: Stopwatch

    def _model(self) -> str:
        return self.report.model or self.model

    def finish_reason(self, pieces: int) -> str:
        return "length" if pieces >= self.max_tokens else "stop"

    def usage(self, pieces: int) -> dict[str, int]:
        """completion_tokens counts the pieces streamed (a piece is a token for the
        bundled backends); prompt_tokens is an estimate (meshrag.usage says so)."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": pieces, "total_tokens": self.prompt_tokens + pieces}

    def meta_dict(self) -> dict[str, Any]:
        return dict(self.meta, generation=report_dict(self.report))

    def extras(self, text: str, pieces: int) -> dict[str, Any]:
        """The fields beside choices: sources, citations, meshrag."""
        self.meta["timings"].update(total_ms=self.watch.ms(), tokens=pieces)
        meta = self.meta_dict()
        meta["usage"] = {"prompt_tokens_estimated": True, "chars_per_token": CHARS_PER_TOKEN}
        return {"sources": [source_dict(p) for p in self.passages], "citations": citations(text, self.passages), "meshrag": meta}

    def completion(self, text: str, pieces: int) -> dict[str, Any]:
        body = {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self._model(),
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None, "finish_reason": self.finish_reason(pieces),
            }],
            "usage": self.usage(pieces),
        }
        body.update(self.extras(text, pieces))
        return body

    def chunk(self, delta: dict[str, Any] | None, finish_reason: str | None = None, usage: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self._model()}
        body["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        if usage:
            body["usage"] = None  # OpenAI: null on every chunk but the last when include_usage
        return body


async def _data(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + dumps_json(payload) + b"\n\n")
