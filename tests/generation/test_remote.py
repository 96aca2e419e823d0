"""generation/remote.py and api/mesh_generate.py: the /_mesh/generate contract, in-process over real HTTP.

The generator node's route runs in an aiohttp test server over a scripted
backend behind a real admission queue; the coordinator's side is the real
RemoteGenerators over a real PeerClient. What is tested is the wire: frames,
503 with Retry-After before streaming, typed errors, a stream that dies, the
cluster secret and body validation.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from meshrag import wire
from meshrag.api.errors import error_middleware
from meshrag.api.mesh_generate import GenerateRoute
from meshrag.clock import SystemClock
from meshrag.cluster.rpc import PeerClient
from meshrag.security import mesh_auth, signing
from tests.security.helpers import rpc_auth
from meshrag.config import Config
from meshrag.errors import GeneratorBusy, ValidationError
from meshrag.generation.admission import Admission, LocalGenerator
from meshrag.generation.base import GenerationFailed, GenerationRequest, GeneratorInfo
from meshrag.generation.remote import RemoteGenerators, request_from_wire, request_to_wire

SECRET = "a-cluster-secret-of-some-length"
REQUEST = GenerationRequest(messages=[{"role": "user", "content": "Count."}], max_tokens=5, temperature=0.0, continuation="1, 2,")


class ScriptedBackend:
    name, model, context_tokens, supports_continuation, parallel = "scripted", "m", 2048, True, 1

    def __init__(self) -> None:
        self.seen: list[GenerationRequest] = []
        self.fail_after: int | None = None
        self.hang_after: int | None = None
        self.cancelled = 0

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        self.seen.append(request)
        try:
            for i in range(request.max_tokens):
                if i == self.fail_after:
                    raise GenerationFailed("the model fell over")
                if i == self.hang_after:
                    await asyncio.sleep(3600)
                await asyncio.sleep(0.001)
                yield f" {i + 3},"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except GeneratorExit:
            self.cancelled += 1
            raise

    def load(self) -> None: ...
    def stats(self) -> dict[str, Any]:
        return {}
    async def close(self) -> None: ...


class GeneratorNode:
    def __init__(self, capacity: int = 2) -> None:
        self.config = Config()
        self.config.node.secret = SECRET
        self.backend = ScriptedBackend()
        self.local_generator: LocalGenerator | None = LocalGenerator(self.backend, Admission(capacity, 1, SystemClock()))


@pytest.fixture
async def served() -> AsyncIterator[tuple[GeneratorNode, str, aiohttp.ClientSession]]:
    node = GeneratorNode()
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(GenerateRoute(node).routes())
    mesh_auth.install(app, rpc_auth(SECRET, 'served-node'))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()  # aiohttp's TestServer cancels handlers of clients that leave, as node.py does
    async with aiohttp.ClientSession() as session:
        yield node, f"127.0.0.1:{server.port}", session
    await server.close()


def target(address: str) -> GeneratorInfo:
    return GeneratorInfo("g", "g1", address, "scripted", "m", 2048, 2, 0, True)


async def collect(stream: AsyncIterator[str]) -> list[str]:
    try:
        return [piece async for piece in stream]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_pieces_stream_through_and_the_request_arrives_whole(served: Any) -> None:
    node, address, session = served
    remote = RemoteGenerators(PeerClient(session, rpc_auth(SECRET), 5.0))
    pieces = await collect(remote.open(target(address), REQUEST))
    assert pieces == [" 3,", " 4,", " 5,", " 6,", " 7,"]
    assert node.backend.seen == [REQUEST]  # continuation, max_tokens and all


async def test_a_full_queue_is_generator_busy_with_retry_after_before_any_stream(served: Any) -> None:
    node, address, session = served
    node.backend.hang_after = 0
    remote = RemoteGenerators(PeerClient(session, rpc_auth(SECRET), 5.0))
    holders = [remote.open(target(address), REQUEST) for _ in range(2)]
    waiting = [asyncio.create_task(anext(h)) for h in holders]
    await asyncio.sleep(0.2)
    with pytest.raises(GeneratorBusy) as busy:
        await anext(remote.open(target(address), REQUEST))
    assert busy.value.retry_after_s >= 1
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for holder in holders:
        await holder.aclose()  # type: ignore[attr-defined]


async def test_a_failure_on_the_generator_arrives_as_a_typed_error_frame(served: Any) -> None:
    node, address, session = served
    node.backend.fail_after = 2
    remote = RemoteGenerators(PeerClient(session, rpc_auth(SECRET), 5.0))
    got: list[str] = []
    with pytest.raises(GenerationFailed, match="the model fell over"):
        async for piece in remote.open(target(address), REQUEST):
            got.append(piece)
    assert got == [" 3,", " 4,"]


async def test_closing_the_stream_cancels_the_generation_on_the_generator(served: Any) -> None:
    node, address, session = served
    node.backend.hang_after = 1
    remote = RemoteGenerators(PeerClient(session, rpc_auth(SECRET), 5.0))
    stream = remote.open(target(address), REQUEST)
    assert await anext(stream) == " 3,"
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(100):
        if node.backend.cancelled and node.local_generator.admission.load == 0:
            break
        await asyncio.sleep(0.02)
    assert node.backend.cancelled == 1 and node.local_generator.admission.load == 0


async def test_a_dead_generator_is_generation_failed_not_a_quiet_end() -> None:
    async def dies_mid_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": wire.MSGPACK})
        await response.prepare(request)
        await response.write(wire.pack({"p": " 3,"}))
        assert request.transport is not None
        request.transport.close()  # the process died: no "end", no "error"
        return response

    app = web.Application()
    app.router.add_post("/_mesh/generate", dies_mid_stream)
    mesh_auth.install(app, rpc_auth(SECRET, "dying-node"))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            remote = RemoteGenerators(PeerClient(session, rpc_auth(SECRET), 5.0))
            got: list[str] = []
            with pytest.raises(GenerationFailed):
                async for piece in remote.open(target(f"127.0.0.1:{server.port}"), REQUEST):
                    got.append(piece)
            assert got == [" 3,"]
    finally:
        await server.close()


async def test_a_wrong_secret_is_refused(served: Any) -> None:
    node, address, session = served
    remote = RemoteGenerators(PeerClient(session, rpc_auth("not-the-secret-at-all"), 5.0))
    with pytest.raises(GenerationFailed, match="401"):
        await anext(remote.open(target(address), REQUEST))
    assert node.backend.seen == []


async def test_a_bad_body_is_400_naming_the_field(served: Any) -> None:
    _, address, session = served
    body = dict(request_to_wire(REQUEST), max_tokens=10**9)
    async with session.post(f"http://{address}/_mesh/generate", data=wire.pack(body),
                            headers={"Content-Type": wire.MSGPACK, **rpc_auth(SECRET).sign("POST", "/_mesh/generate", signing.digest(wire.pack(body)))}) as response:
        assert response.status == 400
        assert wire.loads_json(await response.read())["error"]["field"] == "max_tokens"


@pytest.mark.parametrize("body, field", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stop": ["a"] * 9}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "continuation": 7}, "continuation"),
])
def test_request_validation_names_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as invalid:
        request_from_wire(body, max_tokens_limit=256, max_text_chars=10_000)
    assert invalid.value.field == field


def test_a_request_survives_the_wire() -> None:
    assert request_from_wire(wire.unpack(wire.pack(request_to_wire(REQUEST))), 256, 10_000) == REQUEST
