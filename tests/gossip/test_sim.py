"""sim.py: determinism, speed, and the fault models the benchmarks rely on."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.sim import Simulation
from meshrag.gossip.state import MemberState

REPO = Path(__file__).resolve().parents[2]


def scripted_run(seed: int) -> list[tuple[float, str, str, str, int, int]]:
    """A run with every kind of fault: loss, delay, crash, restart at a new address, stalls, a partition."""
    sim = Simulation(seed, GossipSettings(), loss=0.05)
    nodes = sim.build(24, bootstrap="join")
    sim.at(5, lambda: sim.crash("n003"))
    sim.at(8, lambda: sim.stall("n007", 3.0))
    sim.at(9, lambda: sim.stall("n008", 2.0, receive_only=True))
    sim.at(12, lambda: sim.partition([[n.name for n in nodes[:12]], [n.name for n in nodes[12:]]]))
    sim.at(30, sim.heal)
    sim.at(32, lambda: sim.restart("n003", address="10.3.3.3:7946"))
    sim.run_until(60)
    return sim.trace


def digest(trace: list[tuple[float, str, str, str, int, int]]) -> str:
    return hashlib.sha256(repr(trace).encode()).hexdigest()


def test_the_same_seed_gives_the_same_trace() -> None:
    first, second = scripted_run(11), scripted_run(11)
    assert len(first) > 500
    assert first == second
    assert digest(first) != digest(scripted_run(12))


def test_the_trace_does_not_depend_on_python_hash_randomization() -> None:
    code = "from tests.gossip.test_sim import scripted_run, digest; print(digest(scripted_run(11)))"
    outputs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
        outputs.add(result.stdout.strip())
    assert outputs == {digest(scripted_run(11))}


def test_simulation_runs_much_faster_than_real_time() -> None:
    sim = Simulation(1, trace=False)
    sim.build(64)
    started = time.perf_counter()
    sim.run_for(60)
    wall = time.perf_counter() - started
    print(f"64 nodes x 60 simulated s in {wall:.2f} wall s ({60 / wall:.0f}x real time)")
    assert wall < 20


def test_a_loop_stall_runs_due_timers_before_queued_datagrams() -> None:
    sim = Simulation(5)
    nodes = sim.build(4)
    sim.run_for(2)
    node = nodes[1]
    received = node.ml.stats.packets_received
    sim.stall(node.name, 3.0)
    counted_by_timer: list[int] = []
    node.ml.scheduler.call_later(1.0, lambda: counted_by_timer.append(node.ml.stats.packets_received))
    sim.run_for(2.9)
    assert node.ml.stats.packets_received == received and counted_by_timer == []  # nothing runs while stalled
    sim.run_for(0.2)
    assert counted_by_timer == [received]  # the overdue timer ran before the queued datagrams were read
    assert node.ml.stats.packets_received > received


def test_a_crashed_node_does_nothing_and_restarts_with_the_next_generation() -> None:
    sim = Simulation(6)
    nodes = sim.build(5)
    sim.run_for(2)
    sim.crash("n002")
    sent = nodes[2].ml.stats.packets_sent
    sim.run_for(20)
    assert nodes[2].ml.stats.packets_sent == sent
    assert sim.converged("n002", MemberState.DEAD)
    restarted = sim.restart("n002")
    assert restarted.generation == 2 and restarted.ml.table.local.generation == 2
    sim.run_for(2)
    assert sim.converged("n002", MemberState.ALIVE)
