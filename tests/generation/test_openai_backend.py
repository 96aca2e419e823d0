"""The openai backend against a real OpenAI-compatible server: llama-cpp-python's own
(``python -m llama_cpp.server``, the dev extra) serving the bundled gemma-3-270m GGUF.

Only the HTTP status mapping (429/503/4xx/5xx) uses a tiny stand-in server: no real
server can be made to answer those on demand.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from aiohttp import web

from meshrag.errors import ConfigError, GeneratorBusy, Unavailable
from meshrag.generation.base import GenerationFailed, GenerationRequest
from meshrag.generation.llamacpp import assemble_default_model
from meshrag.generation.openai import OpenAIBackend
from meshrag.localnode import free_port
from meshrag.rag.prompt import Passage, build_messages
from meshrag.setup_check import default_data_dir

pytestmark = pytest.mark.slow
# The backends' HTTP sessions belong to one event loop, like a node's: the tests share one.
module_loop = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]
COUNTING = [{"role": "user", "content": "Write the numbers from 1 to 500, separated by commas."}]
SERVER_START_S = 90.0


def request(max_tokens: int, **options: object) -> GenerationRequest:
    return GenerationRequest(messages=COUNTING, max_tokens=max_tokens, temperature=0, **options)  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in stream]


def make(base_url: str, api: str = "completions", stall_timeout_s: float = 30.0) -> OpenAIBackend:
    return OpenAIBackend(base_url, "gemma-3-270m", api_key="test-key", api=api, context_tokens=2048, parallel=1,
                         stall_timeout_s=stall_timeout_s)


# -------------------------------------------------------------- the real server
@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    base_url: str  # http://127.0.0.1:PORT/v1
    log_path: Path


@pytest.fixture(scope="module")
def model_path() -> Path:
    data_dir = default_data_dir()
    return assemble_default_model(data_dir if data_dir.is_absolute() else REPO / data_dir)


@dataclass(frozen=True)
class Servers:
    quiet: Server  # interrupt_requests off: most tests
    interrupting: Server  # interrupt_requests on (the server's default)


def spawn_server(model_path: Path, log_path: Path, *, interrupt_requests: bool) -> Server:
    """llama-cpp-python's OpenAI-compatible server on a free loopback port (not ready yet).

    The bundled GGUF is a base model without a chat template; the server's fallback (llama-2)
    makes it end every chat answer at once, the vicuna format gets words out of it.
    """
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1", "--interrupt_requests", str(interrupt_requests),
        "--chat_format", "vicuna",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return Server(process, f"http://127.0.0.1:{port}/v1", log_path)


def wait_until_ready(server: Server, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=1):
                return
        except OSError:
            if server.process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {server.process.returncode}:\n{server.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within {SERVER_START_S:g} s:\n{server.log_path.read_text()[-3000:]}")
            time.sleep(0.2)


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def servers(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Two servers, started together (the second costs little wall time that way).

    interrupt_requests is a server-wide setting. On (the default), a new request interrupts the
    running one, which would hide whether a client that goes away really stops its generation:
    the quiet server has it off; the interrupting one shows how the backend takes an interruption.
    """
    logs = tmp_path_factory.mktemp("llama-server")
    started: list[Server] = []
    try:
        started.append(spawn_server(model_path, logs / "quiet.log", interrupt_requests=False))
        started.append(spawn_server(model_path, logs / "interrupting.log", interrupt_requests=True))
        deadline = time.monotonic() + SERVER_START_S
        for server in started:
            wait_until_ready(server, deadline)
        yield Servers(*started)
    finally:
        for server in started:
            stop_server(server)


@pytest.fixture(scope="module")
def server(servers: Servers) -> Server:
    return servers.quiet


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(server: Server) -> AsyncIterator[OpenAIBackend]:
    generator = make(server.base_url)
    await asyncio.to_thread(generator.load)
    yield generator
    await generator.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chat_backend(server: Server) -> AsyncIterator[OpenAIBackend]:
    generator = make(server.base_url, api="chat")
    await asyncio.to_thread(generator.load)
    yield generator
    await generator.close()


# -------------------------------------------------------------------- streaming
@module_loop
async def test_streams_several_pieces_up_to_max_tokens(backend: OpenAIBackend) -> None:
    before = backend.stats()
    pieces = await collect(backend.stream(request(12)))
    assert 4 <= len(pieces) <= 12, pieces
    assert "1" in "".join(pieces)
    after = backend.stats()
    assert after["completed"] == before["completed"] + 1
    assert after["tokens_generated"] == before["tokens_generated"] + len(pieces)
    assert after["running"] == 0


@module_loop
async def test_greedy_continuation_writes_what_the_uninterrupted_run_wrote(backend: OpenAIBackend) -> None:
    passages = [Passage(n=1, doc_id="dome", chunk_id="dome#1.0", text="The dome closes when the wind exceeds 40 knots or when rain is forecast.", score=0.9)]
    messages = build_messages("When does the dome close?", passages)
    whole = await collect(backend.stream(GenerationRequest(messages=messages, max_tokens=16, temperature=0)))
    assert len(whole) >= 6, whole
    for cut in (1, len(whole) // 2, len(whole) - 2):
        sent = "".join(whole[:cut])
        # A piece is at least one token, so 16 - cut tokens are left at most; two spare in case the
        # seam tokenises differently, so the continued run may go on a little past the first one.
        rest = await collect(backend.stream(GenerationRequest(messages=messages, max_tokens=16 - cut + 2, temperature=0, continuation=sent)))
        # The server retokenises prompt + continuation as one string; the comparison is exact
        # (no whitespace allowance at the seam).
        assert (sent + "".join(rest)).startswith("".join(whole)), f"cut after {cut} pieces: {whole} vs {sent!r} + {rest}"


@module_loop
async def test_chat_api_streams_an_answer_and_refuses_a_continuation(chat_backend: OpenAIBackend) -> None:
    assert not chat_backend.supports_continuation
    pieces = await collect(chat_backend.stream(GenerationRequest(messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)))
    assert pieces and all(isinstance(p, str) for p in pieces)
    with pytest.raises(GenerationFailed) as refused:
        await collect(chat_backend.stream(request(8, continuation="1, 2,")))
    assert not refused.value.retryable


@module_loop
async def test_aclose_mid_stream_stops_the_server_generating(backend: OpenAIBackend) -> None:
    before = backend.stats()
    stream = backend.stream(request(1000))
    for _ in range(3):
        await anext(stream)
    started = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - started < 1.0
    assert backend.stats()["cancelled"] == before["cancelled"] + 1
    assert backend.stats()["running"] == 0
    # The server runs one generation at a time (and does not interrupt it for a new one): had it
    # gone on with the abandoned 1000 tokens (over 20 s here), this one would wait for them.
    started = time.monotonic()
    assert await collect(backend.stream(request(4)))
    assert time.monotonic() - started < 8.0


@module_loop
async def test_a_stream_the_server_cuts_short_is_unavailable_not_complete(servers: Servers) -> None:
    """llama.cpp's server (interrupt_requests on, its default) ends a running answer with [DONE]
    when another request arrives: without a finish_reason that is a cut, for the router to fail over."""
    generator = make(servers.interrupting.base_url)
    await asyncio.to_thread(generator.load)
    try:
        first = generator.stream(request(1000))
        await anext(first)
        second = asyncio.ensure_future(collect(generator.stream(request(4))))
        with pytest.raises(Unavailable, match="ended the stream before the answer ended"):
            async for _ in first:
                pass
        assert await asyncio.wait_for(second, 30)
        assert generator.stats()["failed"] == 1 and generator.stats()["completed"] == 1
    finally:
        await generator.close()


@module_loop
async def test_a_server_that_stops_sending_is_unavailable_after_the_stall_timeout(server: Server) -> None:
    generator = make(server.base_url, stall_timeout_s=1.0)
    await asyncio.to_thread(generator.load)
    stream = generator.stream(request(60))
    try:
        await anext(stream)
        server.process.send_signal(signal.SIGSTOP)  # the server hangs mid-answer, connection open
        started = time.monotonic()
        with pytest.raises(Unavailable, match="sent nothing for 1 s"):
            async for _ in stream:
                pass
        assert 0.5 < time.monotonic() - started < 5.0
    finally:
        server.process.send_signal(signal.SIGCONT)
        await stream.aclose()
        await generator.close()
    assert generator.stats()["failed"] == 1


# ----------------------------------------------------------------------- load()
def test_load_names_the_url_of_a_server_that_does_not_answer() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(Unavailable, match=f"{url}/models"):
        make(url).load()


def test_load_names_the_url_of_a_wrong_path(server: Server) -> None:
    url = server.base_url.removesuffix("/v1") + "/nope"
    with pytest.raises(ConfigError, match=f"{url}/models.*404"):
        make(url).load()


@module_loop
async def test_stream_before_load_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="not loaded"):
        await collect(make("http://127.0.0.1:9/v1").stream(request(4)))


# ------------------------------------------- status mapping (a stand-in server)
@pytest_asyncio.fixture(loop_scope="module")
async def refusing() -> AsyncIterator[str]:
    """A server whose /completions answers with the status in the model name: busy, broken, picky."""

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "x", "object": "model"}]})

    async def completions(req: web.Request) -> web.Response:
        status = int((await req.json())["model"])
        headers = {"Retry-After": "7"} if status in (429, 503) else {}
        return web.json_response({"error": {"message": f"refused with {status}", "type": "test"}}, status=status, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


@module_loop
@pytest.mark.parametrize("status", [429, 503])
async def test_busy_statuses_are_generator_busy_with_retry_after(refusing: str, status: int) -> None:
    generator = OpenAIBackend(refusing, str(status), api_key=None, api="completions", context_tokens=2048, parallel=1, stall_timeout_s=5)
    await asyncio.to_thread(generator.load)
    try:
        with pytest.raises(GeneratorBusy, match=f"refused with {status}") as busy:
            await collect(generator.stream(request(4)))
        assert busy.value.retry_after_s == 7
    finally:
        await generator.close()


@module_loop
@pytest.mark.parametrize(("status", "retryable"), [(400, False), (500, True)])
async def test_other_statuses_fail_with_the_servers_message(refusing: str, status: int, retryable: bool) -> None:
    generator = OpenAIBackend(refusing, str(status), api_key=None, api="completions", context_tokens=2048, parallel=1, stall_timeout_s=5)
    await asyncio.to_thread(generator.load)
    try:
        with pytest.raises(GenerationFailed, match=f"HTTP {status}: refused with {status}") as failed:
            await collect(generator.stream(request(4)))
        assert failed.value.retryable is retryable
        assert generator.stats()["failed"] == 1
    finally:
        await generator.close()
