"""codec.py and probe.py against forgery, replay and key rotation: other secrets, encrypted
round trips, stale and replayed packets, and acks that do not answer an outstanding probe."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshrag.clock import VirtualClock
from meshrag.gossip import codec
from meshrag.gossip.codec import Codec, Rejected
from meshrag.gossip.events import EventKind
from meshrag.gossip.state import MemberState
from meshrag.security.keyring import Keyring
from tests.gossip.conftest import ClusterFactory

LIMIT = 1400
SECRET, NEW = "the-cluster-secret-1234", "the-next-cluster-secret-5678"


def _codec(clock: VirtualClock, keys: Keyring | str = SECRET, encrypt: bool = False) -> Codec:
    return Codec("prod", keys, clock=clock, window_s=60.0, encrypt=encrypt)


def _datagram(sealer: Codec, *messages: bytes) -> bytes:
    return sealer.seal_datagram(Codec.sender_prefix("node-a", 1, 0), list(messages) or [codec.encode_ack(1, 2)])


def _reason(opener: Codec, data: bytes) -> str:
    with pytest.raises(Rejected) as info:
        opener.open_datagram(data, LIMIT)
    return info.value.reason


def test_encrypted_packets_round_trip_and_hide_their_body() -> None:
    clock = VirtualClock()
    sealer, opener = _codec(clock, encrypt=True), _codec(clock)
    data = _datagram(sealer, codec.encode_ping(3, "node-secret-name", 9))
    assert b"node-secret-name" not in data and b"node-a" not in data
    assert opener.open_datagram(data, LIMIT).messages == [[codec.PING, 3, "node-secret-name", 9]]
    flipped = bytearray(data)
    flipped[40] ^= 1
    assert _reason(_codec(clock), bytes(flipped)) == "bad_mac"
    assert _reason(_codec(clock, NEW), _datagram(sealer)) == "unknown_key"


def test_stale_and_replayed_datagrams_are_dropped() -> None:
    clock = VirtualClock()
    sealer, opener = _codec(clock), _codec(clock)
    data = _datagram(sealer)
    opener.open_datagram(data, LIMIT)
    assert _reason(opener, data) == "replayed"
    old = _datagram(sealer)
    clock.advance(61)
    assert _reason(opener, old) == "stale"


def test_a_rotation_keeps_every_packet_accepted() -> None:
    clock = VirtualClock()
    ring_a, ring_b = Keyring([SECRET]), Keyring([SECRET])
    a, b = _codec(clock, ring_a), _codec(clock, ring_b)
    for ring in (ring_a, ring_b):  # keys install
        ring.install(NEW)
    ring_a.use(Keyring([NEW]).primary_id)  # a switched first, b not yet
    b.open_datagram(_datagram(a), LIMIT)
    a.open_datagram(_datagram(b), LIMIT)
    ring_b.use(ring_a.primary_id)
    for ring in (ring_a, ring_b):  # keys remove
        ring.remove(Keyring([SECRET]).primary_id)
    b.open_datagram(_datagram(a), LIMIT)
    assert _reason(a, _datagram(_codec(clock, SECRET))) == "unknown_key"


@settings(max_examples=150)
@given(st.binary(min_size=0, max_size=200), st.booleans())
def test_any_bytes_are_rejected_with_a_reason_never_raised(junk: bytes, encrypt: bool) -> None:
    clock = VirtualClock()
    opener = _codec(clock, encrypt=encrypt)
    with pytest.raises(Rejected) as info:
        opener.open_datagram(junk, LIMIT)
    assert info.value.reason in codec.REJECT_REASONS


@settings(max_examples=150)
@given(st.integers(0, codec.MAX_INT), st.integers(0, codec.MAX_INT), st.booleans(), st.integers(0, 200))
def test_sealed_messages_round_trip_and_any_flipped_byte_is_caught(seq: int, nonce: int, encrypt: bool, where: int) -> None:
    clock = VirtualClock()
    data = _datagram(_codec(clock, encrypt=encrypt), codec.encode_ack(seq, nonce))
    assert _codec(clock).open_datagram(data, LIMIT).messages == [[codec.ACK, seq, nonce]]
    damaged = bytearray(data)
    damaged[where % len(data)] ^= 0x80
    assert _reason(_codec(clock), bytes(damaged)) != ""  # rejected, whatever byte was hit


def test_an_ack_counts_only_with_its_probe_nonce_and_from_the_target(cluster: ClusterFactory) -> None:
    _, nodes, _ = cluster(size=3)
    a, b, c = (node.ml for node in nodes)
    results: list[bool] = []
    a._prober.probe(a.table.get(b.local_id), results.append)
    seq, pending = max(a._prober._pending.items())
    nonce = pending.nonce

    def ack_from(sender: Any, ack_nonce: int) -> bytes:
        return sender.codec.seal_datagram(sender._prefix, [codec.encode_ack(seq, ack_nonce)])

    a.handle_datagram(ack_from(b, nonce ^ 1), nodes[1].address)  # a stale ack of an earlier probe
    a.handle_datagram(ack_from(c, nonce), nodes[2].address)  # the right numbers, the wrong member
    assert results == [] and a.stats.unbound_acks == 2
    a.handle_datagram(ack_from(b, nonce), nodes[1].address)
    assert results == [True]


def test_replayed_acks_of_a_dead_member_do_not_keep_it_alive(cluster: ClusterFactory) -> None:
    sim, nodes, log = cluster(size=4)
    a, dead = nodes[0], nodes[3]
    captured: list[bytes] = []
    send = dead.ml.transport.send

    def capture(address: str, payload: bytes) -> None:
        if address == a.address:
            captured.append(payload)
        send(address, payload)

    dead.ml.transport.send = capture  # type: ignore[method-assign]
    sim.run_for(5.0)
    assert captured
    sim.crash(dead.name)
    for i in range(60):  # an attacker replays what the dead member sent, twice a second
        sim.at(sim.clock.now() + i * 0.5, lambda payload=captured[i % len(captured)]: sim.inject(a.name, payload, dead.address))
    sim.run_for(30.0)
    assert a.ml.table.get(dead.ml.local_id).state == MemberState.DEAD
    assert log.about(dead.name, EventKind.DEAD)
