"""transport.py: the asyncio adapters node.py uses, over real loopback sockets and HTTP."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from dataclasses import dataclass
from typing import Callable

import aiohttp
from aiohttp import web

from meshrag.clock import SystemClock
from meshrag.gossip import (PUSH_PULL_PATH, AsyncioTransport, GossipDatagramProtocol, GossipSettings, Memberlist,
                            MemberState)
from meshrag.gossip.transport import join_address, split_address
from meshrag.identity import NodeIdentity

FAST = GossipSettings(probe_interval_s=0.2, probe_timeout_s=0.1, gossip_interval_s=0.05, suspicion_min_floor_s=0.6,
                      leave_timeout_s=1.0)


@dataclass
class RealMember:
    memberlist: Memberlist
    endpoint: asyncio.DatagramTransport
    runner: web.AppRunner

    async def close(self) -> None:
        self.memberlist.stop()
        self.endpoint.close()
        await self.runner.cleanup()


async def bind_udp_and_tcp(loop: asyncio.AbstractEventLoop, make_protocol: Callable[[], GossipDatagramProtocol],
                           runner: web.AppRunner) -> tuple[asyncio.DatagramTransport, GossipDatagramProtocol, int]:
    """A UDP port the OS picked, and TCP on the same number. Another process (the node
    processes of other tests) may hold that TCP port as an outgoing connection's
    ephemeral port: then try another pair, a bounded number of times."""
    for _ in range(20):
        protocol = make_protocol()  # a fresh one per try: a closed endpoint's protocol is spent
        endpoint, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=("127.0.0.1", 0))
        port = endpoint.get_extra_info("sockname")[1]
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            endpoint.close()
            continue
        return endpoint, protocol, port
    raise RuntimeError("no port number free for both UDP and TCP in 20 tries")


async def start_member(name: str, session: aiohttp.ClientSession) -> RealMember:
    """UDP and HTTP on the same port number, wired as node.py does it."""
    loop = asyncio.get_running_loop()
    holder: list[Memberlist] = []

    async def push_pull(request: web.Request) -> web.Response:
        reply = holder[0].handle_push_pull(await request.read(), str(request.remote))
        return web.Response(body=reply) if reply is not None else web.Response(status=400)

    app = web.Application()
    app.router.add_post(PUSH_PULL_PATH, push_pull)
    runner = web.AppRunner(app)
    await runner.setup()
    endpoint, protocol, port = await bind_udp_and_tcp(
        loop, lambda: GossipDatagramProtocol(lambda data, addr: holder[0].handle_datagram(data, addr)), runner)
    member = Memberlist(NodeIdentity(f"id-{name}", name, 1), f"127.0.0.1:{port}",
                        transport=AsyncioTransport(loop, protocol, session), scheduler=loop, clock=SystemClock(),
                        rng=random.Random(name), settings=FAST, secret="a-real-cluster-secret",
                        metadata={"zone": "z1", "roles": ["storage"]})
    holder.append(member)
    member.start()
    return RealMember(member, endpoint, runner)


async def wait_for(condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def test_members_join_gossip_and_leave_over_real_sockets() -> None:
    async with aiohttp.ClientSession() as session:
        members = [await start_member(name, session) for name in ("a", "b", "c")]
        try:
            seed = members[0].memberlist.table.local.address
            for member in members[1:]:
                member.memberlist.join([seed])

            def everyone_alive() -> bool:
                return all(len([m for m in r.memberlist.members() if m.state == MemberState.ALIVE]) == 3 for r in members)

            assert await wait_for(everyone_alive)
            done = asyncio.get_running_loop().create_future()
            members[2].memberlist.leave(lambda: done.done() or done.set_result(None))
            await asyncio.wait_for(done, 3)
            assert await wait_for(lambda: all(r.memberlist.member("id-c").state == MemberState.LEFT for r in members[:2]))
        finally:
            for member in members:
                await member.close()


async def test_garbage_on_the_socket_is_counted_and_ignored() -> None:
    async with aiohttp.ClientSession() as session:
        member = await start_member("x", session)
        try:
            host, port = split_address(member.memberlist.table.local.address)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for payload in (b"", bytes([2, 1]) + b"\x01" * 60, b"hello world" * 200):
                    sender.sendto(payload, (host, port))
            assert await wait_for(lambda: member.memberlist.stats.rejected == 3)
            rejections = member.memberlist.stats.rejections
            assert (rejections["too_short"], rejections["wrong_cluster"], rejections["oversized"]) == (1, 1, 1)
        finally:
            await member.close()


def test_addresses_round_trip_for_ipv4_and_ipv6() -> None:
    assert split_address("10.0.0.1:7070") == ("10.0.0.1", 7070)
    assert split_address(join_address("::1", 7070)) == ("::1", 7070)
    assert join_address("::1", 7070) == "[::1]:7070"


async def test_host_names_are_resolved_once_in_the_background() -> None:
    async with aiohttp.ClientSession() as session:
        receiver = await start_member("r", session)
        sender = await start_member("s", session)
        try:
            port = split_address(receiver.memberlist.table.local.address)[1]
            transport = sender.memberlist.transport
            before = receiver.memberlist.stats.packets_received
            transport.send(f"localhost:{port}", b"first")  # dropped while the name resolves
            assert await wait_for(lambda: f"localhost:{port}" in transport._resolved)
            transport.send(f"localhost:{port}", b"second")
            assert await wait_for(lambda: receiver.memberlist.stats.packets_received >= before + 1)
            transport.send("no-such-host.invalid:1", b"x")
            assert await wait_for(lambda: transport.send_errors == 1)
        finally:
            await sender.close()
            await receiver.close()
