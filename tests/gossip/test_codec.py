"""codec.py: packet layout, authentication and typed rejections."""

from __future__ import annotations

import random

import msgpack
import pytest

from meshrag.gossip import codec
from meshrag.gossip.codec import Codec, Rejected

LIMIT = 1400


@pytest.fixture()
def sealer() -> Codec:
    return Codec("prod", "a-cluster-secret-of-some-length")


def datagram(sealer: Codec, *messages: bytes) -> bytes:
    return sealer.seal_datagram(Codec.sender_prefix("node-a", 2, 7), list(messages))


def rejection(sealer: Codec, data: bytes, limit: int = LIMIT) -> str:
    with pytest.raises(Rejected) as info:
        sealer.open_datagram(data, limit)
    return info.value.reason


def test_a_compound_round_trips_with_sender_and_messages(sealer: Codec) -> None:
    meta = codec.encode_metadata({"zone": "z1", "roles": ["storage"]})
    data = datagram(sealer, codec.encode_ping(5, "node-b", 99), codec.encode_alive("node-c", "c", "10.0.0.3:7070", 1, 4, meta),
                    codec.encode_suspect("node-d", 1, 2, "node-a"))
    packet = sealer.open_datagram(data, LIMIT)
    assert (packet.sender_id, packet.generation, packet.incarnation) == ("node-a", 2, 7)
    assert packet.messages[0] == [codec.PING, 5, "node-b", 99]
    assert packet.messages[1][-1] == {"zone": "z1", "roles": ["storage"]}  # decoded metadata appended
    assert packet.messages[2] == [codec.SUSPECT, "node-d", 1, 2, "node-a"]


def test_each_kind_of_damage_has_its_own_reason(sealer: Codec) -> None:
    good = datagram(sealer, codec.encode_ack(1, 11))
    assert rejection(sealer, good[:10]) == "too_short"
    assert rejection(sealer, good + b"\0" * 1400) == "oversized"
    assert rejection(sealer, bytes([9]) + good[1:]) == "bad_version"
    assert rejection(sealer, good[:1] + bytes([codec.KIND_PUSH_PULL_REQUEST]) + good[2:]) == "wrong_kind"
    assert rejection(sealer, datagram(Codec("other-cluster", "a-cluster-secret-of-some-length"), codec.encode_ack(1, 11))) == "wrong_cluster"
    assert rejection(sealer, datagram(Codec("prod", "another-secret-entirely!!"), codec.encode_ack(1, 11))) == "unknown_key"
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    assert rejection(sealer, bytes(flipped)) == "bad_mac"
    assert rejection(sealer, good + b"\x00") == "bad_mac"  # an extended body no longer matches its tag


def test_dev_mode_still_checks_integrity() -> None:
    dev = Codec("dev", "")
    data = dev.seal_datagram(Codec.sender_prefix("n", 1, 0), [codec.encode_ack(3, 33)])
    assert dev.open_datagram(data, LIMIT).messages == [[codec.ACK, 3, 33]]
    damaged = bytearray(data)
    damaged[25] ^= 0x40
    with pytest.raises(Rejected, match="bad_mac"):
        dev.open_datagram(bytes(damaged), LIMIT)


@pytest.mark.parametrize("message", [
    [codec.PING, -1, "b", 1],            # negative sequence number
    [codec.PING, 1, "", 1],              # empty node id
    [codec.PING, 1, "x" * 65, 1],        # node id too long
    [codec.PING, 1, "b"],                # no probe nonce
    [codec.ACK, True, 1],                # bool is not an int
    [codec.ACK, 1],                      # an ack not bound to a probe nonce
    [codec.SUSPECT, "d", 1, 2],          # missing accuser
    [codec.ALIVE, "c", "c", "a:1", 1, 1, b"\x01"],  # metadata is not a map
    [codec.ALIVE, "c", "c", "a:1", 1, 1, codec.encode_metadata({"k": "v" * 600})],  # metadata over the limit
    [codec.STALE_VIEW, "a", 1, 1, 7],    # no such state
    "not a message",
])
def test_authenticated_but_malformed_messages_are_rejected(sealer: Codec, message: object) -> None:
    assert rejection(sealer, datagram(sealer, codec.pack(message))) == "malformed"


def test_unknown_message_types_are_skipped_for_forward_compatibility(sealer: Codec) -> None:
    packet = sealer.open_datagram(datagram(sealer, codec.pack([99, "future"]), codec.encode_ack(4, 44)), LIMIT)
    assert packet.messages == [[codec.ACK, 4, 44]]


def test_push_pull_state_round_trips_and_checks_records(sealer: Codec) -> None:
    meta = codec.encode_metadata({"zone": "z"})
    records = [["node-b", "b", "10.0.0.2:7070", 1, 3, 2, meta]]
    data = sealer.seal_state(codec.KIND_PUSH_PULL_REQUEST, ("node-a", 1, 0), True, records)
    state = sealer.open_state(data, codec.KIND_PUSH_PULL_REQUEST, 1 << 20)
    assert state.join and state.records[0][:7] == records[0] and state.records[0][7] == {"zone": "z"}
    with pytest.raises(Rejected, match="wrong_kind"):
        sealer.open_state(data, codec.KIND_PUSH_PULL_REPLY, 1 << 20)
    bad = sealer.seal_state(codec.KIND_PUSH_PULL_REQUEST, ("node-a", 1, 0), True, [["node-b", "b", "x:1", 1, 3, 9, meta]])
    with pytest.raises(Rejected, match="malformed"):
        sealer.open_state(bad, codec.KIND_PUSH_PULL_REQUEST, 1 << 20)


def test_signed_garbage_bodies_are_rejected_never_raised_otherwise(sealer: Codec) -> None:
    """Fuzz the body decoder behind a valid MAC (a buggy or hostile peer that has the secret)."""
    rng = random.Random(7)
    valid = datagram(sealer, codec.encode_ping(1, "b", 5), codec.encode_alive("c", "c", "a:1", 1, 1, codec.encode_metadata({})))
    body = valid[codec.HEADER_BYTES:-codec.MAC_BYTES]
    outcomes = {"accepted": 0, "rejected": 0}
    for _ in range(5000):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if rng.random() < 0.3:
            mutated = mutated[: rng.randrange(len(mutated))] + bytearray(rng.randbytes(rng.randint(0, 20)))
        try:
            sealer.open_datagram(sealer.seal(codec.KIND_DATAGRAM, bytes(mutated)), LIMIT)
            outcomes["accepted"] += 1
        except Rejected as rejected:
            assert rejected.reason in ("malformed", "too_short")  # an empty body is too short
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 2500  # most mutations break the structure; the rest decode to valid values


def test_msgpack_array_header_matches_msgpack() -> None:
    for count in (0, 15, 16, 65535, 65536):
        assert codec.array_header(count) == msgpack.packb([None] * count)[: len(codec.array_header(count))]
