"""pushpull.py: joining through seeds, anti-entropy, and partitions that heal."""

from __future__ import annotations

from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.sim import Simulation
from meshrag.gossip.state import MemberState
from tests.gossip.conftest import ClusterFactory


def test_nodes_join_through_a_seed_and_learn_everyone(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=12, bootstrap="join", warmup=5)
    for node in nodes:
        assert all(sim.state_of(node.name, other.name) == MemberState.ALIVE for other in nodes if other is not node)
    assert all(node.ml.joined for node in nodes[1:])


def test_join_retries_with_backoff_until_a_seed_answers() -> None:
    sim = Simulation(2)
    seed = sim.add_node()
    sim.crash(seed.name)
    joiner = sim.add_node()
    joiner.ml.join([seed.address])
    sim.run_for(10)
    attempts_while_down = joiner.ml.stats.push_pull_failures
    assert 2 <= attempts_while_down <= 5  # 1 s, 2 s, 4 s ... with jitter, not a tight loop
    assert not joiner.ml.joined
    sim.restart(seed.name, join=[])
    sim.run_for(40)
    assert joiner.ml.joined
    assert sim.state_of(seed.name, joiner.name) == MemberState.ALIVE
    assert sim.state_of(joiner.name, seed.name) == MemberState.ALIVE


def test_a_partition_longer_than_the_suspicion_timeout_heals_by_itself(cluster: ClusterFactory) -> None:
    sim, nodes, _ = cluster(size=16)
    left, right = [n.name for n in nodes[:8]], [n.name for n in nodes[8:]]
    sim.partition([left, right])
    sim.run_for(60)
    assert all(sim.state_of(a, b) == MemberState.DEAD for a in left for b in right)
    sim.heal()
    sim.run_for(30)
    assert all(m.state == MemberState.ALIVE for node in nodes for m in node.ml.members())


def test_without_dead_member_retries_the_partition_stays(cluster: ClusterFactory) -> None:
    """memberlist's behaviour, and the reason MeshRAG retries dead members."""
    sim, nodes, _ = cluster(size=16, settings=GossipSettings(reconnect_interval_s=0))
    sim.partition([[n.name for n in nodes[:8]], [n.name for n in nodes[8:]]])
    sim.run_for(60)
    sim.heal()
    sim.run_for(60)
    assert any(m.state == MemberState.DEAD for node in nodes for m in node.ml.members())


def test_anti_entropy_repairs_what_gossip_missed(cluster: ClusterFactory) -> None:
    settings = GossipSettings(push_pull_interval_s=5.0)
    sim, nodes, _ = cluster(size=6, settings=settings)
    observer, subject = nodes[0], nodes[2]
    sim.block(observer.name, subject.name)  # the observer can hear of the subject only second-hand
    sim.loss = 1.0  # and no datagram gets through at all for a while
    subject.ml.update_metadata({"zone": "z7"})
    sim.run_for(2)
    sim.loss = 0.0
    for node in nodes:
        node.ml.broadcasts.clear()  # the gossip is lost for good
    sim.run_for(30)
    assert observer.ml.member(subject.node_id).meta["zone"] == "z7"
