"""Which public route needs which API key scope, and the middleware that checks it.

With ``api.keys`` on (never in dev mode), every public route but the health
probes needs ``Authorization: Bearer <key>`` (security/api_keys.py). A missing,
unknown or revoked key is 401 with ``WWW-Authenticate: Bearer``; a key without
the route's scope is 403 naming the scope (``admin`` also allows ``status``
routes: security/api_keys.py ``grants``). ``/_mesh/`` routes are left to the
node-to-node authentication (security/mesh_auth.py). A public route missing from
``ROUTE_SCOPES`` needs ``admin``: a route added without a decision fails closed.
"""

from __future__ import annotations

from typing import Callable

from aiohttp import web

from meshrag.api.errors import Handler, error_response
from meshrag.security.api_keys import ApiKey, ApiKeyStore, grants

OPEN = ""  # no key needed
API_KEY = web.RequestKey("api_key", ApiKey)  # the authenticated key, for handlers that want to know who
MESH_PREFIX = "/_mesh/"

# (method, canonical route) -> scope. HEAD follows GET (aiohttp answers HEAD on GET routes).
ROUTE_SCOPES: dict[tuple[str, str], str] = {
    ("GET", "/health"): OPEN,
    ("GET", "/ready"): OPEN,
    ("GET", "/openapi.json"): OPEN,  # the API's description (api/openapi.py): nothing secret in it
    # The status page (api/status_page/): static files, open so that a browser can load the form
    # that asks for a key; the JSON it then reads (/v1/cluster, /v1/cluster/latency) needs one.
    ("GET", "/"): OPEN,
    ("GET", "/status/app.js"): OPEN,
    ("GET", "/status/style.css"): OPEN,
    ("GET", "/metrics"): "read",  # a scraper's key should not be able to write or decommission
    ("POST", "/v1/documents"): "write",
    ("DELETE", "/v1/documents/{doc_id}"): "write",
    ("GET", "/v1/documents/{doc_id}"): "read",
    ("POST", "/v1/search"): "read",
    ("POST", "/v1/ask"): "read",
    ("GET", "/v1/models"): "read",
    ("GET", "/v1/models/{model}"): "read",
    ("POST", "/v1/chat/completions"): "read",
    ("GET", "/v1/cluster"): "admin",
    ("GET", "/v1/cluster/latency"): "read",  # request latencies only, like /metrics
    ("GET", "/v1/cluster/status"): "status",  # read-only views of the whole cluster; admin implies status
    ("GET", "/v1/cluster/verify"): "status",
    ("POST", "/v1/cluster/decommission"): "admin",
    ("POST", "/v1/cluster/remove"): "admin",
    ("POST", "/v1/cluster/snapshots"): "admin",  # writes a copy of the node's data on its host (api/snapshots.py)
    ("GET", "/v1/cluster/snapshots/{name}"): "admin",
    ("GET", "/v1/cluster/api-keys"): "admin",
    ("POST", "/v1/cluster/api-keys"): "admin",
    ("DELETE", "/v1/cluster/api-keys/{key_id}"): "admin",
}


def required_scope(method: str, route: str) -> str:
    """The scope ``method route`` needs (OPEN for none); unknown routes need admin."""
    return ROUTE_SCOPES.get(("GET" if method == "HEAD" else method, route), "admin")


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def api_key_middleware(store: ApiKeyStore, enabled: Callable[[], bool]) -> Callable[[web.Request, Handler], object]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if not enabled() or resource is None or request.path.startswith(MESH_PREFIX):
            return await handler(request)  # unmatched routes answer 404 by themselves
        scope = required_scope(request.method, resource.canonical)
        if scope == OPEN:
            return await handler(request)
        key = _authenticated(request, store)
        if isinstance(key, web.Response):
            return key
        if not grants(key.scopes, scope):  # admin also allows the status scope's routes
            return error_response(request, 403, "forbidden",
                                  f"API key {key.id!r} ({key.name}) lacks the {scope!r} scope this route needs", "Authorization")
        request[API_KEY] = key
        return await handler(request)

    return middleware


def _authenticated(request: web.Request, store: ApiKeyStore) -> ApiKey | web.Response:
    token = bearer_token(request)
    key = store.verify(token) if token else None
    if key is not None:
        return key
    message = ("an API key is required: send Authorization: Bearer <key>" if token is None
               else "unknown or revoked API key")
    response = error_response(request, 401, "unauthorized", message, "Authorization")
    response.headers["WWW-Authenticate"] = 'Bearer realm="meshrag"'
    return response
