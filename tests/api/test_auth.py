"""api/auth.py: every public route has a scope, and the middleware enforces it (in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from meshrag.api.auth import API_KEY, OPEN, ROUTE_SCOPES, api_key_middleware, required_scope
from meshrag.api.errors import error_middleware
from meshrag.security.api_keys import ApiKeyStore
from tests.api.routes import served_routes


def test_every_public_route_has_a_scope_decision_and_no_decision_is_stale() -> None:
    assert served_routes() == set(ROUTE_SCOPES)


def test_unknown_routes_need_admin_and_head_follows_get() -> None:
    assert required_scope("POST", "/v1/something-new") == "admin"
    assert required_scope("HEAD", "/v1/documents/{doc_id}") == "read"
    assert required_scope("GET", "/health") == OPEN


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, dict[str, str]]]:
    store = ApiKeyStore(tmp_path)
    tokens = {scope: store.create(scope, (scope,), version=1)[0] for scope in ("read", "write", "admin", "status")}
    revoked, key = store.create("gone", ("read", "write", "admin"), version=1)
    store.revoke(key.id, version=2)
    tokens["revoked"] = revoked

    async def ok(request: web.Request) -> web.Response:
        api_key: Any = request.get(API_KEY)
        return web.json_response({"key": api_key.id if api_key else None})

    app = web.Application(middlewares=[error_middleware, api_key_middleware(store, lambda: True)])
    app.add_routes([web.post("/v1/search", ok), web.post("/v1/documents", ok), web.get("/v1/cluster", ok),
                    web.get("/v1/cluster/status", ok),
                    web.get("/health", ok), web.post("/_mesh/ring", ok), web.post("/v1/unlisted", ok)])
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, tokens


async def _status(client: TestClient, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.request(method, path, headers=headers) as response:
        return response.status


async def test_each_scope_opens_exactly_its_routes(client: tuple[TestClient, dict[str, str]]) -> None:
    test_client, tokens = client
    routes = {"read": ("POST", "/v1/search"), "write": ("POST", "/v1/documents"), "admin": ("GET", "/v1/cluster"),
              "status": ("GET", "/v1/cluster/status")}
    for holder in ("read", "write", "admin", "status"):
        for needed, (method, path) in routes.items():
            allowed = holder == needed or (holder, needed) == ("admin", "status")  # the one implication
            expected = 200 if allowed else 403
            assert await _status(test_client, method, path, tokens[holder]) == expected, (holder, needed)
    assert await _status(test_client, "POST", "/v1/unlisted", tokens["write"]) == 403
    assert await _status(test_client, "POST", "/v1/unlisted", tokens["admin"]) == 200


async def test_missing_unknown_and_revoked_keys_are_401_with_a_bearer_challenge(client: tuple[TestClient, dict[str, str]]) -> None:
    test_client, tokens = client
    for token in (None, "mrk_nobody_secret", "not-a-token", tokens["revoked"]):
        async with test_client.post("/v1/search", headers={"Authorization": f"Bearer {token}"} if token else {}) as response:
            body = await response.json()
            assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
            assert body["error"]["code"] == "unauthorized" and body["error"]["field"] == "Authorization"


async def test_health_and_node_to_node_routes_need_no_api_key(client: tuple[TestClient, dict[str, str]]) -> None:
    test_client, _ = client
    assert await _status(test_client, "GET", "/health", None) == 200
    assert await _status(test_client, "POST", "/_mesh/ring", None) == 200  # the cluster secret guards these


async def test_a_forbidden_answer_names_the_missing_scope(client: tuple[TestClient, dict[str, str]]) -> None:
    test_client, tokens = client
    async with test_client.get("/v1/cluster", headers={"Authorization": f"Bearer {tokens['read']}"}) as response:
        body = await response.json()
    assert response.status == 403 and "'admin' scope" in body["error"]["message"]
