"""api/openai_compat.py: the official openai client, unchanged, against MeshRAG.

Three layers: the body parser (pure), the routes in process over a scripted
pipeline (failures, busy generators, several models, disconnects: what a
real node cannot be made to do on cue), and a real node with the bundled
model (slow), where the client gets grounded answers with their sources.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Iterator

import aiohttp
import openai
import pytest
from aiohttp import web

from meshrag.api.errors import error_middleware
from meshrag.api.openai_compat import OpenAICompatApi, citations, rag_messages
from meshrag.api.openai_schema import parse_chat, retrieval_header
from meshrag.config import ApiConfig, Config, GenerationConfig
from meshrag.errors import GeneratorBusy, ValidationError
from meshrag.generation.base import GenerationFailed, GenerationRequest, GeneratorInfo, StreamReport
from meshrag.localnode import LocalNode, free_port
from meshrag.rag.prompt import INSTRUCTIONS, Passage
from meshrag.rag.requests import AskRequest

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "corpus"
LIMITS = ApiConfig(max_k=50, ask_default_k=3)
GENERATION = GenerationConfig(max_tokens=64, temperature=0.0)
USER = [{"role": "user", "content": "At what wind speed must the dome be closed?"}]


# ---------------------------------------------------------------- the parser


def _error(body: Any) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        parse_chat(body, LIMITS, GENERATION)
    return err.value


def test_a_plain_body_takes_the_defaults() -> None:
    parsed = parse_chat({"model": "m", "messages": USER}, LIMITS, GENERATION)
    assert parsed.messages == USER and parsed.model == "m" and not parsed.stream
    assert parsed.max_tokens == 64 and parsed.temperature == 0.0 and parsed.stop == ()
    assert parsed.retrieval is None and parsed.k == 3 and parsed.filter is None and parsed.query_index == 0


def test_openai_fields_are_honoured_or_tolerated() -> None:
    parsed = parse_chat({
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "part"}], "name": "ann"},
            {"role": "assistant", "content": "ok", "refusal": None, "tool_calls": None, "annotations": None},
            {"role": "user", "content": "the question"},
        ],
        "max_completion_tokens": 16, "temperature": 0.7, "stop": ["\n\n"], "top_p": 0.9, "n": 1, "seed": 7,
        "user": "u1", "presence_penalty": 0.5, "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
        "logprobs": False, "retrieval": True, "k": 5, "filter": {"topic": "dome"}, "session": "tok",
    }, LIMITS, GENERATION)
    assert [m["role"] for m in parsed.messages] == ["system", "user", "assistant", "user"]
    assert parsed.messages[1]["content"] == "first\npart"
    assert parsed.stream and parsed.include_usage and parsed.max_tokens == 16 and parsed.temperature == 0.7
    assert parsed.stop == ("\n\n",) and parsed.k == 5 and parsed.filter is not None and parsed.session == "tok"
    assert parsed.query_index == 3


def test_max_tokens_beyond_the_node_limit_is_clamped() -> None:
    parsed = parse_chat({"messages": USER, "max_tokens": 4096}, LIMITS, GENERATION)
    assert parsed.max_tokens == 64 and parsed.max_tokens_requested == 4096


@pytest.mark.parametrize(
    "body,field",
    [
        ([], "body"),
        ({"model": "m"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content"),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "user", "content": "hi", "colour": "red"}]}, "messages[0].colour"),
        ({"messages": USER, "n": 2}, "n"),
        ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
        ({"messages": USER, "logprobs": True}, "logprobs"),
        ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": USER, "logit_bias": {"50256": -100}}, "logit_bias"),
        ({"messages": USER, "top_p": 3}, "top_p"),
        ({"messages": USER, "seed": "x"}, "seed"),
        ({"messages": USER, "model": 4}, "model"),
        ({"messages": USER, "stream": "yes"}, "stream"),
        ({"messages": USER, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"messages": USER, "stream_options": {"extra": True}}, "stream_options.extra"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "max_completion_tokens": 2.5}, "max_completion_tokens"),
        ({"messages": USER, "max_tokens": 8, "max_completion_tokens": 9}, "max_tokens"),
        ({"messages": USER, "temperature": 2.5}, "temperature"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": USER, "stop": [""]}, "stop[0]"),
        ({"messages": USER, "retrieval": "off"}, "retrieval"),
        ({"messages": USER, "retreival": False}, "retreival"),
        ({"messages": USER, "k": 0}, "k"),
        ({"messages": USER, "filter": {"year": {"$gt": "x", "$bogus": 1}}}, "filter.year.$bogus"),
        ({"messages": USER, "session": 5}, "session"),
    ],
)
def test_each_rejection_names_its_field(body: Any, field: str) -> None:
    assert _error(body).field == field


def test_messages_show_the_value_and_suggest_the_field_meant() -> None:
    assert "did you mean 'retrieval'?" in _error({"messages": USER, "retreival": False}).message
    assert "n = 2" in _error({"messages": USER, "n": 2}).message
    assert "got 2.5" in _error({"messages": USER, "temperature": 2.5}).message


def test_the_retrieval_header() -> None:
    assert retrieval_header(None) is None
    assert retrieval_header("off") is False and retrieval_header("FALSE") is False and retrieval_header("0") is False
    assert retrieval_header("on") is True and retrieval_header(" true ") is True
    with pytest.raises(ValidationError) as err:
        retrieval_header("maybe")
    assert err.value.field == "X-Meshrag-Retrieval"


PASSAGES = [
    Passage(n=1, doc_id="dome", chunk_id="dome#1.0", text="The dome closes when the wind exceeds 50 km/h.", score=0.9),
    Passage(n=2, doc_id="mirror", chunk_id="mirror#1.0", text="The mirror is re-aluminised every two years.", score=0.5),
]


def test_the_last_user_message_becomes_the_rag_prompt_and_earlier_turns_stay() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "When does the dome close?"},
    ]
    out = rag_messages(messages, 3, PASSAGES)
    assert out[:3] == messages[:3]
    assert out[3]["role"] == "user" and out[3]["content"].startswith(INSTRUCTIONS)
    assert "[1] (doc dome)" in out[3]["content"] and out[3]["content"].endswith("Question: When does the dome close?")
    assert messages[3]["content"] == "When does the dome close?"  # the caller's list is not changed


def test_citations_name_the_cited_passages_only() -> None:
    assert citations("Wind over 50 km/h [1]; see also [2, 1] and [7].", PASSAGES) == [
        {"n": 1, "doc_id": "dome", "chunk_id": "dome#1.0"}, {"n": 2, "doc_id": "mirror", "chunk_id": "mirror#1.0"},
    ]
    assert citations("no citation", PASSAGES) == []


# ---------------------------------------------------------------- the routes over a scripted pipeline


def _generator(model: str, node: str) -> GeneratorInfo:
    return GeneratorInfo(node_id=node, name=node, address="127.0.0.1:1", backend="llama.cpp", model=model,
                         context_tokens=4096, capacity=2, load=0, continues=True)


class ScriptedPipeline:
    """Retrieval returns PASSAGES; generation plays ``script`` (text pieces, exceptions, delays)."""

    def __init__(self) -> None:
        self.script: list[Any] = ["The dome", " closes", " above 50 km/h [1]."]
        self.asks: list[AskRequest] = []
        self.requests: list[GenerationRequest] = []
        self.closed = asyncio.Event()

    async def retrieve_for_ask(self, ask: AskRequest) -> tuple[list[Passage], Any]:
        self.asks.append(ask)
        return PASSAGES[: ask.k], SimpleNamespace(coverage=1.0, timings={"search_ms": 1.5})

    async def generate_messages(self, request: GenerationRequest, report: StreamReport) -> AsyncIterator[str]:
        self.requests.append(request)
        report.generator, report.model, report.attempts = "gen-a", request.model or "model-a", 1
        try:
            for item in self.script:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, float):
                    await asyncio.sleep(item)
                    continue
                report.pieces += 1
                yield item
        finally:
            self.closed.set()


class FakeNode:
    def __init__(self, pipeline: ScriptedPipeline, models: dict[str, list[GeneratorInfo]]) -> None:
        self.config = Config(api=LIMITS, generation=GENERATION)
        self.metrics = None
        self.pipeline = pipeline
        self.generation = SimpleNamespace(models=lambda: models)

    def readiness(self) -> dict[str, bool]:
        return {"embedder": True}


@pytest.fixture
def pipeline() -> ScriptedPipeline:
    return ScriptedPipeline()


@pytest.fixture
def served() -> dict[str, list[GeneratorInfo]]:
    return {"model-a": [_generator("model-a", "gen-a"), _generator("model-a", "gen-b")]}


@pytest.fixture
async def base_url(pipeline: ScriptedPipeline, served: dict[str, list[GeneratorInfo]]) -> AsyncIterator[str]:
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(OpenAICompatApi(FakeNode(pipeline, served)).routes())
    runner = web.AppRunner(app, handler_cancellation=True)  # as node.py: a client that leaves cancels its handler
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _async_client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


async def _post(base_url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(base_url + "/v1/chat/completions", json=body, headers=headers or {}) as response:
            return response.status, await response.read(), response.headers


async def test_models_lists_each_model_with_its_generators(base_url: str) -> None:
    client = _async_client(base_url)
    page = await client.models.list()
    assert [m.id for m in page.data] == ["model-a"]
    model = page.data[0]
    assert model.object == "model" and model.owned_by == "meshrag" and isinstance(model.created, int)
    assert model.model_extra["generators"] == 2 and model.model_extra["backends"] == ["llama.cpp"]
    assert (await client.models.retrieve("model-a")).id == "model-a"
    with pytest.raises(openai.NotFoundError) as err:
        await client.models.retrieve("nope")
    assert err.value.body["code"] == "model_not_found" and err.value.body["field"] == "model"


async def test_a_completion_carries_sources_citations_and_the_generator(base_url: str, pipeline: ScriptedPipeline) -> None:
    completion = await _async_client(base_url).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "Be brief."}, *USER], max_tokens=32,  # type: ignore[list-item]
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "model-a"  # one model served: any name means it
    assert completion.choices[0].message.content == "The dome closes above 50 km/h [1]."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3
    extra = completion.model_extra
    assert [s["doc_id"] for s in extra["sources"]] == ["dome", "mirror"] and extra["sources"][0]["n"] == 1
    assert extra["citations"] == [{"n": 1, "doc_id": "dome", "chunk_id": "dome#1.0"}]
    assert extra["meshrag"]["generation"]["generator"] == "gen-a" and extra["meshrag"]["coverage"] == 1.0
    assert extra["meshrag"]["retrieval"] is True and extra["meshrag"]["timings"]["tokens"] == 3
    [request] = pipeline.requests
    assert request.model == "model-a" and request.max_tokens == 32
    assert request.messages[0] == {"role": "system", "content": "Be brief."}
    assert request.messages[1]["content"].startswith(INSTRUCTIONS)
    assert pipeline.asks[0].query == USER[0]["content"] and pipeline.asks[0].k == 3


async def test_finish_reason_is_length_when_the_budget_is_spent(base_url: str) -> None:
    completion = await _async_client(base_url).chat.completions.create(model="model-a", messages=USER, max_tokens=3)  # type: ignore[arg-type]
    assert completion.choices[0].finish_reason == "length"


async def test_retrieval_off_by_body_or_header_skips_the_search(base_url: str, pipeline: ScriptedPipeline) -> None:
    client = _async_client(base_url)
    by_body = await client.chat.completions.create(model="model-a", messages=USER, extra_body={"retrieval": False})  # type: ignore[arg-type]
    by_header = await client.chat.completions.create(model="model-a", messages=USER, extra_headers={"X-Meshrag-Retrieval": "off"})  # type: ignore[arg-type]
    for completion in (by_body, by_header):
        assert completion.model_extra["sources"] == [] and completion.model_extra["citations"] == []
        assert completion.model_extra["meshrag"]["retrieval"] is False
    assert pipeline.asks == []
    assert all(r.messages == USER for r in pipeline.requests)


async def test_a_stream_sends_role_deltas_then_sources_usage_and_done(base_url: str) -> None:
    stream = await _async_client(base_url).chat.completions.create(
        model="model-a", messages=USER, stream=True, stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The dome closes above 50 km/h [1]."
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason == "stop"
    assert [s["doc_id"] for s in final[0].model_extra["sources"]] == ["dome", "mirror"]
    assert final[0].model_extra["citations"][0]["doc_id"] == "dome"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1
    status, raw, _ = await _post(base_url, {"messages": USER, "stream": True})
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")


async def test_all_generators_busy_is_a_plain_503_before_the_stream_starts(base_url: str, pipeline: ScriptedPipeline) -> None:
    pipeline.script = [GeneratorBusy("every generator is busy", retry_after_s=3)]
    status, raw, headers = await _post(base_url, {"messages": USER, "stream": True})
    assert status == 503 and headers["Retry-After"] == "3"
    error = json.loads(raw)["error"]
    assert error["code"] == "generator_busy" and error["type"] == "service_unavailable"
    with pytest.raises(openai.APIStatusError) as err:
        await _async_client(base_url).chat.completions.create(model="model-a", messages=USER)  # type: ignore[arg-type]
    assert err.value.status_code == 503


async def test_a_failure_mid_stream_ends_with_an_error_chunk_then_done(base_url: str, pipeline: ScriptedPipeline) -> None:
    pipeline.script = ["The dome", GenerationFailed("generator gen-a died; no generator could continue", retryable=False)]
    status, raw, _ = await _post(base_url, {"messages": USER, "stream": True})
    events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error["error"]["code"] == "generation_failed" and error["meshrag"]["generation"]["generator"] == "gen-a"
    assert '"content":"The dome"' in events[1]
    stream = await _async_client(base_url).chat.completions.create(model="model-a", messages=USER, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError) as err:
        async for _ in stream:
            pass
    assert "no generator could continue" in err.value.message


async def test_a_client_that_leaves_mid_stream_closes_the_generation(base_url: str, pipeline: ScriptedPipeline) -> None:
    pipeline.script = ["The dome", *([0.05, " more"] * 200)]
    async with aiohttp.ClientSession() as session:
        async with session.post(base_url + "/v1/chat/completions", json={"messages": USER, "stream": True}) as response:
            async for line in response.content:
                if b'"content":"The dome"' in line:
                    break
    await asyncio.wait_for(pipeline.closed.wait(), 5)


@pytest.mark.parametrize("served", [{"model-a": [_generator("model-a", "gen-a")], "model-b": [_generator("model-b", "gen-b")]}])
async def test_with_several_models_the_model_must_be_served(base_url: str, pipeline: ScriptedPipeline) -> None:
    client = _async_client(base_url)
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    assert err.value.body["code"] == "model_not_found" and err.value.body["field"] == "model"
    assert "model-a, model-b" in err.value.body["message"]
    completion = await client.chat.completions.create(model="model-b", messages=USER)  # type: ignore[arg-type]
    assert completion.model == "model-b" and pipeline.requests[-1].model == "model-b"
    assert [m.id for m in (await client.models.list()).data] == ["model-a", "model-b"]


@pytest.mark.parametrize("served", [{}])
async def test_no_live_generator_is_503(base_url: str) -> None:
    status, raw, headers = await _post(base_url, {"model": "m", "messages": USER})
    assert status == 503 and "Retry-After" in headers and json.loads(raw)["error"]["code"] == "unavailable"


async def test_bad_bodies_reach_the_client_as_400_naming_the_field(base_url: str) -> None:
    client = _async_client(base_url)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="model-a", messages=USER, n=2)  # type: ignore[arg-type]
    assert err.value.body["field"] == "n" and err.value.param == "n" and err.value.code == "invalid_request"
    status, raw, _ = await _post(base_url, {"messages": USER}, {"X-Meshrag-Retrieval": "sometimes"})
    assert status == 400 and json.loads(raw)["error"]["field"] == "X-Meshrag-Retrieval"
    status, raw, _ = await _post(base_url, {"messages": [{"role": "system", "content": "only a system prompt"}]})
    assert status == 400 and json.loads(raw)["error"]["field"] == "messages"


# ---------------------------------------------------------------- a real node and its model

slow = pytest.mark.slow
QUESTION = "At what wind speed must the dome be closed?"


@pytest.fixture(scope="module")
def corpus(node: LocalNode) -> LocalNode:
    """The sample handbook and operations notes, each with its section as metadata."""
    documents = [
        {"id": path.relative_to(SAMPLES).as_posix(), "text": path.read_text(), "metadata": {"section": path.parent.name}}
        for path in sorted(SAMPLES.rglob("*")) if path.suffix in (".md", ".txt")
    ]
    request = urllib.request.Request(node.url + "/v1/documents", data=json.dumps({"documents": documents}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
    return node


@pytest.fixture
def client(corpus: LocalNode) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=corpus.url + "/v1", api_key="unused") as client:
        yield client


def _served_model(client: openai.OpenAI) -> str:
    [model] = client.models.list().data
    return model.id


@slow
def test_node_lists_its_model(client: openai.OpenAI) -> None:
    [model] = client.models.list().data
    assert model.owned_by == "meshrag" and model.model_extra["generators"] == 1
    assert client.models.retrieve(model.id).id == model.id


@slow
def test_node_answers_with_sources_and_streams_the_same_answer(client: openai.OpenAI) -> None:
    model = _served_model(client)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}], max_tokens=16)
    answer = completion.choices[0].message.content
    assert answer and completion.model == model
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 1 <= completion.usage.completion_tokens <= 16
    sources = completion.model_extra["sources"]
    assert sources and sources[0]["n"] == 1 and "handbook/dome-safety.md" in {s["doc_id"] for s in sources}
    assert isinstance(completion.model_extra["citations"], list)
    assert completion.model_extra["meshrag"]["generation"]["generator"]  # the node id of the generator

    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=16, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == answer  # greedy decoding (temperature 0): the same answer
    final = chunks[-1]
    assert final.choices[0].finish_reason in ("stop", "length")
    assert [s["doc_id"] for s in final.model_extra["sources"]] == [s["doc_id"] for s in sources]


@slow
def test_node_retrieval_off_and_filters_through_extra_body(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}], max_tokens=4,
                                           extra_body={"retrieval": False})
    assert plain.model_extra["sources"] == [] and plain.model_extra["meshrag"]["retrieval"] is False
    filtered = client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}], max_tokens=4,
                                              extra_body={"k": 1, "filter": {"section": "operations"}})
    sources = filtered.model_extra["sources"]
    assert len(sources) == 1 and all(s["doc_id"].startswith("operations/") for s in sources)


@slow
def test_node_refuses_bad_bodies_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[], max_tokens=4)
    assert err.value.body["field"] == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}], n=2)
    assert err.value.body["field"] == "n" and err.value.param == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}], extra_body={"filter": {"$or": 1}})
    assert err.value.body["field"].startswith("filter")


@slow
def test_node_stops_generating_when_the_client_leaves(corpus: LocalNode, client: openai.OpenAI) -> None:
    def cancelled() -> float:
        text = urllib.request.urlopen(corpus.url + "/metrics", timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith('meshrag_generations_total{outcome="cancelled"}'))

    before = cancelled()
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Tell me everything about the dome."}],
                                            max_tokens=48, stream=True, extra_body={"k": 1})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and cancelled() <= before:
        time.sleep(0.1)
    assert cancelled() > before
