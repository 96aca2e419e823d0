"""/v1/cluster/api-keys: create, list and revoke the cluster's API keys (admin scope, api/auth.py).

A change is made on the node that takes the request, saved there, and spread
to every node by the ring exchange (security/api_keys.py). The token of a new
key is in the create answer and nowhere else.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from meshrag.api.errors import json_response
from meshrag.api.public import read_body
from meshrag.errors import NotFound, ValidationError
from meshrag.wire import printable
from meshrag.security.api_keys import MAX_NAME, SCOPES, ApiKeyError, ApiKeyStore

MAX_KEY_BODY_BYTES = 4096


class KeysNode(Protocol):
    api_keys: ApiKeyStore

    def stamp(self) -> int:
        """A version later than any this node issued or saw (its hybrid logical clock)."""
        ...

    async def api_keys_changed(self) -> None:
        """Persist the key set (off the event loop) and spread it to the other nodes now."""
        ...


class ApiKeyRoutes:
    def __init__(self, node: KeysNode) -> None:
        self._node = node

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/cluster/api-keys", self.list),
            web.post("/v1/cluster/api-keys", self.create),
            web.delete("/v1/cluster/api-keys/{key_id}", self.revoke),
        ]

    async def list(self, request: web.Request) -> web.Response:
        return json_response(request, {"keys": [key.public() for key in self._node.api_keys.entries()]})

    async def create(self, request: web.Request) -> web.Response:
        name, scopes = await read_body(request, MAX_KEY_BODY_BYTES, parse_create)
        token, key = self._node.api_keys.create(name, scopes, self._node.stamp())
        await self._node.api_keys_changed()
        return json_response(request, {**key.public(), "token": token}, status=201)

    async def revoke(self, request: web.Request) -> web.Response:
        try:
            key = self._node.api_keys.revoke(request.match_info["key_id"], self._node.stamp())
        except ApiKeyError as exc:
            raise NotFound(str(exc), field="key_id") from None
        await self._node.api_keys_changed()
        return json_response(request, key.public())


def parse_create(body: Any) -> tuple[str, tuple[str, ...]]:
    if not isinstance(body, dict):
        raise ValidationError("the body must be an object with name and scopes")
    unknown = sorted(set(body) - {"name", "scopes"})
    if unknown:
        name = printable(unknown[0])  # a client's key may not even be valid UTF-8
        raise ValidationError(f"unknown field {name!r}", field=name)
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        raise ValidationError(f"name must be a string of 1..{MAX_NAME} characters", field="name")
    scopes = body.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) and s in SCOPES for s in scopes):
        raise ValidationError(f"scopes must be a non-empty list of {', '.join(SCOPES)}", field="scopes")
    return name, tuple(s for s in SCOPES if s in scopes)
