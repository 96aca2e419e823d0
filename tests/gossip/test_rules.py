"""rules.py: every membership transition, on simulated clusters running the real protocol."""

from __future__ import annotations

from meshrag.gossip import codec
from meshrag.gossip.events import EventKind
from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.sim import Simulation
from meshrag.gossip.state import MemberState
from tests.gossip.conftest import ClusterFactory


def test_a_suspect_refutes_with_a_higher_incarnation(cluster: ClusterFactory) -> None:
    sim, nodes, log = cluster()
    accuser, suspect = nodes[0], nodes[5]
    before = suspect.ml.table.local.incarnation
    accuser.ml.apply_suspect(suspect.node_id, suspect.generation, before, accuser.node_id)
    sim.run_for(3)
    assert suspect.ml.table.local.incarnation > before
    assert sim.converged(suspect.name, MemberState.ALIVE)
    kinds = [e[2] for e in log.about(suspect.name) if e[1] == accuser.name]
    assert kinds == [EventKind.SUSPECT, EventKind.ALIVE]
    assert not log.about(suspect.name, EventKind.DEAD)


def test_an_unanswered_suspicion_becomes_dead_everywhere(cluster: ClusterFactory) -> None:
    sim, nodes, log = cluster()
    victim = nodes[3]
    sim.crash(victim.name)
    sim.run_for(30)
    assert sim.converged(victim.name, MemberState.DEAD)
    first_suspect = min(e[0] for e in log.about(victim.name, EventKind.SUSPECT))
    first_dead = min(e[0] for e in log.about(victim.name, EventKind.DEAD))
    minimum, _, _ = sim.settings.suspicion_timeouts(len(nodes))
    assert first_dead - first_suspect >= minimum


def _dead_after(accusers: list[str]) -> float:
    """When does one node declare a silent member dead, given these accusers?"""
    sim = Simulation(4, GossipSettings(verify_before_dead=False, confirmation_probes=0))
    nodes = sim.build(12)
    sim.run_for(2)
    observer = nodes[0]
    # A member only the observer knows, at an address nobody answers: no other evidence arrives.
    observer.ml.apply_alive("ghost", "ghost", "192.0.2.9:7946", 1, 0, codec.encode_metadata({}), {}, rebroadcast=False)
    start = sim.clock.now()
    for accuser in accusers:
        observer.ml.apply_suspect("ghost", 1, 0, accuser)
    sim.run_for(60, stop=lambda: observer.ml.table.get("ghost").state == MemberState.DEAD)
    return sim.clock.now() - start


def test_independent_confirmations_shorten_the_suspicion_timeout() -> None:
    minimum, maximum, expected = GossipSettings().suspicion_timeouts(13)
    alone = _dead_after(["n005"])
    confirmed = _dead_after(["n005", "n006", "n007", "n008"])
    assert confirmed < minimum + 0.01
    assert confirmed < alone <= maximum + 0.01
    assert expected == 3


def test_a_node_that_cannot_hear_raises_its_health_score_and_probes_less(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=10)
    deaf = nodes[2]
    sent_before = deaf.ml.stats.packets_sent
    sim.stall(deaf.name, 20, receive_only=True)  # its timers run, acks and nacks wait
    sim.run_for(2.5)
    assert deaf.ml.health_score >= 3  # missed nacks from every helper
    interval = deaf.ml.awareness.scale(sim.settings.probe_interval_s)
    assert interval >= 4 * sim.settings.probe_interval_s
    sim.run_for(17.5 + 45)  # from 7, each successful probe takes one off: 8 + 7 + ... + 2 = 35 s
    assert deaf.ml.health_score == 0
    assert deaf.ml.stats.packets_sent > sent_before


def test_each_node_transmits_an_update_at_most_the_retransmit_limit(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=16)
    origin = nodes[7]
    counts: dict[str, int] = {}

    def count(node, address, payload):  # type: ignore[no-untyped-def]
        packet = node.ml.codec.open_datagram(payload, 1 << 16)
        for message in packet.messages:
            if message[0] == codec.ALIVE and message[1] == origin.node_id and message[5] == 1:
                counts[node.name] = counts.get(node.name, 0) + 1

    sim.taps.append(count)
    origin.ml.update_metadata({"zone": "z2"})
    sim.run_for(10)
    limit = sim.settings.retransmit_limit(16)
    assert len(counts) >= 8  # it spread
    # gossip and piggyback are capped at the limit; a direct answer to a stale view is extra
    assert all(sent <= limit for sent in counts.values()), counts
    assert all(len(node.ml.broadcasts) == 0 for node in nodes)


def test_older_claims_never_overwrite_newer_ones(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=4)
    observer, subject = nodes[0].ml, nodes[1]
    meta = codec.encode_metadata({})
    observer.apply_alive(subject.node_id, subject.name, "10.9.0.1:1", subject.generation, 5, meta, {})
    observer.apply_alive(subject.node_id, subject.name, "10.9.0.2:1", subject.generation, 4, meta, {})
    observer.apply_suspect(subject.node_id, subject.generation, 3, nodes[2].node_id)
    observer.apply_dead(subject.node_id, subject.generation, 4, nodes[2].node_id)
    record = observer.table.get(subject.node_id)
    assert (record.incarnation, record.address, record.state) == (5, "10.9.0.1:1", MemberState.ALIVE)
    # a new generation outranks any incarnation of the previous life, whatever its address
    observer.apply_alive(subject.node_id, subject.name, "10.9.0.3:1", subject.generation + 1, 0, meta, {})
    assert (record.generation, record.incarnation, record.address) == (subject.generation + 1, 0, "10.9.0.3:1")


def test_graceful_leave_shows_as_left_and_never_dead(cluster: ClusterFactory) -> None:
    sim, nodes, log = cluster()
    leaver = nodes[4]
    finished: list[float] = []
    leaver.ml.leave(lambda: finished.append(sim.clock.now()))
    sim.run_for(sim.settings.leave_timeout_s)
    assert finished
    sim.crash(leaver.name)  # the process exits after its goodbye
    sim.run_for(60)
    assert sim.converged(leaver.name, MemberState.LEFT)
    assert not log.about(leaver.name, EventKind.DEAD)
    assert leaver.node_id in {m.node_id for m in nodes[0].ml.members()}  # remembered for the ring


def test_a_restarted_node_is_accepted_at_once_even_at_a_new_address(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster()
    node = nodes[6]
    sim.crash(node.name)
    sim.run_for(30)
    assert sim.converged(node.name, MemberState.DEAD)
    sim.restart(node.name, address="10.7.7.7:7946")
    sim.run_for(1.0)
    assert sim.converged(node.name, MemberState.ALIVE)
    seen = nodes[0].ml.member(node.node_id)
    assert seen is not None and seen.address == "10.7.7.7:7946" and seen.generation == 2


def test_a_quick_restart_replaces_the_old_life_before_anyone_noticed(cluster: ClusterFactory) -> None:
    sim, nodes, log = cluster()
    node = nodes[2]
    sim.crash(node.name)
    sim.restart(node.name)
    sim.run_for(1.0)
    assert all(other.ml.member(node.node_id).generation == 2 for other in nodes if other is not node)
    assert not log.about(node.name, EventKind.DEAD)


def test_metadata_updates_reach_everyone(cluster: ClusterFactory) -> None:
    sim, nodes, log = cluster()
    nodes[1].ml.update_metadata({"roles": ["generator"], "zone": "z9", "load": 3})
    sim.run_for(2)
    assert all(other.ml.member(nodes[1].node_id).meta["zone"] == "z9" for other in nodes)
    assert len(log.about(nodes[1].name, EventKind.UPDATED)) == len(nodes) - 1


def test_a_member_wrongly_held_dead_is_told_and_refutes(cluster: ClusterFactory) -> None:
    sim, nodes, log = cluster()
    observer, subject = nodes[0], nodes[5]
    version = subject.ml.table.local.version
    observer.ml.apply_dead(subject.node_id, version[0], version[1], nodes[3].node_id)
    assert sim.state_of(observer.name, subject.name) == MemberState.DEAD
    sim.run_for(10)
    assert sim.converged(subject.name, MemberState.ALIVE)
    assert subject.ml.stats.refutations >= 1


def test_five_nodes_mirror_the_real_process_acceptance(cluster: ClusterFactory) -> None:
    """kill -9 -> dead everywhere within 10 s; restart -> alive within 5 s;
    a 3 s SIGSTOP -> nobody declares it dead; SIGTERM -> left, not dead."""
    sim, nodes, log = cluster(size=5, bootstrap="join", warmup=5.3)
    sim.crash("n002")
    crashed_at = sim.clock.now()
    sim.run_for(10, stop=lambda: sim.converged("n002", MemberState.DEAD))
    assert sim.converged("n002", MemberState.DEAD) and sim.clock.now() - crashed_at <= 10
    sim.restart("n002")
    sim.run_for(5, stop=lambda: sim.converged("n002", MemberState.ALIVE))
    assert sim.converged("n002", MemberState.ALIVE)
    sim.run_for(5)
    sim.stall("n003", 3.0)
    sim.run_for(15)
    assert not log.about("n003", EventKind.DEAD) and sim.converged("n003", MemberState.ALIVE)
    nodes[4].ml.leave()
    sim.run_for(1.0)
    sim.crash("n004")
    sim.run_for(30)
    assert sim.converged("n004", MemberState.LEFT) and not log.about("n004", EventKind.DEAD)
