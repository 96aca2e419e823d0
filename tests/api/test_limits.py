"""api/limits.py: per-client concurrency (accounting on virtual time, the middleware in-process)
and per-request deadlines."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from meshrag.api.auth import api_key_middleware
from meshrag.api.errors import error_middleware
from meshrag.api.limits import MAX_RETRY_S, ConcurrencyLimiter, RequestLimits, route_class
from meshrag.clock import SystemClock
from meshrag.config import ApiConfig
from meshrag.security.api_keys import ApiKeyStore
from tests.virtual_loop import run_virtual


# ------------------------------------------------------------ accounting, virtual time
def test_a_client_at_its_limit_is_refused_and_others_are_not() -> None:
    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        limiter = ConcurrencyLimiter(2, loop.clock)  # type: ignore[attr-defined]
        outcomes: list[Any] = []

        async def request(client: str, seconds: float) -> None:
            started = limiter.try_acquire(client)
            if started is None:
                outcomes.append((client, "refused", loop.time(), limiter.retry_after_s(client)))
                return
            await asyncio.sleep(seconds)
            limiter.release(client, started)
            outcomes.append((client, "done", loop.time()))

        # a: two 8 s requests, a third refused at once; b is not affected by a's count.
        first = [asyncio.create_task(request("a", 8)) for _ in range(2)]
        await asyncio.sleep(0)
        await request("a", 8)
        await request("b", 0)
        await asyncio.gather(*first)
        assert limiter.in_flight("a") == 0 and limiter.in_flight("b") == 0
        # Now a's requests are known to take 8 s: a refusal says so.
        blockers = [asyncio.create_task(request("a", 8)) for _ in range(2)]
        await asyncio.sleep(1)
        await request("a", 8)
        await asyncio.gather(*blockers)
        return outcomes

    outcomes, elapsed = run_virtual(scenario)
    refused = [o for o in outcomes if o[1] == "refused"]
    assert refused == [("a", "refused", 0.0, 1), ("a", "refused", 9.0, 8)]  # no history: 1 s; then its own duration
    assert ("b", "done", 0.0) in outcomes
    assert elapsed == 16.0


def test_retry_after_follows_an_ewma_of_durations_within_bounds() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        limiter = ConcurrencyLimiter(1, loop.clock)  # type: ignore[attr-defined]
        seen = []
        for seconds in (100, 100, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2):
            started = limiter.try_acquire("c")
            assert started is not None and limiter.try_acquire("c") is None  # one at a time
            await asyncio.sleep(seconds)
            limiter.release("c", started)
            seen.append(limiter.retry_after_s("c"))
        return seen

    seen, _ = run_virtual(scenario)
    assert seen[0] == seen[1] == MAX_RETRY_S  # capped
    assert seen == sorted(seen, reverse=True) and seen[-1] < 10  # decays towards the recent durations


def test_zero_means_no_limit() -> None:
    limiter = ConcurrencyLimiter(0, SystemClock())
    assert all(limiter.try_acquire("x") is not None for _ in range(10_000))


def test_route_classes() -> None:
    assert route_class("POST", "/v1/documents") == "write"
    assert route_class("DELETE", "/v1/cluster/api-keys/{key_id}") == "write"
    assert route_class("GET", "/v1/cluster/api-keys") == "read"
    assert route_class("POST", "/v1/search") == "read"
    assert route_class("POST", "/v1/chat/completions") == "generate"


# ------------------------------------------------------------ the middlewares, in-process
@pytest.fixture
async def app_client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, dict[str, Any]]]:
    store = ApiKeyStore(tmp_path)
    token, _ = store.create("reader", ("read", "write"), version=1)
    other, _ = store.create("other", ("read",), version=1)
    state: dict[str, Any] = {"gate": asyncio.Event(), "started": 0, "tokens": (token, other), "keys": True}

    async def gated(request: web.Request) -> web.Response:
        state["started"] += 1
        await state["gate"].wait()
        return web.json_response({"ok": True})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({"ok": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(4):
            await asyncio.sleep(0.1)  # 0.4 s in all, past the 0.2 s deadline
            await response.write(b"data: x\n\n")
        await response.write_eof()
        return response

    config = ApiConfig(max_concurrent_per_client=2, read_deadline_s=5.0, write_deadline_s=0.2, generate_deadline_s=0.2)
    app = web.Application(middlewares=[error_middleware, api_key_middleware(store, lambda: state["keys"])])
    RequestLimits(config, SystemClock()).install(app)
    app.add_routes([web.post("/v1/search", gated), web.get("/health", gated), web.post("/v1/documents", slow),
                    web.post("/v1/ask", stream), web.post("/v1/chat/completions", slow)])
    async with TestClient(TestServer(app)) as client:
        yield client, state


async def _wait_started(state: dict[str, Any], count: int) -> None:
    for _ in range(200):
        if state["started"] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {state['started']} requests started")


async def test_beyond_the_limit_is_429_with_retry_after_and_starts_nothing(app_client: tuple[TestClient, dict[str, Any]]) -> None:
    client, state = app_client
    mine, other = ({"Authorization": f"Bearer {t}"} for t in state["tokens"])
    held = [asyncio.create_task(client.post("/v1/search", headers=mine)) for _ in range(2)]
    await _wait_started(state, 2)
    async with client.post("/v1/search", headers=mine, json={"query": "x"}) as refused:
        body = await refused.json()
        assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
        assert body["error"]["code"] == "too_many_requests"
    assert state["started"] == 2  # the refused request's handler never ran
    # Another key is another client; the probes are never limited.
    extra = asyncio.create_task(client.post("/v1/search", headers=other))
    probe = asyncio.create_task(client.get("/health"))
    await _wait_started(state, 4)
    state["gate"].set()
    for response in [*(await asyncio.gather(*held, extra, probe))]:
        assert response.status == 200
        response.release()
    async with client.post("/v1/search", headers=mine) as again:
        assert again.status == 200


async def test_without_a_key_the_address_is_the_client(app_client: tuple[TestClient, dict[str, Any]]) -> None:
    client, state = app_client
    state["keys"] = False
    held = [asyncio.create_task(client.post("/v1/search")) for _ in range(2)]
    await _wait_started(state, 2)
    async with client.post("/v1/search") as refused:
        assert refused.status == 429
    state["gate"].set()
    for response in await asyncio.gather(*held):
        assert response.status == 200
        response.release()


async def test_a_request_past_its_deadline_is_504_and_a_started_stream_is_not_cut(app_client: tuple[TestClient, dict[str, Any]]) -> None:
    client, state = app_client
    mine = {"Authorization": f"Bearer {state['tokens'][0]}"}
    async with client.post("/v1/documents", headers=mine) as write:
        body = await write.json()
        assert write.status == 504 and body["error"]["code"] == "deadline_exceeded"
        assert "idempotent" in body["error"]["message"]
    async with client.post("/v1/chat/completions", headers=mine) as chat:
        assert chat.status == 504
    async with client.post("/v1/ask", headers=mine) as streamed:
        assert streamed.status == 200 and (await streamed.read()).count(b"data: x") == 4
