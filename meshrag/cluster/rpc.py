"""Peer client: msgpack over HTTP to another node's /_mesh/ routes.

One aiohttp session (connection pool) per node, built by node.py and passed
in. Every call has a deadline; every failure becomes a ``PeerError`` naming
the peer, so callers fail over, hint or report without catching aiohttp's
zoo of exceptions. Requests carry the cluster secret (checked in constant
time by api/internal.py).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import aiohttp

from meshrag import wire

SECRET_HEADER = "X-Meshrag-Secret"


class PeerError(Exception):
    def __init__(self, address: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason
        self.status = status


def secret_matches(presented: str | None, secret: str) -> bool:
    """No secret configured (dev / loopback) admits everyone; otherwise constant-time compare."""
    return not secret or hmac.compare_digest((presented or "").encode(), secret.encode())


class PeerClient:
    def __init__(self, session: aiohttp.ClientSession, secret: str, timeout_s: float) -> None:
        self._session = session
        self._secret = secret
        self.timeout_s = timeout_s

    async def call(self, address: str, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        return await self.call_packed(address, path, wire.pack(body), timeout_s)

    async def call_packed(self, address: str, path: str, payload: bytes, timeout_s: float | None = None) -> Any:
        """Send an already-packed body (hints are stored packed)."""
        headers = {"Content-Type": wire.MSGPACK, "Accept": wire.MSGPACK}
        if self._secret:
            headers[SECRET_HEADER] = self._secret
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        try:
            async with self._session.post(f"http://{address}{path}", data=payload, headers=headers, timeout=timeout) as response:
                payload = await response.read()
                if response.status != 200:
                    raise PeerError(address, _error_text(payload, response.status), response.status)
                return wire.unpack(payload)
        except PeerError:
            raise
        except asyncio.TimeoutError:
            raise PeerError(address, f"no answer within {timeout.total:.1f} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerError(address, f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:  # a garbled reply must not crash the caller's loop
            raise PeerError(address, f"bad reply: {exc!r}") from None


def _error_text(payload: bytes, status: int) -> str:
    try:
        body = wire.unpack(payload)
        return f"HTTP {status}: {body['error']['message']}"
    except Exception:
        return f"HTTP {status}: {payload[:200]!r}"
