"""api/internal.py: the /_mesh/ routes check the cluster secret before anything else."""

from __future__ import annotations

from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from meshrag import wire
from meshrag.api.errors import error_middleware
from meshrag.api.internal import InternalApi
from meshrag.cluster.rpc import SECRET_HEADER
from meshrag.cluster.messages import APPLY_PATH, RING_PATH
from meshrag.gossip.settings import GossipSettings
from meshrag.localnode import free_port

SECRET = "k" * 20


class _StartingNode:
    """A node whose membership and cluster storage are not up yet."""

    members: Any = None
    cluster: Any = None


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(InternalApi(_StartingNode(), GossipSettings(), SECRET, 1 << 20).routes())
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _post(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=wire.pack({"ring": []}), headers={"Accept": wire.MSGPACK, **headers}) as response:
            return response.status, wire.unpack(await response.read())


@pytest.mark.parametrize("path", [APPLY_PATH, RING_PATH])
async def test_a_request_without_the_secret_is_refused_401(base_url: str, path: str) -> None:
    status, body = await _post(base_url + path, {})
    assert status == 401
    assert body["error"]["code"] == "unauthorized" and body["error"]["field"] == SECRET_HEADER


async def test_a_wrong_secret_is_refused_401(base_url: str) -> None:
    status, _ = await _post(base_url + RING_PATH, {SECRET_HEADER: "w" * 20})
    assert status == 401


async def test_the_right_secret_reaches_the_route_which_says_storage_is_starting(base_url: str) -> None:
    status, body = await _post(base_url + RING_PATH, {SECRET_HEADER: SECRET})
    assert status == 503
    assert body["error"]["code"] == "unavailable"
