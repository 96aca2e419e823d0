"""The chaos suite's scenarios, and running one: cluster, workload, faults, heal, convergence, verdict."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from chaos.checker import Verdict, availability, check
from chaos.launcher import LoopbackCluster
from chaos.nemesis import ClockSkew, Decommission, Join, Kill, Nemesis, Pause, RollingRestart
from chaos.network_faults import PacketLoss, Partition
from chaos.workload import History, Workload, WorkloadSettings, key_name


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    nemesis: Callable[[], Nemesis]
    rounds: int = 1
    duration_s: float = 45.0  # of the whole workload; faults sit in its middle
    env: dict[str, str] = field(default_factory=dict)
    min_nodes: int = 1  # decommission runs on at least 4 so that N = 3 holds after one leaves
    network: str = "loopback"  # or "netns": a namespace per node, for the network faults (root only)


SCENARIOS = {s.name: s for s in (
    Scenario("kill-one", "kill -9 one node for the middle of the run, then restart it", Kill),
    Scenario("kill-restart", "kill -9 a random node and restart it, three times", Kill, rounds=3, duration_s=60.0),
    Scenario("pause-one", "SIGSTOP one node for the middle of the run, then SIGCONT", Pause),
    Scenario("clock-skew", "restart one node 2 minutes behind and one 2 minutes ahead, then on true time", ClockSkew,
             duration_s=60.0, env={"MESHRAG_CLUSTER_MAX_CLOCK_DRIFT_S": "300"}),
    Scenario("rolling-restart", "gracefully restart every node in turn", RollingRestart, duration_s=60.0),
    Scenario("decommission", "one node hands its data off and leaves under load, then stops", Decommission,
             duration_s=60.0, min_nodes=4),
    Scenario("join-under-load", "a new node joins and takes its share under load", Join, duration_s=60.0),
    Scenario("partition-minority", "cut a minority of the nodes off from the majority, then heal (netns, root)",
             partial(Partition, "minority"), duration_s=60.0, network="netns"),
    Scenario("partition-bridge", "two sides that cannot talk and one node that hears both, then heal (netns, root)",
             partial(Partition, "bridge"), duration_s=60.0, min_nodes=3, network="netns"),
    Scenario("one-way", "one node hears nobody while every other node still hears it, then heal (netns, root)",
             partial(Partition, "one-way"), duration_s=60.0, network="netns"),
    Scenario("packet-loss", "every node drops 25% of what other nodes send it, then none (netns, root)",
             partial(PacketLoss, 25), duration_s=60.0, network="netns"),
)}


@dataclass
class RunSettings:
    nodes: int = 3
    seed: int = 1
    duration_s: float | None = None  # None: the scenario's own
    converge_timeout_s: float = 60.0
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)


def run_scenario(scenario: Scenario, settings: RunSettings, progress: Callable[[str], None] = print) -> dict[str, Any]:
    rng = random.Random(settings.seed)
    duration = settings.duration_s or scenario.duration_s
    nodes = max(settings.nodes, scenario.min_nodes)
    progress(f"[{scenario.name}] starting {nodes} nodes")
    with LoopbackCluster(nodes, env=scenario.env, network=scenario.network) as launched:
        history = History()
        workload = Workload(launched.targets, history, settings.workload, settings.seed)
        t0 = history.clock()
        workload.start()
        faults = _inject(scenario, launched, rng, duration, history, progress)
        workload.finish()
        healed_at = history.clock()
        progress(f"[{scenario.name}] load stopped after {healed_at - t0:.0f} s; waiting for convergence")
        converged_s, verdict = _converge(launched, history, settings)
    ops = history.ops()
    return _report(scenario, settings, nodes, ops, faults, converged_s, verdict, duration)


def _inject(scenario: Scenario, launched: LoopbackCluster, rng: random.Random, duration: float, history: History,
            progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Faults in the middle of the run: a quarter of it healthy first and last, the rest split
    into the rounds, each fault in force for half of its slot."""
    slot = duration * 0.5 / scenario.rounds
    time.sleep(duration * 0.25)
    faults = []
    for _ in range(scenario.rounds):
        nemesis = scenario.nemesis()
        started = history.clock()
        what = nemesis.inject(launched, rng)
        progress(f"[{scenario.name}] {what}")
        time.sleep(max(0.0, slot / 2 - (history.clock() - started)))
        healed = nemesis.heal(launched)
        ended = history.clock()
        progress(f"[{scenario.name}] {healed}")
        faults.append({"fault": what, "heal": healed, "start": started, "end": ended})
        time.sleep(max(0.0, slot - (ended - started)))
    time.sleep(duration * 0.25)
    return faults


def _converge(launched: LoopbackCluster, history: History, settings: RunSettings) -> tuple[float | None, Verdict]:
    """Check until the cluster passes (how long that took) or the timeout (then the last verdict)."""
    started = time.monotonic()
    keys = [key_name(i) for i in range(settings.workload.keys)]
    while True:
        views = launched.membership_views()
        verdict = check(history.ops(), launched.replica_states(keys), launched.owners(keys), views)
        if verdict.passed and len(views) == len(launched.members()):  # and every node answered
            return round(time.monotonic() - started, 1), verdict
        if time.monotonic() - started > settings.converge_timeout_s:
            return None, verdict
        time.sleep(1.0)


def _report(scenario: Scenario, settings: RunSettings, nodes: int, ops: list[Any], faults: list[dict[str, Any]],
            converged_s: float | None, verdict: Verdict, duration: float) -> dict[str, Any]:
    windows = [(f["start"], f["end"]) for f in faults]
    writes = [op for op in ops if op.kind in ("upsert", "delete")]
    reads = [op for op in ops if op.kind in ("read", "search")]

    def share(values: list[Any]) -> dict[str, Any]:
        a = availability(values)
        during = availability(values, windows)
        return {"ops": a.ops, "ok": a.ok, "failed": a.failed, "unknown": a.unknown,
                "during_faults": {"ops": during.ops, "ok_share": during.share_ok, "p50_ms": during.p50_ms, "p99_ms": during.p99_ms},
                "p50_ms": a.p50_ms, "p99_ms": a.p99_ms}

    return {
        "scenario": scenario.name, "seed": settings.seed, "nodes": nodes, "duration_s": duration,
        "consistencies": list(settings.workload.consistencies),
        "faults": faults, "writes": share(writes), "reads": share(reads),
        "errors": dict(Counter(op.error for op in writes if op.error).most_common(8)),
        "converged_s": converged_s, "anomalies": verdict.counts(),
        "examples": [a.__dict__ for a in verdict.anomalies[:10]],
        "keys_checked": verdict.keys_checked, "replicas_checked": verdict.replicas_checked,
        "passed": converged_s is not None and verdict.passed,
    }
