"""Per-client concurrency limits and per-request deadlines on the public API.

A client (the API key that authenticated the request, else its address) may
have ``api.max_concurrent_per_client`` requests in flight on a node; one more
is answered 429 ``too_many_requests`` with Retry-After before any of its work
starts (the body is not even read). Retry-After is the client's own recent
request duration (an EWMA, 1..30 s): a client whose searches take 50 ms is told
1 s, one whose ingests take 20 s is told 20 s.

Every public request has a server-side deadline by route class
(``api.read_deadline_s``, ``write_deadline_s``, ``generate_deadline_s``);
past it the handler is cancelled (as when a client disconnects) and the answer
is 504 ``deadline_exceeded``. A streamed answer's deadline ends when its first
byte leaves: from then on generation.stall_timeout_s and max_tokens bound it.
Outgoing calls have their own deadlines where they are made (cluster/rpc.py,
the search deadline, embedding parts, generation first-piece and stall
timeouts); this one bounds what they add up to.

Health probes, /metrics, /openapi.json and node-to-node ``/_mesh/`` routes are
neither limited nor given a deadline here (``/_mesh/`` has its own admission).

The accounting (:class:`ConcurrencyLimiter`) is pure: clock injected.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from aiohttp import web

from meshrag.api.auth import API_KEY, MESH_PREFIX
from meshrag.api.errors import Handler
from meshrag.clock import Clock
from meshrag.config import ApiConfig
from meshrag.errors import DeadlineExceeded, TooManyRequests

# Routes outside both limits: probes and scrapes must answer when the node is busiest.
UNLIMITED_ROUTES = frozenset({"/health", "/ready", "/metrics", "/openapi.json"})
WRITE_ROUTES = frozenset({("POST", "/v1/documents"), ("DELETE", "/v1/documents/{doc_id}"),
                          ("POST", "/v1/cluster/decommission"), ("POST", "/v1/cluster/remove")})
GENERATE_ROUTES = frozenset({("POST", "/v1/ask"), ("POST", "/v1/chat/completions")})
MIN_RETRY_S, MAX_RETRY_S = 1, 30
EWMA_WEIGHT = 0.3  # of the newest duration
MAX_REMEMBERED_CLIENTS = 4096  # durations kept for clients with nothing in flight (least recent dropped)

_DEADLINE = web.RequestKey("deadline", asyncio.Timeout)


class ConcurrencyLimiter:
    """Requests in flight per client, and how long each client's requests take."""

    def __init__(self, limit: int, clock: Clock) -> None:
        self.limit = limit  # 0: no limit
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        self._durations: OrderedDict[str, float] = OrderedDict()  # client -> EWMA seconds

    def in_flight(self, client: str) -> int:
        return self._in_flight.get(client, 0)

    def try_acquire(self, client: str) -> float | None:
        """The start time of an admitted request (pass it to :meth:`release`), or None when
        ``client`` is at its limit."""
        count = self._in_flight.get(client, 0)
        if self.limit and count >= self.limit:
            return None
        self._in_flight[client] = count + 1
        return self._clock.now()

    def release(self, client: str, started: float) -> None:
        count = self._in_flight.get(client, 0) - 1
        if count > 0:
            self._in_flight[client] = count
        else:
            self._in_flight.pop(client, None)  # nothing kept per idle client but its duration
        duration = max(0.0, self._clock.now() - started)
        previous = self._durations.pop(client, None)
        self._durations[client] = duration if previous is None else EWMA_WEIGHT * duration + (1 - EWMA_WEIGHT) * previous
        while len(self._durations) > MAX_REMEMBERED_CLIENTS:
            self._durations.popitem(last=False)

    def retry_after_s(self, client: str) -> int:
        """Whole seconds a refused client should wait: its usual request duration, 1..30."""
        duration = self._durations.get(client, 0.0)
        return min(MAX_RETRY_S, max(MIN_RETRY_S, math.ceil(duration)))


def client_of(request: web.Request) -> str:
    """Whom a request counts against: its API key when one authenticated it (api/auth.py),
    else the peer address (a proxy in front makes all its clients one)."""
    key = request.get(API_KEY)
    return f"key:{key.id}" if key is not None else f"addr:{request.remote or 'unknown'}"


def route_class(method: str, route: str) -> str:
    if (method, route) in GENERATE_ROUTES:
        return "generate"
    if (method, route) in WRITE_ROUTES or route.startswith("/v1/cluster/api-keys") and method != "GET":
        return "write"
    return "read"


def _route(request: web.Request) -> str | None:
    """The canonical public route, or None for what neither limit applies to."""
    resource = request.match_info.route.resource
    if resource is None or request.path.startswith(MESH_PREFIX) or resource.canonical in UNLIMITED_ROUTES:
        return None
    return resource.canonical


class RequestLimits:
    """The two middlewares (concurrency, then deadline) and the hook that ends a stream's deadline."""

    def __init__(self, config: ApiConfig, clock: Clock) -> None:
        self._config = config
        self.limiter = ConcurrencyLimiter(config.max_concurrent_per_client, clock)

    def install(self, app: web.Application) -> None:
        """Append the middlewares (after authentication, so the key is known) and the prepare hook."""
        app.middlewares.append(self.concurrency_middleware)
        app.middlewares.append(self.deadline_middleware)
        app.on_response_prepare.append(_end_deadline)

    def deadline_s(self, method: str, route: str) -> float:
        kind = route_class(method, route)
        return {"read": self._config.read_deadline_s, "write": self._config.write_deadline_s,
                "generate": self._config.generate_deadline_s}[kind]

    @web.middleware
    async def concurrency_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if _route(request) is None:
            return await handler(request)
        client = client_of(request)
        started = self.limiter.try_acquire(client)
        if started is None:
            raise TooManyRequests(
                f"this client already has {self.limiter.limit} requests in flight on this node "
                f"(api.max_concurrent_per_client); retry after one finishes",
                retry_after_s=self.limiter.retry_after_s(client),
            )
        try:
            return await handler(request)
        finally:
            self.limiter.release(client, started)

    @web.middleware
    async def deadline_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route(request)
        if route is None:
            return await handler(request)
        method = "GET" if request.method == "HEAD" else request.method
        seconds = self.deadline_s(method, route)
        deadline = asyncio.timeout(seconds)
        request[_DEADLINE] = deadline
        try:
            async with deadline:
                return await handler(request)
        except TimeoutError:
            if not deadline.expired():
                raise  # a timeout of the handler's own, already its to explain
            raise DeadlineExceeded(_deadline_message(route_class(method, route), seconds)) from None
        finally:
            request.pop(_DEADLINE, None)


def _deadline_message(kind: str, seconds: float) -> str:
    text = f"the request ran past this node's {kind} deadline of {seconds:g} s and was stopped"
    if kind == "write":
        text += "; some of it may have been applied: repeating the same request is safe (upserts and deletes are idempotent)"
    return text


async def _end_deadline(request: web.Request, response: web.StreamResponse) -> None:
    """A handler that starts streaming has answered in time; the stream's own timeouts take over."""
    deadline = request.get(_DEADLINE)
    if deadline is not None and not deadline.expired():
        deadline.reschedule(None)

