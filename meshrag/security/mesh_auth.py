"""Signed /_mesh/ traffic on both ends: ``RpcAuth`` (a node's keys, clock and replay cache)
and the aiohttp pieces that apply it to every /_mesh/ route.

One middleware guards every route under /_mesh/ (replication, search, repair,
ring, embed, generate, keys), so no route can forget its check; push-pull is
the exception, its body being sealed by the gossip codec (a MAC or AES-GCM
with a gossip key, a timestamp and a nonce, checked just as strictly). A
refused request is answered 401 with the reason as its error code (missing,
malformed, unknown_key, bad_signature, stale, replayed), counted by reason,
and logged at most once per reason every LOG_EVERY_S seconds (a node with the
wrong secret retries every second).

Responses are signed in ``on_response_prepare``, when the headers go out:
every answer to a verified request (errors included) is signed over its status,
the request's nonce and its body digest (STREAMED for a streamed response).
In dev mode there is no RpcAuth: nothing is signed or checked.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Mapping

from aiohttp import web

from meshrag.clock import Clock
from meshrag.errors import MeshragError
from meshrag.security import signing
from meshrag.security.keyring import RPC, Keyring
from meshrag.security.replay import ReplayCache
from meshrag.security.signing import AuthError, Verified

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0
MESH_PREFIX = "/_mesh/"
VERIFIED_KEY = web.RequestKey("meshrag.verified", Verified)
Digest = Callable[[bytes], Awaitable[str]]


class Unauthorized(MeshragError):
    """A /_mesh/ request whose signature did not pass; the code is the reason."""

    status = 401

    def __init__(self, error: AuthError) -> None:
        super().__init__(error.message, field="signature")
        self.code = error.reason


async def inline_digest(body: bytes) -> str:
    return signing.digest(body)


class RpcAuth:
    """Signs this node's /_mesh/ requests with the keyring's primary and checks others'.

    ``window_s`` bounds how far a request's timestamp may be from this node's clock
    (node.py passes cluster.max_clock_drift_s, the drift the versions already tolerate).
    """

    def __init__(self, keyring: Keyring, sender: str, clock: Clock, window_s: float, replay_capacity: int = 200_000) -> None:
        self.keyring = keyring
        self.sender = sender
        self.clock = clock
        self.replay = ReplayCache(window_s, replay_capacity)
        self.rejected_requests: dict[str, int] = {reason: 0 for reason in signing.REASONS}
        self.rejected_responses: dict[str, int] = {reason: 0 for reason in signing.REASONS}
        self._logged_at: dict[str, float] = {}

    def lookup(self, kid: str) -> bytes | None:
        return self.keyring.key(kid, RPC)

    def sign(self, method: str, path: str, body_digest: str) -> dict[str, str]:
        kid, key = self.keyring.primary(RPC)
        return signing.sign_request(key, kid, self.sender, method, path, body_digest, self.clock.wall())

    def verify(self, headers: Mapping[str, str], method: str, path: str, body_digest: str, remote: str = "?") -> Verified:
        try:
            return signing.verify_request(headers, method, path, body_digest, self.lookup, self.clock.wall(), self.replay)
        except AuthError as error:
            self.rejected_requests[error.reason] = self.rejected_requests.get(error.reason, 0) + 1
            self._log(error, f"refused a {method} {path} from {remote} (node {headers.get(signing.NODE_HEADER) or '?'}): "
                             f"{error.reason}: {error.message}")
            raise

    def sign_response(self, verified: Verified, status: int, body_digest: str) -> dict[str, str]:
        """Signed with the key the request used (its sender holds it), else the primary."""
        kid, key = verified.key_id, self.keyring.key(verified.key_id, RPC)
        if key is None:
            kid, key = self.keyring.primary(RPC)
        return signing.sign_response(key, kid, status, verified.nonce, body_digest)

    def check_response(self, headers: Mapping[str, str], status: int, nonce: str, body_digest: str) -> None:
        try:
            signing.verify_response(headers, status, nonce, body_digest, self.lookup)
        except AuthError as error:
            self.rejected_responses[error.reason] = self.rejected_responses.get(error.reason, 0) + 1
            raise

    def _log(self, error: AuthError, message: str) -> None:
        now = self.clock.now()
        if now - self._logged_at.get(error.reason, -1e18) >= LOG_EVERY_S:
            self._logged_at[error.reason] = now
            if error.reason == signing.UNKNOWN_KEY:
                message += " -- is that node started with this cluster's --secret-file?"
            log.warning("%s", message)


def install(app: web.Application, auth: RpcAuth | None, digest: Digest = inline_digest,
            exempt: tuple[str, ...] = ()) -> None:
    """Guard every /_mesh/ route of ``app`` but ``exempt`` (place before the routes run:
    the middleware goes last, inside the error middleware, so a refusal is rendered as
    every other error) and sign the answers."""
    if auth is None:
        return
    app.middlewares.append(_middleware(auth, digest, exempt))

    async def sign(request: web.Request, response: web.StreamResponse) -> None:
        verified = request.get(VERIFIED_KEY)
        if verified is None:
            return
        body = response.body if isinstance(response, web.Response) else None
        body_digest = await digest(body) if isinstance(body, bytes) else signing.STREAMED
        response.headers.update(auth.sign_response(verified, response.status, body_digest))

    app.on_response_prepare.append(sign)


def _middleware(auth: RpcAuth, digest: Digest, exempt: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not request.path.startswith(MESH_PREFIX) or request.path in exempt:
            return await handler(request)
        body_digest = await digest(await request.read())
        try:
            request[VERIFIED_KEY] = auth.verify(request.headers, request.method, request.raw_path, body_digest, request.remote or "?")
        except AuthError as error:
            raise Unauthorized(error) from None
        return await handler(request)

    return middleware
