"""Node-to-node routes under /_mesh/.

Bodies are sealed by the gossip codec with the cluster secret, so the route
itself needs no further authentication: a forged or foreign body is rejected
by the codec and answered 400, and counted in the gossip rejection metrics.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from meshrag.errors import PayloadTooLarge, Unavailable
from meshrag.gossip import PUSH_PULL_CONTENT_TYPE, PUSH_PULL_PATH, Memberlist
from meshrag.gossip.settings import GossipSettings


class MeshView(Protocol):
    members: Memberlist | None


class InternalApi:
    def __init__(self, node: MeshView, settings: GossipSettings) -> None:
        self._node = node
        self._settings = settings

    def routes(self) -> list[web.RouteDef]:
        return [web.post(PUSH_PULL_PATH, self.push_pull)]

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
