"""Feeds the rolling latency history (meshrag/latency_history.py) from the request path, and
serves it at GET /v1/cluster/latency for the status page's chart.

The middleware sits beside the Prometheus one (outside error rendering), so it
times what the client waited for, errors included; a request whose client went
away (its handler cancelled) is not recorded. A streamed answer is timed to
its last byte.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from aiohttp import web

from meshrag.api.errors import Handler, json_response
from meshrag.latency_history import LatencyHistory, route_class

LATENCY_ROUTE = "/v1/cluster/latency"


def latency_middleware(history: LatencyHistory) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        charted = route_class(request.method, resource.canonical) if resource is not None else None
        if charted is None:
            return await handler(request)
        started = time.perf_counter()
        response = await handler(request)
        history.record(charted, time.perf_counter() - started, error=response.status >= 500)
        return response

    return middleware


class LatencyRoutes:
    def __init__(self, history: LatencyHistory | None) -> None:
        self._history = history

    def routes(self) -> list[web.RouteDef]:
        return [web.get(LATENCY_ROUTE, self.latency)]

    async def latency(self, request: web.Request) -> web.Response:
        """p50/p99 and counts per route class, one entry per 5 s bucket over the last 5 minutes."""
        assert self._history is not None
        return json_response(request, self._history.snapshot())
