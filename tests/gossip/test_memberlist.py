"""memberlist.py: the public API node.py calls, and robustness against hostile input."""

from __future__ import annotations

import random

import pytest

from meshrag.errors import ValidationError
from meshrag.gossip import codec
from meshrag.gossip.events import EventKind
from meshrag.gossip.state import MemberState
from tests.gossip.conftest import ClusterFactory


def _mutations(valid: list[bytes], rng: random.Random, count: int) -> list[bytes]:
    """Random bytes, and valid packets bit-flipped, truncated or extended (never left unchanged)."""
    out: list[bytes] = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            out.append(rng.randbytes(rng.randint(0, 1600)))
            continue
        data = bytearray(rng.choice(valid))
        if kind == 1:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            if bytes(data) in valid:
                data[0] ^= 0x80
        elif kind == 2:
            del data[rng.randrange(len(data)):]
        else:
            data += rng.randbytes(rng.randint(1, 1500))
        out.append(bytes(data))
    return out


def test_a_hundred_thousand_hostile_datagrams_are_all_rejected_and_the_node_stays_healthy(cluster: ClusterFactory) -> None:
    sim, nodes, log = cluster(size=8)
    target = nodes[3]
    captured: list[bytes] = []
    sim.taps.append(lambda node, address, payload: captured.append(payload) if len(captured) < 200 else None)
    sim.run_for(3)
    rng = random.Random(99)
    garbage = _mutations(captured, rng, 100_000)
    before = target.ml.stats.rejected
    for start in range(0, len(garbage), 5000):  # 5000 per 100 ms: 50k packets/s of virtual time
        batch = garbage[start:start + 5000]
        sim.at(sim.clock.now() + 0.1, lambda batch=batch: [sim.inject(target.name, data) for data in batch])
        sim.run_for(0.1)
    sim.run_for(5)
    assert target.ml.stats.rejected - before == 100_000
    assert target.ml.stats.internal_errors == 0
    assert set(target.ml.stats.rejections) == set(codec.REJECT_REASONS)
    assert target.ml.stats.rejections["bad_mac"] > 50_000
    assert sim.converged(target.name, MemberState.ALIVE)
    assert not log.about(target.name, EventKind.SUSPECT)


def test_pings_for_another_node_id_are_not_answered(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=3)
    a, b = nodes[0].ml, nodes[1].ml
    stale = a.codec.seal_datagram(a.codec.sender_prefix(a.local_id, 1, 0), [codec.encode_ping(77, "somebody-else", 7)])
    sent = b.stats.packets_sent
    b.handle_datagram(stale, nodes[0].address)
    assert b.stats.misdirected == 1 and b.stats.packets_sent == sent


def test_packets_claiming_to_come_from_ourselves_are_rejected(cluster: ClusterFactory) -> None:
    _, nodes, _ = cluster(size=2)
    ml = nodes[0].ml
    echo = ml.codec.seal_datagram(ml.codec.sender_prefix(ml.local_id, 1, 0), [codec.encode_ack(1, 1)])
    ml.handle_datagram(echo, "10.0.0.0:7946")
    assert ml.stats.rejections["from_self"] == 1


def test_bad_push_pull_bodies_get_no_reply_and_are_counted(cluster: ClusterFactory) -> None:
    _, nodes, _ = cluster(size=2)
    ml = nodes[0].ml
    assert ml.handle_push_pull(b"\x01\x02garbage" * 10, "10.0.0.9:1") is None
    assert ml.stats.rejected == 1


def test_members_lists_everyone_with_the_status_columns(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=4)
    sim.crash(nodes[3].name)
    sim.run_for(30)
    rows = {m.name: m.as_dict() for m in nodes[0].ml.members()}
    assert set(rows) == {"n000", "n001", "n002", "n003"}
    assert rows["n003"]["state"] == "dead" and rows["n000"]["state"] == "alive"
    assert set(rows["n001"]) >= {"name", "id", "address", "zone", "roles", "state", "incarnation", "since"}
    assert rows["n001"]["zone"] == "z1" and rows["n001"]["roles"] == ["storage", "coordinator"]


def test_metadata_over_the_limit_is_refused_with_a_clear_error(cluster: ClusterFactory) -> None:
    _, nodes, _ = cluster(size=1)
    with pytest.raises(ValidationError) as info:
        nodes[0].ml.update_metadata({"models": ["m" * 100] * 10})
    assert info.value.field == "gossip.metadata" and "512" in info.value.message
    with pytest.raises(ValidationError):
        nodes[0].ml.update_metadata({"bad": object()})


def test_a_stopped_memberlist_ignores_input_and_fires_no_timers(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=3)
    ml = nodes[0].ml
    ml.stop()
    sent, received = ml.stats.packets_sent, ml.stats.packets_received
    sim.run_for(10)
    ml.handle_datagram(b"anything", "1.2.3.4:5")
    assert ml.stats.packets_sent == sent
    assert ml.stats.packets_received == received and ml.stats.rejected == 0
