"""The status page's routes in-process: the page and its files (api/status_page/), the latency
route and the middleware that feeds it (api/latency.py), open and keyed routes with api.keys on."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from meshrag.api.auth import api_key_middleware
from meshrag.api.errors import error_middleware
from meshrag.api.latency import LATENCY_ROUTE, LatencyRoutes, latency_middleware
from meshrag.api.status_page import ASSETS, StatusPage
from meshrag.clock import VirtualClock
from meshrag.errors import Unavailable
from meshrag.latency_history import LatencyHistory
from meshrag.security.api_keys import ApiKeyStore

REPO = Path(__file__).resolve().parents[2]


async def _search(request: web.Request) -> web.Response:
    """Stands in for the search handler: what is tested is the timing around it."""
    if request.query.get("fail"):
        raise Unavailable("no replica", retry_after_s=1)
    return web.json_response({"hits": []})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _app(history: LatencyHistory, store: ApiKeyStore | None = None) -> web.Application:
    middlewares = [latency_middleware(history), error_middleware]
    if store is not None:
        middlewares.append(api_key_middleware(store, lambda: True))
    app = web.Application(middlewares=middlewares)
    app.add_routes(StatusPage().routes())
    app.add_routes(LatencyRoutes(history).routes())
    app.add_routes([web.post("/v1/search", _search), web.get("/health", _health)])
    return app


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(_app(LatencyHistory(VirtualClock(start=100.0).now)))) as test_client:
        yield test_client


async def test_the_page_and_its_files_are_served_with_their_types_and_a_strict_policy(client: TestClient) -> None:
    for route, (name, media) in ASSETS.items():
        async with client.get(route) as response:
            assert response.status == 200 and response.content_type == media, route
            assert await response.read() == resources.files("meshrag.api.status_page").joinpath(name).read_bytes()
            policy = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "default-src 'none'" in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    async with client.get("/") as response:
        page = await response.text()
    assert '<script src="/status/app.js"' in page and 'href="/status/style.css"' in page
    assert "<script>" not in page  # no inline script: the policy would block it


async def test_app_js_never_writes_markup_into_the_dom() -> None:
    script = resources.files("meshrag.api.status_page").joinpath("app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


async def test_charted_requests_are_recorded_by_class_and_others_are_not(client: TestClient) -> None:
    for _ in range(3):
        async with client.post("/v1/search", json={}) as response:
            assert response.status == 200
    async with client.post("/v1/search?fail=1", json={}) as response:
        assert response.status == 503
    async with client.get("/health") as response:
        assert response.status == 200
    async with client.get(LATENCY_ROUTE) as response:
        snapshot = await response.json()
    [bucket] = snapshot["classes"]["search"]
    assert bucket["count"] == 4 and bucket["errors"] == 1 and bucket["t"] == 100.0
    assert 0 <= bucket["p50_ms"] <= bucket["p99_ms"] < 5000
    assert snapshot["classes"]["ingest"] == snapshot["classes"]["ask"] == snapshot["classes"]["read"] == []
    assert snapshot["bucket_s"] == 5.0 and snapshot["window_s"] == 300.0


async def test_with_api_keys_on_the_page_is_open_and_its_data_needs_a_key(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
    token, _ = store.create("reader", ("read",), version=1)
    async with TestClient(TestServer(_app(LatencyHistory(VirtualClock().now), store))) as test_client:
        for route in ASSETS:
            async with test_client.get(route) as response:
                assert response.status == 200, route
        async with test_client.get(LATENCY_ROUTE) as response:
            assert response.status == 401
        async with test_client.get(LATENCY_ROUTE, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200


def test_the_package_data_ships_every_file_of_the_page() -> None:
    """An installed (non-editable) node serves the page only if pyproject.toml lists its files."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["meshrag.api.status_page"]
    for name, _ in ASSETS.values():
        assert any(fnmatch(name, pattern) for pattern in patterns), name
