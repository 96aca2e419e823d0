"""Cluster membership: SWIM with the Lifeguard extensions, after HashiCorp memberlist.

The protocol is a pure state machine (memberlist.py and the modules it
composes); node.py supplies the real edges. How node.py wires it:

    loop = asyncio.get_running_loop()
    protocol = GossipDatagramProtocol(lambda data, addr: members.handle_datagram(data, addr))
    await loop.create_datagram_endpoint(lambda: protocol, local_addr=(bind_host, port))  # same port as HTTP
    members = Memberlist(
        identity,                      # meshrag.identity.NodeIdentity (persistent id, generation per start)
        config.advertise_address,      # "host:port" others reach us at (UDP and HTTP)
        transport=AsyncioTransport(loop, protocol, http_session),  # session owned by node.py
        scheduler=loop,                # anything with call_later(delay, fn) -> handle.cancel()
        clock=SystemClock(), rng=random.Random(),
        settings=GossipSettings(),     # every knob, memberlist's LAN values as the anchor
        secret=keyring,                # security/keyring.py (shared: rotations apply at once); "" in --dev:
                                       # a public key, integrity still checked
        encrypt=True,                  # AES-GCM packets (else HMAC); receivers accept both
        replay_window_s=60.0,          # drop packets that old or already seen (None in --dev)
        cluster="meshrag",             # packets of another cluster name are rejected as wrong_cluster
        metadata={"roles": [...], "zone": ..., "http": ..., "embedder": ..., "generator": {...}},
        listener=on_member_event,      # called with MemberEvent(kind, member, previous) on every change
    )
    members.start()
    members.join(config.node.join)     # push-pull with the seeds, retried with backoff until one answers

    # HTTP: POST PUSH_PULL_PATH (body: bytes, Content-Type PUSH_PULL_CONTENT_TYPE)
    reply = members.handle_push_pull(await request.read(), peer_address)  # bytes -> 200, None -> 400

    members.update_metadata({...})     # bumps our incarnation; ValidationError if > metadata_limit_bytes
    members.members()                  # [Member]: ourselves included, dead and left kept; Member.as_dict()
                                       # is the row of `meshrag status` and of /v1/cluster "members"
    members.stats                      # GossipStats counters; stats.rejections: {reason: count}
    members.health_score               # Lifeguard local health, 0 = healthy

    # SIGTERM: announce the leave, wait until it is out (or leave_timeout_s), then stop.
    done = loop.create_future()
    members.leave(lambda: done.done() or done.set_result(None))
    await done
    members.stop()

handle_datagram never raises: malformed, oversized, foreign or forged packets
are counted in stats.rejections (reasons: codec.REJECT_REASONS) and dropped.
sim.py runs the same Memberlist on virtual time for tests and benchmarks.
"""

from meshrag.gossip.codec import REJECT_REASONS
from meshrag.gossip.events import EventKind, GossipStats, MemberEvent
from meshrag.gossip.memberlist import Memberlist
from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.state import Member, MemberState
from meshrag.gossip.transport import (PUSH_PULL_CONTENT_TYPE, PUSH_PULL_PATH, AsyncioTransport, GossipDatagramProtocol,
                                      Scheduler, Transport)

__all__ = [
    "AsyncioTransport", "EventKind", "GossipDatagramProtocol", "GossipSettings", "GossipStats", "Member",
    "MemberEvent", "MemberState", "Memberlist", "PUSH_PULL_CONTENT_TYPE", "PUSH_PULL_PATH", "REJECT_REASONS",
    "Scheduler", "Transport",
]
