"""cluster/rpc.py against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from meshrag import wire
from meshrag.api.errors import error_middleware
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.security import mesh_auth, signing
from tests.security.helpers import rpc_auth
from meshrag.localnode import free_port

SECRET = "s" * 24


async def _echo(request: web.Request) -> web.Response:
    body = wire.unpack(await request.read())
    headers = {name: request.headers.get(name) for name in ("X-Meshrag-Secret", signing.NODE_HEADER)}
    return web.Response(body=wire.pack({"got": body, "headers": headers}), content_type=wire.MSGPACK)


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(1)
    return web.Response(body=wire.pack({}), content_type=wire.MSGPACK)


async def _refuse(request: web.Request) -> web.Response:
    error = {"error": {"code": "invalid_request", "message": "hashes must list 64 buckets", "field": "hashes"}}
    return web.Response(status=400, body=wire.pack(error), content_type=wire.MSGPACK)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application(middlewares=[error_middleware])
    app.add_routes([web.post("/echo", _echo), web.post("/slow", _slow), web.post("/refuse", _refuse)])
    app.add_routes([web.post("/_mesh/echo", _echo)])
    mesh_auth.install(app, rpc_auth(SECRET, "server"))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_signed_call_carries_msgpack_with_arrays_and_never_the_secret(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        reply = await PeerClient(session, rpc_auth(SECRET, "client-node"), 2.0).call(server, "/_mesh/echo", {"x": np.arange(3, dtype=np.float32)})
    assert reply["headers"] == {"X-Meshrag-Secret": None, signing.NODE_HEADER: "client-node"}
    assert reply["got"]["x"].tolist() == [0.0, 1.0, 2.0]


async def test_an_unsigned_answer_to_a_signed_call_is_refused(server: str) -> None:
    """/echo is outside /_mesh/: nobody signs its answer, so a signing client must not trust it."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PeerError) as failure:
            await PeerClient(session, rpc_auth(SECRET), 2.0).call(server, "/echo", {})
    assert failure.value.auth_reason == "missing"


async def test_a_call_signed_with_another_secret_is_a_peer_error_with_the_reason(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PeerError) as failure:
            await PeerClient(session, rpc_auth("another-secret-entirely"), 2.0).call(server, "/_mesh/echo", {})
    assert failure.value.status == 401 and failure.value.auth_reason == "unknown_key"


async def test_a_slow_peer_becomes_a_peer_error_after_the_deadline(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PeerError, match="no answer within 0.2 s"):
            await PeerClient(session, None, 0.2).call(server, "/slow", {})


async def test_an_error_reply_keeps_its_status_and_message(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PeerError) as failure:
            await PeerClient(session, None, 2.0).call(server, "/refuse", {})
    assert failure.value.status == 400
    assert "hashes must list 64 buckets" in failure.value.reason


async def test_a_closed_port_is_a_peer_error_naming_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(PeerError) as failure:
            await PeerClient(session, None, 2.0).call(address, "/echo", {})
    assert failure.value.address == address
