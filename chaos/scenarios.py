"""The chaos suite's scenarios, and running one: cluster, workload, faults, heal, convergence, verdict."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from chaos.checker import Verdict, availability_report, check, check_membership
from chaos.launcher import LoopbackCluster
from chaos import generator_kill, kill_during_ingest
from chaos.nemesis import ClockSkew, Decommission, Flurry, Join, Kill, Nemesis, Pause, RollingRestart
from chaos.network_faults import PacketLoss, Partition
from chaos.workload import History, Workload, WorkloadSettings, key_name


MEMBERSHIP_AGREEMENT_S = 30.0  # every node's view of the members must agree this soon after the last heal


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    nemesis: Callable[[], Nemesis] | None  # None: ``own_run`` runs the whole scenario
    rounds: int = 1
    duration_s: float = 45.0  # of the whole workload; faults sit in its middle
    env: dict[str, str] = field(default_factory=dict)
    min_nodes: int = 1  # decommission runs on at least 4 so that N = 3 holds after one leaves
    network: str = "loopback"  # or "netns": a namespace per node, for the network faults (root only)
    # A scenario with its own workload and checks (seed, duration, progress -> report of the same shape)
    own_run: Callable[[int, float, Callable[[str], None]], dict[str, Any]] | None = None


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
    Scenario("replica-faults", "kill -9/restart or SIGSTOP/SIGCONT a random node every few seconds", Flurry,
             duration_s=100.0),
    Scenario("generator-kill", "2 generators, 4 streaming askers; kill -9 a generator mid-answer, restart it",
             None, duration_s=75.0, own_run=generator_kill.run_as_scenario),
    Scenario("kill-during-ingest", "kill -9 a node mid-ingest of Cranfield, restart, audit every document",
             None, duration_s=60.0, own_run=kill_during_ingest.run_as_scenario),
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
    if scenario.own_run is not None:
        return scenario.own_run(settings.seed, duration, progress)
    nodes = max(settings.nodes, scenario.min_nodes)
    progress(f"[{scenario.name}] starting {nodes} nodes")
    with LoopbackCluster(nodes, env=scenario.env, network=scenario.network) as launched:
        history = History()
        workload = Workload(launched.targets, history, settings.workload, settings.seed)
        t0 = history.clock()
        workload.start()
        faults = _inject(scenario, launched, rng, duration, history, progress)
        views_agreed = _views_agree_by(launched, history.clock() + duration * 0.25)  # the healthy last quarter
        workload.finish()
        progress(f"[{scenario.name}] load stopped after {history.clock() - t0:.0f} s; waiting for convergence")
        converged_s, verdict, agreed_later = _converge(launched, history, settings)
    agreed_s = _after_heal(views_agreed or agreed_later, faults)
    return _report(scenario, settings, nodes, history.ops(), faults, (converged_s, agreed_s), verdict, duration)


def _inject(scenario: Scenario, launched: LoopbackCluster, rng: random.Random, duration: float, history: History,
            progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Faults in the middle of the run: a quarter of it healthy first and last, the rest split
    into the rounds, each fault in force for half of its slot."""
    slot = duration * 0.5 / scenario.rounds
    time.sleep(duration * 0.25)
    faults = []
    for _ in range(scenario.rounds):
        assert scenario.nemesis is not None
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
    return faults


def _views_agree_by(launched: LoopbackCluster, until: float) -> float | None:
    """Watch every node's membership view until ``until`` (monotonic); when they first all agreed."""
    agreed = None
    while time.monotonic() < until:
        if agreed is None and _views_agree(launched.membership_views(), launched):
            agreed = time.monotonic()
        time.sleep(max(0.0, min(1.0, until - time.monotonic())))
    return agreed


def _views_agree(views: dict[str, dict[str, str]], launched: LoopbackCluster) -> bool:
    return len(views) == len(launched.members()) and check_membership(views).passed


def _after_heal(agreed_at: float | None, faults: list[dict[str, Any]]) -> float | None:
    """Seconds from the last heal until every node's membership view agreed."""
    if agreed_at is None:
        return None
    return round(max(0.0, agreed_at - faults[-1]["end"]), 1) if faults else 0.0


def _converge(launched: LoopbackCluster, history: History, settings: RunSettings) -> tuple[float | None, Verdict, float | None]:
    """Check until the cluster passes (how long that took) or the timeout (then the last verdict);
    also when the membership views first agreed (monotonic), if they did."""
    started = time.monotonic()
    keys = [key_name(i) for i in range(settings.workload.keys)]
    agreed = None
    while True:
        views = launched.membership_views()
        if agreed is None and _views_agree(views, launched):
            agreed = time.monotonic()
        verdict = check(history.ops(), launched.replica_states(keys), launched.owners(keys), views)
        if verdict.passed and len(views) == len(launched.members()):  # and every node answered
            return round(time.monotonic() - started, 1), verdict, agreed
        if time.monotonic() - started > settings.converge_timeout_s:
            return None, verdict, agreed
        time.sleep(1.0)


def _report(scenario: Scenario, settings: RunSettings, nodes: int, ops: list[Any], faults: list[dict[str, Any]],
            timing: tuple[float | None, float | None], verdict: Verdict, duration: float) -> dict[str, Any]:
    converged_s, agreed_s = timing
    windows = [(f["start"], f["end"]) for f in faults]
    writes = [op for op in ops if op.kind in ("upsert", "delete")]
    reads = [op for op in ops if op.kind in ("read", "search")]

    return {
        "scenario": scenario.name, "seed": settings.seed, "nodes": nodes, "duration_s": duration,
        "consistencies": list(settings.workload.consistencies),
        "faults": faults, "writes": availability_report(writes, windows), "reads": availability_report(reads, windows),
        "errors": dict(Counter(op.error for op in writes if op.error).most_common(8)),
        "converged_s": converged_s, "membership_agreed_after_heal_s": agreed_s, "anomalies": verdict.counts(),
        "examples": [a.__dict__ for a in verdict.anomalies[:10]],
        "keys_checked": verdict.keys_checked, "replicas_checked": verdict.replicas_checked,
        "passed": converged_s is not None and verdict.passed and agreed_s is not None and agreed_s <= MEMBERSHIP_AGREEMENT_S,
    }
