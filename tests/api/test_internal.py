"""api/internal.py behind security/mesh_auth.py: every /_mesh/ request is verified before any
route runs; each kind of refusal is a 401 with its own code, counted by reason; answers are signed."""

from __future__ import annotations

from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from meshrag import wire
from meshrag.api.errors import error_middleware
from meshrag.api.internal import InternalApi
from meshrag.clock import VirtualClock
from meshrag.cluster.messages import APPLY_PATH, RING_PATH
from meshrag.gossip.settings import GossipSettings
from meshrag.localnode import free_port
from meshrag.security import mesh_auth, signing
from meshrag.security.keyring import RPC, Keyring
from meshrag.security.mesh_auth import RpcAuth

SECRET = "k" * 20
OLD = "an-older-installed-secret"
BODY = wire.pack({"ring": []})


class _StartingNode:
    """A node whose membership and cluster storage are not up yet."""

    members: Any = None
    cluster: Any = None


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, RpcAuth, VirtualClock]]:
    clock = VirtualClock(wall_start=1_800_000_000.0)
    auth = RpcAuth(Keyring([SECRET, OLD]), "server", clock, window_s=60.0)
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(InternalApi(_StartingNode(), GossipSettings(), 1 << 20).routes())
    mesh_auth.install(app, auth)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", auth, clock
    await runner.cleanup()


def _signed(secret: str, path: str, now: float, body: bytes = BODY, nonce: str | None = None) -> dict[str, str]:
    ring = Keyring([secret])
    kid, key = ring.primary(RPC)
    return signing.sign_request(key, kid, "client", "POST", path, signing.digest(body), now, nonce)


async def _post(url: str, headers: dict[str, str], body: bytes = BODY) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers={"Accept": wire.MSGPACK, **headers}) as response:
            return response.status, wire.unpack(await response.read()), response.headers


@pytest.mark.parametrize("path", [APPLY_PATH, RING_PATH])
async def test_an_unsigned_request_is_refused_401_missing(served: Any, path: str) -> None:
    base, auth, _ = served
    status, body, _ = await _post(base + path, {})
    assert status == 401 and body["error"]["code"] == "missing"
    assert auth.rejected_requests["missing"] == 1


async def test_each_kind_of_bad_signature_has_its_own_code_and_count(served: Any) -> None:
    base, auth, clock = served
    now = clock.wall()
    wrong_key = _signed("not-this-clusters-secret", RING_PATH, now)
    tampered = dict(_signed(SECRET, RING_PATH, now), **{signing.NODE_HEADER: "someone-else"})
    other_path = _signed(SECRET, APPLY_PATH, now)  # a signature for another route
    other_body = _signed(SECRET, RING_PATH, now, body=wire.pack({"ring": [1]}))
    stale = _signed(SECRET, RING_PATH, now - 61)
    future = _signed(SECRET, RING_PATH, now + 61)
    malformed = dict(_signed(SECRET, RING_PATH, now), **{signing.TIME_HEADER: "yesterday"})
    cases = [(wrong_key, "unknown_key"), (tampered, "bad_signature"), (other_path, "bad_signature"),
             (other_body, "bad_signature"), (stale, "stale"), (future, "stale"), (malformed, "malformed")]
    for headers, code in cases:
        status, body, _ = await _post(base + RING_PATH, headers)
        assert (status, body["error"]["code"]) == (401, code), headers
    assert auth.rejected_requests == {"missing": 0, "malformed": 1, "unknown_key": 1, "bad_signature": 3,
                                      "stale": 2, "replayed": 0}


async def test_a_good_request_passes_once_and_its_replay_is_refused(served: Any) -> None:
    base, auth, clock = served
    headers = _signed(SECRET, RING_PATH, clock.wall())
    status, body, response_headers = await _post(base + RING_PATH, headers)
    assert status == 503 and body["error"]["code"] == "unavailable"  # reached the route: storage is starting
    # The answer is signed over the request's nonce, with the key the request used.
    signing.verify_response(response_headers, status, headers[signing.NONCE_HEADER], signing.digest(wire.pack(body)),
                            auth.lookup)
    with pytest.raises(signing.AuthError):
        signing.verify_response(response_headers, status, "another-nonce", signing.digest(wire.pack(body)), auth.lookup)
    status, body, _ = await _post(base + RING_PATH, headers)
    assert (status, body["error"]["code"]) == (401, "replayed")
    assert auth.rejected_requests["replayed"] == 1


async def test_any_installed_key_is_accepted_during_a_rotation(served: Any) -> None:
    base, _, clock = served
    status, _, response_headers = await _post(base + RING_PATH, _signed(OLD, RING_PATH, clock.wall()))
    assert status == 503 and response_headers[signing.KEY_HEADER] == Keyring([OLD]).primary_id
