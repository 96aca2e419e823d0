"""What security costs: signed vs unsigned /_mesh/ calls, and gossip sealing with and without AES-GCM.

    .venv/bin/python scripts/bench_security.py [--calls 2000] [--packets 20000]

All in one process and one run, so the ratios compare like with like:
- HTTP: PeerClient -> an in-process aiohttp server on loopback, the same echo route under /_mesh/,
  interleaved, the best of 3 rounds each (the machine is shared),
  once without signing (dev mode) and once signed (request signed and verified, replay cache,
  response signed and verified), 1 KiB and 256 KiB bodies, sequential calls (latency per call);
- signing alone: sign_request + verify_request of a 1 KiB body, no network;
- gossip: seal + open of a ~300-byte compound datagram, HMAC-only vs AES-GCM, both with the
  replay window on (as a node outside dev mode runs), and the dev-mode codec without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import web

from meshrag import wire
from meshrag.api.errors import error_middleware
from meshrag.clock import SystemClock
from meshrag.cluster.rpc import PeerClient
from meshrag.gossip import codec
from meshrag.gossip.codec import Codec
from meshrag.localnode import free_port
from meshrag.security import mesh_auth, signing
from meshrag.security.keyring import RPC, Keyring
from meshrag.security.mesh_auth import RpcAuth
from meshrag.security.replay import ReplayCache

SECRET = "b" * 64


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type=wire.MSGPACK)


async def _serve(auth: RpcAuth | None) -> tuple[web.AppRunner, str]:
    app = web.Application(middlewares=[error_middleware], client_max_size=8 << 20)
    app.add_routes([web.post("/_mesh/echo", _echo)])
    mesh_auth.install(app, auth)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"127.0.0.1:{port}"


async def _http(calls: int, size: int) -> dict[str, float]:
    body = {"blob": b"x" * size}
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        for name, signed in (("unsigned", False), ("signed", True)) * 3:  # interleaved; the best of 3 each
            server_auth = RpcAuth(Keyring([SECRET]), "server", SystemClock(), 60) if signed else None
            client_auth = RpcAuth(Keyring([SECRET]), "client", SystemClock(), 60) if signed else None
            runner, address = await _serve(server_auth)
            client = PeerClient(session, client_auth, 10.0)
            for _ in range(50):
                await client.call(address, "/_mesh/echo", body)
            start = time.perf_counter()
            for _ in range(calls):
                await client.call(address, "/_mesh/echo", body)
            out[name] = min(out.get(name, float("inf")), (time.perf_counter() - start) / calls * 1e6)
            await runner.cleanup()
    out["ratio"] = out["signed"] / out["unsigned"]
    return out


def _signing(rounds: int) -> float:
    ring = Keyring([SECRET])
    kid, key = ring.primary(RPC)
    replay = ReplayCache(60, 10 * rounds)
    payload = b"y" * 1024
    start = time.perf_counter()
    for _ in range(rounds):
        now = time.time()
        body_digest = signing.digest(payload)
        headers = signing.sign_request(key, kid, "node-a", "POST", "/_mesh/replica/apply", body_digest, now)
        signing.verify_request(headers, "POST", "/_mesh/replica/apply", signing.digest(payload), lambda k: ring.key(k, RPC), now, replay)
    return (time.perf_counter() - start) / rounds * 1e6


def _gossip(packets: int) -> dict[str, float]:
    meta = codec.encode_metadata({"zone": "z1", "roles": ["storage", "coordinator"], "http": "10.0.0.1:7070", "model": "m" * 40})
    messages = [codec.encode_ping(7, "n" * 32, 12345), codec.encode_alive("c" * 32, "node-c", "10.0.0.3:7070", 3, 9, meta),
                codec.encode_suspect("d" * 32, 1, 2, "a" * 32)]
    prefix = Codec.sender_prefix("a" * 32, 2, 7)
    out: dict[str, float] = {}
    variants = {
        "dev (public key, no window)": lambda: (Codec("b", ""), Codec("b", "")),
        "hmac + window": lambda: (Codec("b", SECRET, clock=SystemClock(), window_s=60),
                                  Codec("b", SECRET, clock=SystemClock(), window_s=60, replay_capacity=2 * packets)),
        "aes-gcm + window": lambda: (Codec("b", SECRET, clock=SystemClock(), window_s=60, encrypt=True),
                                     Codec("b", SECRET, clock=SystemClock(), window_s=60, replay_capacity=2 * packets)),
    }
    size = 0
    for name, make in list(variants.items()) * 3:  # interleaved; the best of 3 each
        sealer, opener = make()
        start = time.perf_counter()
        for _ in range(packets):
            data = sealer.seal_datagram(prefix, messages)
            opener.open_datagram(data, 1400)
        out[name] = min(out.get(name, float("inf")), (time.perf_counter() - start) / packets * 1e6)
        size = len(data)
    base = out["dev (public key, no window)"]
    out.update({f"{name} / dev": out[name] / base for name in list(variants)[1:]})
    out["datagram bytes"] = size
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--packets", type=int, default=20000)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "http_1KiB_us_per_call": asyncio.run(_http(args.calls, 1024)),
        "http_256KiB_us_per_call": asyncio.run(_http(max(1, args.calls // 4), 256 * 1024)),
        "sign_and_verify_1KiB_us": _signing(args.packets),
        "gossip_seal_open_us_per_datagram": _gossip(args.packets),
    }
    print(json.dumps(report, indent=2, default=lambda v: round(v, 2)))


if __name__ == "__main__":
    main()
