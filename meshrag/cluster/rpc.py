"""Peer client: msgpack over HTTP to another node's /_mesh/ routes.

One aiohttp session (connection pool) per node, built by node.py and passed
in. Every call has a deadline; every failure becomes a ``PeerError`` naming
the peer, so callers fail over, hint or report without catching aiohttp's
zoo of exceptions. Outside dev mode every request is signed and every 200
answer's signature checked (security/signing.py: HMAC with a key derived from
the cluster secret, bound to method, path, body digest, time, nonce and
sender; the secret itself never travels). A 401 whose code says the peer does
not know our key is raised as ``PeerError`` with ``auth_reason`` set, so a
joining node can say why the cluster refused it.

Bodies go through a BodyCodec, shared with api/internal.py: a large body
(replicated documents with their vectors, a partition's digest entries: up to
cluster.max_message_bytes) takes milliseconds to pack or unpack, and gossip
shares the event loop, so bodies over OFFLOAD_BYTES are packed and unpacked in
the executor node.py hands in. Small ones stay inline: an executor hop
(~50 us) costs more than packing a few KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Executor
from typing import Any, AsyncIterator, Callable, Iterator, Sequence, TypeVar

import aiohttp
import numpy as np

from meshrag import wire
from meshrag.security import signing
from meshrag.security.mesh_auth import RpcAuth
from meshrag.security.signing import AuthError

T = TypeVar("T")
OFFLOAD_BYTES = 128 * 1024  # ~0.1 ms of packing: below it, the executor hop costs more than it saves
_SAMPLED_ABOVE = 16  # containers with more items are estimated from their first one


class PeerError(Exception):
    def __init__(self, address: str, reason: str, status: int | None = None, retry_after_s: float | None = None,
                 auth_reason: str | None = None) -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason
        self.status = status
        self.retry_after_s = retry_after_s  # from a 503's Retry-After
        self.auth_reason = auth_reason  # a refused signature (401's code), or a reply whose signature failed


def estimated_size(value: Any) -> int:
    """Roughly the bytes ``wire.pack(value)`` makes, far cheaper than packing: a container of
    many items (documents, hits, entries: bodies are lists of like items) counts as its length
    times its first item, so this visits a few items per level, not the whole body."""
    if isinstance(value, (str, bytes)):
        return len(value) + 5
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + 16
    if isinstance(value, dict):
        pairs = list(value.items()) if len(value) <= _SAMPLED_ABOVE else [next(iter(value.items()))]
        return _container(pairs, len(value))
    if isinstance(value, (list, tuple)):
        return _container(value if len(value) <= _SAMPLED_ABOVE else value[:1], len(value))
    return 9  # numbers, booleans, None


def _container(sample: Sequence[Any], length: int) -> int:
    if not sample:
        return 5
    return 5 + sum(map(estimated_size, sample)) * length // len(sample)


class BodyCodec:
    """msgpack bodies (wire.pack/unpack); those over ``offload_bytes`` in ``executor``
    (without one, everything is inline: tools and tests)."""

    def __init__(self, executor: Executor | None = None, offload_bytes: int = OFFLOAD_BYTES) -> None:
        self._executor = executor
        self._offload_bytes = offload_bytes

    def offloads(self, size: int) -> bool:
        return self._executor is not None and size >= self._offload_bytes

    async def pack(self, body: Any) -> bytes:
        if not self.offloads(estimated_size(body)):
            return wire.pack(body)
        return await asyncio.get_running_loop().run_in_executor(self._executor, wire.pack, body)

    async def digest(self, payload: bytes) -> str:
        """The hex SHA-256 a signature covers; a large body is hashed in the executor
        (hashlib releases the GIL: ~10 ms for 16 MiB, too long for the loop gossip shares)."""
        if not self.offloads(len(payload)):
            return signing.digest(payload)
        return await asyncio.get_running_loop().run_in_executor(self._executor, signing.digest, payload)

    async def unpack(self, payload: bytes) -> Any:
        return await self.decode(payload, lambda body: body)

    async def decode(self, payload: bytes, parse: Callable[[Any], T]) -> T:
        """``parse(unpack(payload))``: validation that walks every string of a large body
        (UTF-8, NUL checks) belongs off the loop as much as the unpacking does."""
        if not self.offloads(len(payload)):
            return parse(wire.unpack(payload))
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: parse(wire.unpack(payload)))


class PeerClient:
    def __init__(self, session: aiohttp.ClientSession, auth: RpcAuth | None, timeout_s: float, codec: BodyCodec | None = None,
                 scheme: str = "http") -> None:
        self._session = session
        self.scheme = scheme  # https when the cluster runs TLS (the session then trusts the cluster CA)
        self._auth = auth  # None in dev mode: nothing signed
        self.timeout_s = timeout_s
        self._codec = codec or BodyCodec()

    async def call(self, address: str, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        return await self.call_packed(address, path, await self._codec.pack(body), timeout_s)

    async def _headers(self, path: str, payload: bytes) -> dict[str, str]:
        headers = {"Content-Type": wire.MSGPACK, "Accept": wire.MSGPACK}
        if self._auth is not None:
            headers.update(self._auth.sign("POST", path, await self._codec.digest(payload)))
        return headers

    async def _check_reply(self, address: str, response: aiohttp.ClientResponse, nonce: str | None, payload: bytes | None) -> None:
        """A 200 answer must be signed over our request's nonce (a forged or replayed answer is an error)."""
        if self._auth is None or nonce is None:
            return
        body_digest = signing.STREAMED if payload is None else await self._codec.digest(payload)
        try:
            self._auth.check_response(response.headers, response.status, nonce, body_digest)
        except AuthError as error:
            raise PeerError(address, f"reply refused: {error.message}", response.status, auth_reason=error.reason) from None

    async def call_packed(self, address: str, path: str, payload: bytes, timeout_s: float | None = None) -> Any:
        """Send an already-packed body (hints are stored packed)."""
        headers = await self._headers(path, payload)
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        with _as_peer_error(address, timeout.total or self.timeout_s):
            async with self._session.post(f"{self.scheme}://{address}{path}", data=payload, headers=headers, timeout=timeout) as response:
                reply = await response.read()
                if response.status != 200:
                    raise _status_error(address, reply, response)
                await self._check_reply(address, response, headers.get(signing.NONCE_HEADER), reply)
                return await self._codec.unpack(reply)

    async def stream(self, address: str, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        """A streamed reply: the msgpack objects the peer writes one after another, as they
        arrive. Connecting and the status line are bounded by the client's timeout; gaps in
        the stream are the caller's to bound (the generation router's stall timeout).
        Closing the iterator closes the connection, which cancels the peer's handler.
        The reply's signature covers its status and our nonce, not the frames (signing.py)."""
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout_s, sock_connect=self.timeout_s)
        payload = wire.pack(body)
        headers = await self._headers(path, payload)
        with _as_peer_error(address, self.timeout_s):
            async with self._session.post(f"{self.scheme}://{address}{path}", data=payload, headers=headers, timeout=timeout) as response:
                if response.status != 200:
                    raise _status_error(address, await asyncio.wait_for(response.read(), self.timeout_s), response)
                await self._check_reply(address, response, headers.get(signing.NONCE_HEADER), None)
                unpacker = wire.stream_unpacker()
                async for data in response.content.iter_any():
                    unpacker.feed(data)
                    for item in unpacker:
                        yield item


@contextlib.contextmanager
def _as_peer_error(address: str, timeout_s: float) -> Iterator[None]:
    """Every failure of a call to ``address`` as a PeerError naming it (cancellation and a
    closed stream, BaseExceptions, pass through)."""
    try:
        yield
    except PeerError:
        raise
    except asyncio.TimeoutError:
        raise PeerError(address, f"no answer within {timeout_s:.1f} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise PeerError(address, f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # a garbled reply or frame must not crash the caller's loop
        raise PeerError(address, f"bad reply: {exc!r}") from None


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _status_error(address: str, payload: bytes, response: aiohttp.ClientResponse) -> PeerError:
    """A non-200 answer as a PeerError; a 401 carries its reason (signing.REASONS) in auth_reason."""
    status = response.status
    try:
        error = wire.unpack(payload)["error"]
        text, code = f"HTTP {status}: {error['message']}", error.get("code")
    except Exception:
        text, code = f"HTTP {status}: {payload[:200]!r}", None
    auth_reason = code if status == 401 and code in signing.REASONS else None
    return PeerError(address, text, status, _retry_after(response), auth_reason)
