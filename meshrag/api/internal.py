"""Node-to-node routes under /_mesh/: limits, codec and routing.

Push-pull bodies are sealed by the gossip codec with a key derived from the
cluster secret (a forged, foreign, stale or replayed body is rejected by the
codec and answered 400). The replication, search and repair routes carry
msgpack bodies; their signatures are checked before any route runs, by the
middleware of security/mesh_auth.py, which guards every /_mesh/ route. What a
route answers is api/mesh_handlers.py's (search: the cluster service's).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Awaitable, Callable, Mapping, Protocol

from aiohttp import web

from meshrag import wire
from meshrag.api import mesh_handlers as handlers
from meshrag.cluster import messages as paths
from meshrag.cluster.rpc import BodyCodec
from meshrag.cluster.service import ClusterService
from meshrag.errors import PayloadTooLarge, Unavailable, ValidationError
from meshrag.gossip import PUSH_PULL_CONTENT_TYPE, PUSH_PULL_PATH, Memberlist
from meshrag.gossip.settings import GossipSettings

Handler = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]
ClusterHandler = Callable[[ClusterService, Mapping[str, Any]], Awaitable[dict[str, Any]]]


class MeshView(Protocol):
    members: Memberlist | None
    cluster: ClusterService | None


class InternalApi:
    def __init__(
        self, node: MeshView, settings: GossipSettings, max_body_bytes: int, codec: BodyCodec | None = None
    ) -> None:
        self._node = node
        self._settings = settings
        self._max_body_bytes = max_body_bytes
        self._codec = codec or BodyCodec()  # large bodies unpacked and packed off the event loop

    def routes(self) -> list[web.RouteDef]:
        mesh: dict[str, Callable[[ClusterService], Handler]] = {
            paths.APPLY_PATH: _bound(handlers.handle_apply),
            paths.GET_PATH: _bound(handlers.handle_get),
            paths.STATES_PATH: _bound(handlers.handle_states),
            paths.SEARCH_PATH: _bound(handlers.handle_search),
            paths.TERM_STATS_PATH: _bound(handlers.handle_term_stats),
            paths.HITS_PATH: _bound(handlers.handle_hits),
            paths.ROOTS_PATH: _bound(handlers.handle_roots),
            paths.ENTRIES_PATH: _bound(handlers.handle_entries),
            paths.FETCH_PATH: _bound(handlers.handle_fetch),
            paths.RING_PATH: _bound(handlers.handle_ring),
            paths.INSPECT_PATH: _bound(handlers.handle_inspect),
        }
        return [web.post(PUSH_PULL_PATH, self.push_pull)] + [
            web.post(path, self._mesh_route(pick)) for path, pick in mesh.items()
        ]

    def _mesh_route(self, pick: Callable[[ClusterService], Handler]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            cluster = self._node.cluster
            if cluster is None:
                raise Unavailable("cluster storage is not started yet", retry_after_s=1)
            if request.content_length is not None and request.content_length > self._max_body_bytes:
                raise PayloadTooLarge(f"body over {self._max_body_bytes} bytes", field="body")
            body = await self._codec.unpack(await request.read())
            if not isinstance(body, dict):
                raise ValidationError("body must be a map", field="body")
            try:
                reply = await pick(cluster)(body)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValidationError(f"malformed request: {exc!r}", field="body") from None
            return web.Response(body=await self._codec.pack(reply), content_type=wire.MSGPACK)

        return route

    async def push_pull(self, request: web.Request) -> web.Response:
        members = self._node.members
        if members is None:
            raise Unavailable("membership is not started yet", retry_after_s=1)
        limit = self._settings.push_pull_limit_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"push-pull body over {limit} bytes", field="body")
        reply = members.handle_push_pull(await request.read(), request.remote or "")
        if reply is None:
            return web.Response(status=400, text="rejected")
        return web.Response(body=reply, content_type=PUSH_PULL_CONTENT_TYPE)


def _bound(handler: ClusterHandler) -> Callable[[ClusterService], Handler]:
    """A handler of api/mesh_handlers.py, bound to the cluster service a request finds
    (the service starts after the routes, so it is looked up per request)."""
    return lambda cluster: partial(handler, cluster)
