"""The edges of the pure protocol: how it sends, how it waits.

The protocol never opens sockets or reads the clock. It gets:
- a `Transport`: `send` for one UDP datagram (fire and forget) and `push_pull`
  for one request/response over a reliable stream (HTTP in a node, memory in
  the simulator), answering through a callback so the protocol stays sync;
- a `Scheduler`: `call_later(delay, fn)` returning a handle with `cancel()`;
  an asyncio event loop already is one.

This module also holds the asyncio adapters node.py wires up: a
`DatagramProtocol` that feeds received datagrams to the memberlist, and
`AsyncioTransport`, which sends through the UDP endpoint and runs push-pull
as an HTTP POST on an aiohttp session that node.py owns.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

PUSH_PULL_PATH = "/_mesh/gossip/push-pull"
PUSH_PULL_CONTENT_TYPE = "application/x-meshrag-gossip"
RESOLVE_RETRY_S = 30.0


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class Transport(Protocol):
    def send(self, address: str, payload: bytes) -> None:
        """Send one datagram to "host:port"; failures are the network's loss, never raised."""

    def push_pull(self, address: str, payload: bytes, timeout: float, on_reply: Callable[[bytes | None], None]) -> None:
        """Send a full-state request; later call on_reply(reply bytes) or on_reply(None) on any failure."""


def split_address(address: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" -> (host, port); raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GossipDatagramProtocol(asyncio.DatagramProtocol):
    """Feeds datagrams to `handle(payload, "host:port")`; the memberlist never raises from it."""

    def __init__(self, handle: Callable[[bytes, str], None]) -> None:
        self._handle = handle
        self.transport: asyncio.DatagramTransport | None = None
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._handle(data, join_address(str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) surface here; they say nothing the probes don't.
        self.errors += 1


class AsyncioTransport:
    """Transport of a real node: UDP via the endpoint of `GossipDatagramProtocol`, push-pull via HTTP.

    Host names are resolved once, asynchronously, and cached: `sendto` with a
    name would resolve on the event loop and block it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: GossipDatagramProtocol,
                 session: aiohttp.ClientSession, *, scheme: str = "http", path: str = PUSH_PULL_PATH) -> None:
        self._loop = loop
        self._protocol = protocol
        self._session = session
        self._scheme = scheme
        self._path = path
        self._resolved: dict[str, tuple[str, int]] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._failed_until: dict[str, float] = {}
        self.send_errors = 0

    def send(self, address: str, payload: bytes) -> None:
        target = self._resolved.get(address)
        if target is None:
            self._resolve(address)
            return  # a datagram sent while the name resolves is lost, as datagrams may be
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            return
        try:
            transport.sendto(payload, target)
        except OSError:
            self.send_errors += 1

    def _resolve(self, address: str) -> None:
        """Resolve "host:port" once, in the background; a failure is not retried for a while."""
        if address in self._resolving or self._loop.time() < self._failed_until.get(address, 0.0):
            return
        try:
            host, port = split_address(address)
            ipaddress.ip_address(host)
            self._resolved[address] = (host, port)
            return
        except ValueError:
            pass
        self._resolving[address] = self._loop.create_task(self._lookup(address))

    async def _lookup(self, address: str) -> None:
        try:
            host, port = split_address(address)
            endpoint = self._protocol.transport
            sock = endpoint.get_extra_info("socket") if endpoint is not None else None
            family = sock.family if sock is not None else socket.AF_UNSPEC  # an IPv4 socket cannot send to ::1
            infos = await self._loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
            self._resolved[address] = infos[0][4][:2]
        except (OSError, ValueError, IndexError):
            self.send_errors += 1
            self._failed_until[address] = self._loop.time() + RESOLVE_RETRY_S
        finally:
            self._resolving.pop(address, None)

    def push_pull(self, address: str, payload: bytes, timeout: float, on_reply: Callable[[bytes | None], None]) -> None:
        self._loop.create_task(self._post(address, payload, timeout, on_reply))

    async def _post(self, address: str, payload: bytes, timeout: float, on_reply: Callable[[bytes | None], None]) -> None:
        import aiohttp

        url = f"{self._scheme}://{address}{self._path}"
        reply: bytes | None = None
        try:
            async with self._session.post(url, data=payload, headers={"Content-Type": PUSH_PULL_CONTENT_TYPE},
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                if response.status == 200:
                    reply = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            log.debug("push-pull with %s failed: %s", address, exc)
        on_reply(reply)
