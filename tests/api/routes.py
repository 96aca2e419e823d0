"""The public route table as node.py builds it (the /_mesh/ routes are not public), for the
tests that hold it against the OpenAPI document and against the API-key scopes."""

from __future__ import annotations

from aiohttp import web

from meshrag.api.api_keys import ApiKeyRoutes
from meshrag.api.latency import LatencyRoutes
from meshrag.api.openai_compat import OpenAICompatApi
from meshrag.api.public import PublicApi
from meshrag.api.snapshots import SnapshotRoutes
from meshrag.api.status_page import StatusPage


def served_routes() -> set[tuple[str, str]]:
    app = web.Application()
    route_tables = (PublicApi(None).routes(), OpenAICompatApi(None).routes(), ApiKeyRoutes(None).routes(), SnapshotRoutes(None).routes(),  # type: ignore[arg-type]
                    StatusPage().routes(), LatencyRoutes(None).routes())
    for routes in route_tables:
        app.add_routes(routes)
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource is not None}
