"""probe.py: target choice, indirect probes, nacks and the health score."""

from __future__ import annotations

from meshrag.gossip.events import EventKind
from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.state import MemberState
from tests.gossip.conftest import ClusterFactory


def test_slotted_targets_form_a_permutation_in_every_slot(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=16)
    for _ in range(20):
        targets = [node.ml._prober._slotted_target() for node in nodes]
        assert all(t is not None for t in targets)
        assert sorted(t.node_id for t in targets) == sorted(node.node_id for node in nodes)
        assert all(t.node_id != node.node_id for t, node in zip(targets, nodes))
        sim.run_for(1.0)


def test_every_member_is_probed_once_per_round_robin_cycle(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=6, settings=GossipSettings(slotted_probing=False))
    prober = nodes[0].ml._prober
    while prober._index < len(prober._order):  # finish the round in progress
        prober._next_target()
    seen = [prober._next_target().node_id for _ in range(5 * 4)]
    for cycle in range(4):
        assert sorted(seen[cycle * 5:(cycle + 1) * 5]) == sorted(n.node_id for n in nodes[1:])


def test_indirect_probes_get_around_a_broken_link(cluster: ClusterFactory) -> None:
    sim, nodes, log = cluster(size=8)
    sim.block(nodes[0].name, nodes[4].name)
    sim.run_for(60)
    assert not log.about(nodes[4].name, EventKind.SUSPECT)
    assert not log.about(nodes[0].name, EventKind.SUSPECT)


def test_without_indirect_probes_a_broken_link_means_suspicion(cluster: ClusterFactory) -> None:
    settings = GossipSettings(indirect_checks=0, fallback_ping=False)
    sim, nodes, log = cluster(size=8, settings=settings)
    sim.block(nodes[0].name, nodes[4].name)
    sim.run_for(60)
    assert log.about(nodes[4].name, EventKind.SUSPECT) or log.about(nodes[0].name, EventKind.SUSPECT)


def test_nacks_from_helpers_spare_the_prober_s_health_score(cluster: ClusterFactory) -> None:
    """Probing a crashed member fails, but helpers nack: the fault is not ours."""
    sim, nodes, _ = cluster(size=8)
    sim.crash(nodes[5].name)
    sim.run_for(20)
    assert sim.converged(nodes[5].name, MemberState.DEAD)
    assert all(node.ml.health_score == 0 for node in nodes if node is not nodes[5])


def test_probe_rounds_stop_while_leaving(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=4)
    ml = nodes[1].ml
    ml.leave()
    sim.run_for(5)
    pending = len(ml._prober._pending)
    sim.run_for(5)
    assert pending == 0 and len(ml._prober._pending) == 0
