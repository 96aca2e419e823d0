"""Error rendering and the middlewares every route goes through.

Every failure leaves as ``{"error": {"code", "message", "field"}}`` with the
right status, including aiohttp's own (unknown route, wrong method, body too
large), so clients parse one shape. Unexpected exceptions become a 500 that
names the request id to look up in the logs, never a traceback.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from meshrag.errors import MeshragError, Unavailable
from meshrag.observability import Metrics, new_request_id, request_id_var
from meshrag.wire import encode_body

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _encodable(text: str | None) -> str | None:
    """``text`` as UTF-8 can carry it: a client's lone surrogate echoed in a message or field
    (an unknown field's name) must not turn the 400 into a 500 while it is rendered."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(request: web.Request, status: int, code: str, message: str, field: str | None = None) -> web.Response:
    error = {"code": code, "message": _encodable(message), "field": _encodable(field)}
    body, content_type = encode_body({"error": error}, request.headers.get("Accept", ""))
    return web.Response(body=body, status=status, content_type=content_type)


def json_response(request: web.Request, payload: Any, status: int = 200) -> web.Response:
    body, content_type = encode_body(payload, request.headers.get("Accept", ""))
    return web.Response(body=body, status=status, content_type=content_type)


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request_id_var.set(request.headers.get("X-Request-Id") or new_request_id())
    try:
        response = await handler(request)
    except MeshragError as exc:
        response = error_response(request, exc.status, exc.code, exc.message, exc.field)
        if isinstance(exc, Unavailable):
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    except ConnectionResetError:
        # The client went away mid-response; there is nobody to answer.
        log.info("client disconnected during %s %s", request.method, request.path)
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(request, exc.status, code, exc.reason if exc.status != 413 else exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_response(request, 500, "internal", f"internal error; request id {request_id_var.get()}")
    finally:
        request_id_var.reset(token)
    return response


def metrics_middleware(metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        response = await handler(request)
        route = _route_name(request)
        metrics.http_requests.labels(route=route, method=request.method, status=str(response.status)).inc()
        metrics.http_latency.labels(route=route).observe(time.perf_counter() - start)
        return response

    return middleware
