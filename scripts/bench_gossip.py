#!/usr/bin/env python3
"""Membership benchmark: the simulator's figures beside the anchors the gossip issue names.

Every figure comes from meshrag.gossip.sim running the production Memberlist
(real codec, real HMAC) on virtual time, seeded: the same --seed prints the
same numbers. Two configurations run side by side where the issue compares
with memberlist: "ours" (GossipSettings()) and "memberlist" (the same code
with memberlist's DefaultLANConfig values: GossipSettings.memberlist_lan()).

Shortcuts, stated: clusters start with full member tables (as if the joins had
converged) instead of joining one by one; everything else is the full
protocol, the 1000-node dissemination included.

    .venv/bin/python scripts/bench_gossip.py            # ~2 minutes on 2 cores
    .venv/bin/python scripts/bench_gossip.py --json     # machine-readable
    .venv/bin/python scripts/bench_gossip.py --quick    # fewer trials, shorter runs (smoke)
    .venv/bin/python scripts/bench_gossip.py --full     # adds memberlist baselines for loss and 1000 nodes
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshrag.gossip.events import EventKind, MemberEvent  # noqa: E402
from meshrag.gossip.settings import GossipSettings  # noqa: E402
from meshrag.gossip.sim import SimNode, Simulation  # noqa: E402
from meshrag.gossip.state import MemberState  # noqa: E402

CONFIGS: dict[str, Callable[..., GossipSettings]] = {
    "ours": GossipSettings,
    "memberlist": GossipSettings.memberlist_lan,
}


def settings_for(config: str, **changes: Any) -> GossipSettings:
    return CONFIGS[config](**changes)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


# --------------------------------------------------------------------------- scenarios
def crash_trials(config: str, seed: int, trials: int) -> dict[str, Any]:
    """Crash one random member of 64; time to the first suspicion and until all mark it dead."""
    first_suspicions, dead_everywhere = [], []
    for trial in range(trials):
        sim = Simulation(seed * 1000 + trial, settings_for(config), trace=False)
        nodes = sim.build(64)
        rng = random.Random(seed * 1000 + trial)
        sim.run_for(5 + rng.random())
        victim = rng.choice(nodes)
        crashed_at = sim.clock.now()
        suspected: list[float] = []
        dead: set[str] = set()

        def on_event(now: float, node: SimNode, event: MemberEvent, victim: SimNode = victim) -> None:
            if event.member.node_id == victim.node_id:
                if event.kind == EventKind.SUSPECT and not suspected:
                    suspected.append(now - crashed_at)
                elif event.kind == EventKind.DEAD:
                    dead.add(node.name)

        sim.listeners.append(on_event)
        sim.crash(victim.name)
        sim.run_for(120, stop=lambda: len(dead) == len(nodes) - 1)
        first_suspicions.append(suspected[0] if suspected else math.inf)
        dead_everywhere.append(sim.clock.now() - crashed_at)
    return {"first_suspicion_s": first_suspicions, "dead_everywhere_s": dead_everywhere}


def dissemination(config: str, seed: int, size: int, trials: int) -> dict[str, Any]:
    """Rounds (gossip intervals) until a metadata update reaches 99.99 % of the cluster."""
    started = time.perf_counter()
    settings = settings_for(config)
    sim = Simulation(seed, settings, trace=False)
    nodes = sim.build(size)
    built = time.perf_counter() - started
    sim.run_for(3)  # the start-up broadcasts drain
    rng = random.Random(seed)
    reached: dict[str, float] = {}
    watching: dict[str, Any] = {}

    def on_event(now: float, node: SimNode, event: MemberEvent) -> None:
        member = event.member
        if member.node_id == watching.get("id") and member.incarnation >= watching["incarnation"]:
            reached.setdefault(node.name, now)

    sim.listeners.append(on_event)
    needed = math.ceil(0.9999 * size) - 1  # other nodes that must have it (the origin has it)
    rounds = []
    for trial in range(trials):
        origin = nodes[rng.randrange(size)]
        reached.clear()
        watching.update(id=origin.node_id, incarnation=origin.ml.table.local.incarnation + 1)
        sim.run_for(rng.random())
        began = sim.clock.now()
        origin.ml.update_metadata({"roles": ["storage", "generator"], "zone": "z1", "load": trial})
        sim.run_for(30, stop=lambda: len(reached) >= needed)
        times = sorted(reached.values())
        rounds.append((times[needed - 1] - began) / settings.gossip_interval_s if len(times) >= needed else math.inf)
        sim.run_for(3)
    return {"rounds": rounds, "build_wall_s": built, "size": size}


def lossy_network(config: str, seed: int, minutes: float, loss: float = 0.3) -> dict[str, Any]:
    """64 healthy members, `loss` of all datagrams dropped: how many deaths are declared?"""
    sim = Simulation(seed, settings_for(config), trace=False)
    nodes = sim.build(64)
    sim.run_for(5)
    sim.loss = loss
    counts = {"suspect": 0, "dead": 0}

    def on_event(now: float, node: SimNode, event: MemberEvent) -> None:
        if event.kind in (EventKind.SUSPECT, EventKind.DEAD):
            counts[event.kind.value] += 1

    sim.listeners.append(on_event)
    started = time.perf_counter()
    sim.run_for(minutes * 60)
    return {"false_deaths": counts["dead"], "suspect_events": counts["suspect"],
            "refutations": sum(node.ml.stats.refutations for node in nodes), "wall_s": time.perf_counter() - started,
            "simulated_s": minutes * 60}


def stalling_member(config: str, seed: int, seconds: float, receive_only: bool, **changes: Any) -> dict[str, Any]:
    """One of 64 members stalls for 2-5 s at a time, running 1-5 s in between."""
    sim = Simulation(seed, settings_for(config, **changes), trace=False)
    nodes = sim.build(64)
    sim.run_for(5)
    rng = random.Random(seed)
    staller = nodes[rng.randrange(64)]
    at, stalls = sim.clock.now() + 1, 0
    while at < 5 + seconds:
        length = rng.uniform(2, 5)
        sim.at(at, lambda length=length: sim.stall(staller.name, length, receive_only=receive_only))
        stalls += 1
        at += length + rng.uniform(1, 5)
    counts = {"healthy_deaths": 0, "staller_deaths": 0, "healthy_suspects": 0}

    def on_event(now: float, node: SimNode, event: MemberEvent) -> None:
        is_staller = event.member.node_id == staller.node_id
        if event.kind == EventKind.DEAD:
            counts["staller_deaths" if is_staller else "healthy_deaths"] += 1
        elif event.kind == EventKind.SUSPECT and not is_staller:
            counts["healthy_suspects"] += 1

    sim.listeners.append(on_event)
    sim.run_for(seconds)
    return {"stalls": stalls, **counts}


def partition_heal(config: str, seed: int, minutes: float = 2.0, limit_s: float = 120.0) -> dict[str, Any]:
    """Split 64 members 32/32 for `minutes`, reconnect, time until everyone sees everyone alive."""
    sim = Simulation(seed, settings_for(config), trace=False)
    nodes = sim.build(64)
    sim.run_for(5)
    names = [node.name for node in nodes]
    random.Random(seed).shuffle(names)
    left, right = names[:32], names[32:]
    sim.partition([left, right])
    sim.run_for(minutes * 60)
    split_seen = all(sim.state_of(a, b) == MemberState.DEAD for a in left for b in right)
    sim.heal()
    healed_at = sim.clock.now()

    def healed() -> bool:
        return all(member.state == MemberState.ALIVE for node in nodes for member in node.ml.table)

    while sim.clock.now() - healed_at < limit_s and not healed():
        sim.run_for(0.25)
    return {"split_seen": split_seen, "heal_s": sim.clock.now() - healed_at if healed() else None, "limit_s": limit_s}


def bandwidth(config: str, seed: int, size: int) -> dict[str, Any]:
    """Steady-state bytes sent per node per second (UDP and push-pull), over >= one push-pull interval."""
    settings = settings_for(config)
    sim = Simulation(seed, settings, trace=False)
    nodes = sim.build(size)
    sim.run_for(10)

    def sent() -> tuple[int, int]:
        return (sum(node.ml.stats.bytes_sent for node in nodes), sum(node.ml.stats.push_pull_bytes_sent for node in nodes))

    udp0, sync0 = sent()
    window = max(120.0, settings.push_pull_interval(size))
    sim.run_for(window)
    udp1, sync1 = sent()
    return {"size": size, "udp": (udp1 - udp0) / window / size, "push_pull": (sync1 - sync0) / window / size}


def sim_speed(seed: int) -> dict[str, Any]:
    sim = Simulation(seed, trace=False)
    sim.build(64)
    started = time.perf_counter()
    sim.run_for(60)
    return {"wall_s": time.perf_counter() - started}


# --------------------------------------------------------------------------- running
def plan(seed: int, quick: bool, full: bool) -> list[tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...], dict[str, Any]]]:
    crash_chunks, per_chunk = (2, 10) if quick else (5, 24)
    minutes = 1.0 if quick else 10.0
    stall_s = 60.0 if quick else 240.0
    jobs: list[tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...], dict[str, Any]]] = []
    jobs.append(("loss:ours", lossy_network, ("ours", seed, minutes), {}))
    if full:
        jobs.append(("loss:memberlist", lossy_network, ("memberlist", seed, minutes), {}))
    jobs.append(("dissemination:ours:1000", dissemination, ("ours", seed, 1000, 3 if quick else 8), {}))
    if full:
        jobs.append(("dissemination:memberlist:1000", dissemination, ("memberlist", seed, 1000, 8), {}))
    for config in CONFIGS:
        for chunk in range(crash_chunks):
            jobs.append((f"crash:{config}:{chunk}", crash_trials, (config, seed + chunk, per_chunk), {}))
        jobs.append((f"dissemination:{config}:64", dissemination, (config, seed, 64, 10 if quick else 40), {}))
        jobs.append((f"partition:{config}", partition_heal, (config, seed), {}))
        for size in (16, 32, 64, 128, 256):
            jobs.append((f"bandwidth:{config}:{size}", bandwidth, (config, seed, size), {}))
    stall_variants = {"lifeguard": {}, "no-lifeguard": {"lifeguard": False},
                      "plain-swim": {"lifeguard": False, "verify_before_dead": False}}
    for mode in ("loop", "receive"):
        for variant, changes in stall_variants.items():
            jobs.append((f"stall:{mode}:{variant}", stalling_member, ("ours", seed, stall_s, mode == "receive"), changes))
    jobs.append(("speed", sim_speed, (seed,), {}))
    return jobs


def run_job(job: tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...], dict[str, Any]]) -> tuple[str, dict[str, Any], float]:
    name, function, args, kwargs = job
    started = time.perf_counter()
    return name, function(*args, **kwargs), time.perf_counter() - started


def collect(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Fold job results into the figures, each with its anchor and verdict."""
    figures: dict[str, Any] = {}
    for config in CONFIGS:
        chunks = [r for name, r in results.items() if name.startswith(f"crash:{config}:")]
        suspicion = [s for r in chunks for s in r["first_suspicion_s"]]
        dead = [d for r in chunks for d in r["dead_everywhere_s"]]
        figures[f"crash_{config}"] = {
            "trials": len(dead), "first_suspicion_periods_mean": statistics.mean(suspicion),
            "dead_everywhere_median_s": statistics.median(dead), "dead_everywhere_p99_s": percentile(dead, 0.99),
            "dead_everywhere_max_s": max(dead),
        }
        for size in (64, 1000):
            result = results.get(f"dissemination:{config}:{size}")
            if result:
                figures[f"dissemination_{config}_{size}"] = {
                    "trials": len(result["rounds"]), "rounds_median": statistics.median(result["rounds"]),
                    "rounds_max": max(result["rounds"])}
        figures[f"partition_{config}"] = results[f"partition:{config}"]
        rows = [results[f"bandwidth:{config}:{size}"] for size in (16, 32, 64, 128, 256)]
        totals = [row["udp"] + row["push_pull"] for row in rows]
        figures[f"bandwidth_{config}"] = {"per_size": rows, "max_over_min": max(totals) / min(totals)}
        if f"loss:{config}" in results:
            figures[f"loss_{config}"] = results[f"loss:{config}"]
    figures["stall"] = {name.split(":", 1)[1]: r for name, r in results.items() if name.startswith("stall:")}
    figures["sim_speed_64x60s_wall_s"] = results["speed"]["wall_s"]
    return figures


def table(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    ours, ml = figures["crash_ours"], figures["crash_memberlist"]
    rows = [
        ("time to first suspicion of a crashed node (mean, probe periods)",
         f"{ours['first_suspicion_periods_mean']:.2f} (memberlist params: {ml['first_suspicion_periods_mean']:.2f})",
         "SWIM e/(e-1) = 1.58", ""),
        ("crash -> dead everywhere, 64 nodes, median / p99",
         f"{ours['dead_everywhere_median_s']:.2f} s / {ours['dead_everywhere_p99_s']:.2f} s ({ours['trials']} crashes)",
         "goal <= 6 s / <= 10 s", _verdict(ours["dead_everywhere_median_s"] <= 6 and ours["dead_everywhere_p99_s"] <= 10)),
        ("  same with memberlist's LAN values, median / p99",
         f"{ml['dead_everywhere_median_s']:.2f} s / {ml['dead_everywhere_p99_s']:.2f} s", "memberlist ~9.7 s median", ""),
    ]
    for size, anchor in ((64, 9), (1000, 11)):
        mine = figures.get(f"dissemination_ours_{size}")
        base = figures.get(f"dissemination_memberlist_{size}")
        if mine:
            extra = f" (memberlist params: {base['rounds_median']:.1f})" if base else ""
            rows.append((f"rounds until an update reaches 99.99% of {size} nodes (median / max)",
                         f"{mine['rounds_median']:.1f} / {mine['rounds_max']:.1f}{extra}",
                         f"Serf model: {anchor}", _verdict(mine["rounds_max"] <= anchor)))
    loss = figures.get("loss_ours")
    if loss:
        minutes = loss["simulated_s"] / 60
        base = figures.get("loss_memberlist")
        extra = f" (memberlist params: {base['false_deaths']})" if base else ""
        rows.append((f"false deaths, 64 nodes, 30% loss, {minutes:.0f} simulated min",
                     f"{loss['false_deaths']} ({loss['refutations']} suspicions refuted){extra}", "0",
                     _verdict(loss["false_deaths"] == 0)))
    stall = figures["stall"]
    for mode in ("loop", "receive"):
        on, off, plain = stall[f"{mode}:lifeguard"], stall[f"{mode}:no-lifeguard"], stall[f"{mode}:plain-swim"]
        rows.append((f"one member stalls 2-5 s ({mode} stall, {on['stalls']} stalls): false deaths of healthy members, "
                     "Lifeguard on / off / plain SWIM",
                     f"{on['healthy_deaths']} / {off['healthy_deaths']} / {plain['healthy_deaths']}", "0 with Lifeguard on",
                     _verdict(on["healthy_deaths"] == 0)))
        rows.append(("  false suspicions of healthy members, on / off / plain SWIM",
                     f"{on['healthy_suspects']} / {off['healthy_suspects']} / {plain['healthy_suspects']}", "", ""))
        rows.append(("  observers that declared the stalling member itself dead, on / off / plain SWIM",
                     f"{on['staller_deaths']} / {off['staller_deaths']} / {plain['staller_deaths']}", "", ""))
    for config in CONFIGS:
        part = figures[f"partition_{config}"]
        heal = f"{part['heal_s']:.1f} s" if part["heal_s"] is not None else f"not within {part['limit_s']:.0f} s"
        rows.append((f"2-minute 32/32 partition heals after reconnection ({'memberlist params' if config != 'ours' else 'ours'})",
                     heal, "<= 60 s", _verdict(part["heal_s"] is not None and part["heal_s"] <= 60) if config == "ours" else ""))
    for config in CONFIGS:
        bw = figures[f"bandwidth_{config}"]
        cells = ", ".join(f"{row['size']}: {row['udp'] + row['push_pull']:.0f}" for row in bw["per_size"])
        rows.append((f"bytes/s/node sent, UDP + push-pull ({'memberlist params' if config != 'ours' else 'ours'})",
                     f"{cells} (max/min {bw['max_over_min']:.2f})", "flat within 2x",
                     _verdict(bw["max_over_min"] <= 2) if config == "ours" else ""))
    rows.append(("simulator speed: 64 nodes x 60 simulated s", f"{figures['sim_speed_64x60s_wall_s']:.2f} wall s", "", ""))
    return rows


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="fewer trials and shorter runs")
    parser.add_argument("--full", action="store_true", help="memberlist baselines for the 30%% loss and 1000-node runs too")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    started = time.perf_counter()
    jobs = plan(args.seed, args.quick, args.full)
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        outcomes = pool.map(run_job, jobs, chunksize=1)
    results = {name: result for name, result, _ in outcomes}
    figures = collect(results)
    figures["job_wall_s"] = {name: round(wall, 2) for name, _, wall in outcomes}
    figures["total_wall_s"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
        return 0
    rows = table(figures)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"{'figure':<{widths[0]}}  {'measured':<{widths[1]}}  {'anchor / goal':<{widths[2]}}  verdict")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    print(f"\nseed {args.seed}, {len(jobs)} jobs on {args.jobs} processes, {figures['total_wall_s']:.0f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
