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

import difflib
import functools
import json
import logging
import math
import secrets
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Awaitable, Callable, Mapping

from aiohttp import web

from meshrag.api.errors import json_response
from meshrag.api.public import NodeView, _pipeline, read_body, report_dict, source_dict
from meshrag.api.schema import _integer, _optional_filter, _quoted, _require_object, _session, _type_name
from meshrag.config import ApiConfig, GenerationConfig
from meshrag.errors import MeshragError, NotFound, Unavailable, ValidationError
from meshrag.generation.base import GenerationRequest, GeneratorInfo, StreamReport
from meshrag.observability import Stopwatch
from meshrag.rag.prompt import Passage, build_messages, cited_numbers
from meshrag.rag.requests import AskRequest
from meshrag.store.filters import Filter
from meshrag.wire import check_text, dumps_json, printable

log = logging.getLogger(__name__)

RETRIEVAL_HEADER = "X-Meshrag-Retrieval"
MAX_MESSAGES = 512
MAX_QUERY_CHARS = 8192  # the retrieval query, as /v1/ask's query
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
# Roles a message may have; "developer" is OpenAI's newer name for "system" (templates know "system").
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Keys a message may carry besides role and content, with the values that mean "not used":
# a message echoed back from a response (message.model_dump()) carries them as nulls.
_MESSAGE_INERT = {"name": None, "refusal": None, "annotations": None, "audio": None, "tool_calls": None, "function_call": None}
# Chars per token of the prompt estimate (usage.prompt_tokens): English text under
# common tokenizers; flagged as an estimate in the response's meshrag.usage.
CHARS_PER_TOKEN = 4


class ModelNotFound(NotFound):
    code = "model_not_found"


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ChatRequest:
    """A validated /v1/chat/completions body."""

    model: str | None  # None: not given
    messages: list[dict[str, str]]  # role (system, user, assistant) and text content
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with usage
    max_tokens: int  # clamped to generation.max_tokens
    max_tokens_requested: int | None
    temperature: float
    stop: tuple[str, ...]
    retrieval: bool | None  # None: not in the body (the header, else on)
    k: int
    filter: Filter | None
    session: str | None
    query_index: int  # the last user message, -1 when there is none


def _shown(value: Any) -> str:
    """A client's value in a message: numbers as they are, strings cut short, else the type."""
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)[:32] if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return _quoted(value)


def _not_supported(what: str) -> Callable[[Any, str], None]:
    """A field accepted only with a value that asks for nothing this API cannot do."""
    def check(value: Any, path: str) -> None:
        if value is None or value is False or value == [] or value == {} or (value == 0 and not isinstance(value, bool)):
            return
        raise ValidationError(f"{path}: {what}", field=path)
    return check


def _kind(*types: type, low: float | None = None, high: float | None = None) -> Callable[[Any, str], None]:
    """An ignored field, checked for its type (and range) so that garbage is still named."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object"}
    expected = "a number" if float in types else names[types[0]]

    def check(value: Any, path: str) -> None:
        if value is None:
            return
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ValidationError(f"{path} must be {expected}, got {_type_name(value)}", field=path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
                raise ValidationError(f"{path} = {value} is out of range {low}..{high}", field=path)
    return check


def _n(value: Any, path: str) -> None:
    if value is None or (value == 1 and not isinstance(value, bool)):
        return
    raise ValidationError(f"{path} = {_shown(value)}: this API returns one choice (n = 1); send n separate requests", field=path)


def _tool_choice(value: Any, path: str) -> None:
    if value not in (None, "none", "auto"):
        raise ValidationError(f"{path}: this API calls no tools; only none or auto is accepted", field=path)


def _response_format(value: Any, path: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") != "text":
        raise ValidationError(f"{path}: only {{\"type\": \"text\"}} is supported (no JSON mode or schemas)", field=path)


def _modalities(value: Any, path: str) -> None:
    if value is not None and value != ["text"]:
        raise ValidationError(f"{path}: only [\"text\"] is supported", field=path)


# OpenAI fields the API accepts without acting on them (sampling hints, labels, storage);
# values that would need something it cannot do are refused, naming the field.
_IGNORED_FIELDS: dict[str, Callable[[Any, str], None]] = {
    "n": _n,
    "top_p": _kind(int, float, low=0, high=1),
    "frequency_penalty": _kind(int, float, low=-2, high=2),
    "presence_penalty": _kind(int, float, low=-2, high=2),
    "seed": _kind(int),
    "user": _kind(str),
    "metadata": _kind(dict),
    "store": _kind(bool),
    "service_tier": _kind(str),
    "reasoning_effort": _kind(str),
    "verbosity": _kind(str),
    "prompt_cache_key": _kind(str),
    "safety_identifier": _kind(str),
    "parallel_tool_calls": _kind(bool),
    "tool_choice": _tool_choice,
    "function_call": _tool_choice,
    "response_format": _response_format,
    "modalities": _modalities,
    "tools": _not_supported("this API calls no tools; send tools = null or []"),
    "functions": _not_supported("this API calls no functions; send functions = null or []"),
    "logprobs": _not_supported("log probabilities are not available"),
    "top_logprobs": _not_supported("log probabilities are not available"),
    "logit_bias": _not_supported("logit_bias is not supported; send null or {}"),
    "audio": _not_supported("audio output is not supported"),
    "prediction": _not_supported("predicted outputs are not supported"),
    "web_search_options": _not_supported("web search is not supported; retrieval from the cluster is on by default"),
}
_HONOURED_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "stop",
    "retrieval", "k", "filter", "session",
})
_ALLOWED_FIELDS = _HONOURED_FIELDS | frozenset(_IGNORED_FIELDS)


def parse_chat(body: Any, limits: ApiConfig, generation: GenerationConfig) -> ChatRequest:
    """Validate a chat completions body; every rejection names the field at fault."""
    obj = _require_object(body, "body")
    for key, value in obj.items():
        if key not in _ALLOWED_FIELDS:
            close = difflib.get_close_matches(str(key), sorted(_ALLOWED_FIELDS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValidationError(
                f"unknown field {printable(key)!r}; {hint}this API takes the OpenAI chat fields and retrieval, k, filter, session",
                field=printable(key),
            )
        check = _IGNORED_FIELDS.get(key)
        if check is not None:
            check(value, key)
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValidationError(f"model must be a model name (GET /v1/models lists them), got {_shown(model)}", field="model")
    messages = _messages(obj.get("messages"))
    stream = _flag(obj, "stream", False)
    include_usage = False
    options = obj.get("stream_options")
    if options is not None:
        options = _require_object(options, "stream_options")
        for key in options:
            if key not in ("include_usage", "include_obfuscation"):
                raise ValidationError(f"unknown field {printable(key)!r}; allowed: include_usage, include_obfuscation", field=f"stream_options.{printable(key)}")
        include_usage = _flag(options, "include_usage", False, "stream_options.include_usage")
        _flag(options, "include_obfuscation", False, "stream_options.include_obfuscation")  # nothing to obfuscate against
    requested = _max_tokens(obj)
    retrieval = obj.get("retrieval")
    if retrieval is not None and not isinstance(retrieval, bool):
        raise ValidationError(f"retrieval must be true or false, got {_type_name(retrieval)}", field="retrieval")
    query_index = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=include_usage and stream,
        max_tokens=min(requested, generation.max_tokens) if requested is not None else generation.max_tokens,
        max_tokens_requested=requested,
        temperature=_temperature(obj, generation.temperature),
        stop=_stop(obj.get("stop")),
        retrieval=retrieval,
        k=_integer(obj, "k", "k", limits.ask_default_k, 1, min(limits.max_k, 100)),
        filter=_optional_filter(obj),
        session=_session(obj),
        query_index=query_index,
    )


def _flag(obj: Mapping[str, Any], key: str, default: bool, path: str | None = None) -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValidationError(f"{path or key} must be true or false, got {_type_name(value)}", field=path or key)
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if value is None:
        raise ValidationError("messages is required: an array of {role, content}", field="messages")
    if not isinstance(value, list):
        raise ValidationError(f"messages must be an array, got {_type_name(value)}", field="messages")
    if not 1 <= len(value) <= MAX_MESSAGES:
        raise ValidationError(f"messages has {len(value)} entries; 1..{MAX_MESSAGES} allowed", field="messages")
    return [_message(item, f"messages[{i}]") for i, item in enumerate(value)]


def _message(value: Any, path: str) -> dict[str, str]:
    obj = _require_object(value, path)
    role = obj.get("role")
    if role in ("tool", "function"):
        raise ValidationError(f"{path}.role = {role!r}: this API calls no tools, so it takes no tool results", field=f"{path}.role")
    if not isinstance(role, str) or role not in ROLES:
        raise ValidationError(f"{path}.role = {_shown(role)}; allowed: {', '.join(ROLES)}", field=f"{path}.role")
    for key, item in obj.items():
        if key in ("role", "content"):
            continue
        if key not in _MESSAGE_INERT:
            raise ValidationError(f"unknown field {printable(key)!r}; a message has role, content and name", field=f"{path}.{printable(key)}")
        if key == "name":
            if item is not None and not isinstance(item, str):
                raise ValidationError(f"{path}.name must be a string, got {_type_name(item)}", field=f"{path}.name")
        elif item not in (None, [], {}):
            raise ValidationError(f"{path}.{key}: not supported (this API calls no tools and answers in text)", field=f"{path}.{key}")
    return {"role": ROLES[role], "content": _content(obj.get("content"), f"{path}.content")}


def _content(value: Any, path: str) -> str:
    """A string, or OpenAI's content parts of type text (joined by newlines)."""
    if value is None:
        raise ValidationError(f"{path} is required", field=path)
    if isinstance(value, str):
        check_text(value, path)
        return value
    if not isinstance(value, list):
        raise ValidationError(f"{path} must be a string or an array of text parts, got {_type_name(value)}", field=path)
    texts = []
    for index, part in enumerate(value):
        part_path = f"{path}[{index}]"
        part = _require_object(part, part_path)
        if part.get("type") != "text":
            raise ValidationError(f"{part_path}.type = {_shown(part.get('type'))}: only text parts are supported", field=f"{part_path}.type")
        text = part.get("text")
        if not isinstance(text, str):
            raise ValidationError(f"{part_path}.text must be a string, got {_type_name(text)}", field=f"{part_path}.text")
        check_text(text, f"{part_path}.text")
        texts.append(text)
    return "\n".join(texts)


def _max_tokens(obj: Mapping[str, Any]) -> int | None:
    """max_completion_tokens (OpenAI's current name) or max_tokens; both must agree."""
    values = {}
    for key in ("max_completion_tokens", "max_tokens"):
        if obj.get(key) is not None:
            values[key] = _integer(obj, key, key, 0, 1, 1 << 31)
    if len(set(values.values())) > 1:
        raise ValidationError("max_tokens and max_completion_tokens differ; send one of them", field="max_tokens")
    return next(iter(values.values()), None)


def _temperature(obj: Mapping[str, Any], default: float) -> float:
    value = obj.get("temperature")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 2:
        raise ValidationError(f"temperature must be a number in 0..2, got {_shown(value)}", field="temperature")
    return float(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_STOP_SEQUENCES:
        raise ValidationError(f"stop must be a string or an array of at most {MAX_STOP_SEQUENCES} strings", field="stop")
    for index, item in enumerate(items):
        path = "stop" if isinstance(value, str) else f"stop[{index}]"
        if not isinstance(item, str) or not item or len(item) > MAX_STOP_CHARS:
            raise ValidationError(f"{path} must be a non-empty string of at most {MAX_STOP_CHARS} characters", field=path)
        check_text(item, path)
    return tuple(items)


def retrieval_header(value: str | None) -> bool | None:
    """X-Meshrag-Retrieval: on/off (true/false, 1/0); None when absent."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("on", "true", "1", "yes"):
        return True
    if lowered in ("off", "false", "0", "no"):
        return False
    raise ValidationError(f"{RETRIEVAL_HEADER} must be on or off, got {value[:32]!r}", field=RETRIEVAL_HEADER)


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
