"""pushpull.py: joining through seeds, anti-entropy, and partitions that heal."""

from __future__ import annotations

from typing import Callable

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


def test_a_join_attempt_never_overlaps_another_and_retries_continue_while_the_seed_times_out() -> None:
    """A seed that takes every exchange to its timeout (10 s, longer than a backoff step):
    the periodic push-pull round must not start a second attempt beside the one in flight,
    and the backoff timer must keep retrying until the seed answers."""
    sim = Simulation(3)
    seed = sim.add_node()
    joiner = sim.add_node()
    sim.block(joiner.name, seed.name)  # datagrams and exchanges vanish: every attempt times out
    in_flight, most = [0], [0]
    push_pull = joiner.ml.transport.push_pull

    def counted(address: str, payload: bytes, timeout: float, on_reply: Callable[[bytes | None], None]) -> None:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])

        def done(reply: bytes | None) -> None:
            in_flight[0] -= 1
            on_reply(reply)

        push_pull(address, payload, timeout, done)

    joiner.ml.transport.push_pull = counted  # type: ignore[method-assign]
    joiner.ml.join([seed.address])
    sim.run_for(200)
    assert most[0] == 1
    assert joiner.ml.stats.push_pull_failures >= 6  # 10 s timeouts, 1-30 s backoff: still retrying
    sim.heal()
    sim.run_for(60)  # the next retry, at most 1.5 x 30 s away, gets through
    assert joiner.ml.joined and sim.state_of(seed.name, joiner.name) == MemberState.ALIVE


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
