"""Placement balance and data movement: vnode tokens against the balanced placement (ring.py).

For each cluster size (3, 5, 10, 20 nodes at the default P with N=2 and N=3, the demo's P=16
N=2 on 3 nodes, and the same sizes spread over 3 zones), over --seeds sets of random node ids:
the fewest and most partition copies a node holds and their ratios to the even share P*N/nodes, and the copies that change owner when one node joins (against the
newcomer's share, P*N/(n+1)) and when one leaves (against the copies it held). Also the cost of
building a ring and of read_owners.

    .venv/bin/python scripts/bench_placement.py [--seeds 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from meshrag.config import ClusterConfig
from meshrag.ring import PLACEMENT_BALANCED, PLACEMENT_VNODES, Ring, RingEntry, RingStatus, RingTable, placement_balance

P = ClusterConfig().partitions
CASES = [(16, 2, 3, 1), *((P, n_rep, nodes, zones) for zones in (1, 3) for nodes in (3, 5, 10, 20) for n_rep in (2, 3))]


def build(ids: list[str], zones: int, partitions: int, replicas: int, placement: str,
          status: dict[str, RingStatus] | None = None) -> Ring:
    status = status or {}
    entries = (RingEntry(n, n[:8], f"zone{i % zones}", status.get(n, RingStatus.NORMAL), 1) for i, n in enumerate(ids))
    return Ring(RingTable(entries), partitions, replicas, placement)


def moved(before: Ring, after: Ring) -> int:
    return sum(len(set(after.target.owners(p)) - set(before.target.owners(p))) for p in range(before.partitions))


def one(partitions: int, replicas: int, nodes: int, zones: int, placement: str, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(nodes + 1)]
    base = build(ids[:nodes], zones, partitions, replicas, placement)
    rows = placement_balance(base, "target")
    joined = build(ids, zones, partitions, replicas, placement, {ids[nodes]: RingStatus.JOINING})
    left = build(ids[:nodes], zones, partitions, replicas, placement, {ids[0]: RingStatus.LEAVING})
    return {
        "min": min(r["copies"] for r in rows.values()), "max": max(r["copies"] for r in rows.values()),
        "high": max(r["ratio"] for r in rows.values()), "low": min(r["ratio"] for r in rows.values()),
        "join": moved(base, joined) / (partitions * replicas / (nodes + 1)),
        "leave": moved(base, left) / rows[ids[0]]["copies"] if rows[ids[0]]["copies"] else 0.0,
    }


def case(partitions: int, replicas: int, nodes: int, zones: int, placement: str, seeds: int) -> dict[str, Any]:
    runs = [one(partitions, replicas, nodes, zones, placement, seed) for seed in range(seeds)]
    return {
        "partitions": partitions, "replicas": replicas, "nodes": nodes, "zones": zones, "placement": placement,
        "even": partitions * min(replicas, nodes) / nodes,
        "min_copies": min(r["min"] for r in runs), "max_copies": max(r["max"] for r in runs),
        "max_ratio": max(r["high"] for r in runs), "min_ratio": min(r["low"] for r in runs),
        "join_moved_x": statistics.mean(r["join"] for r in runs), "join_moved_worst_x": max(r["join"] for r in runs),
        "leave_moved_x": statistics.mean(r["leave"] for r in runs), "leave_moved_worst_x": max(r["leave"] for r in runs),
    }


def costs(placement: str) -> dict[str, float]:
    ids = [f"n{i:02d}" for i in range(20)]
    start = time.perf_counter()
    ring = build(ids, 3, P, 3, placement)
    built = time.perf_counter() - start
    calls = 100_000
    start = time.perf_counter()
    for i in range(calls):
        ring.read_owners(i % P)
    return {"ring_build_ms_20_nodes": built * 1000, "read_owners_ns": (time.perf_counter() - start) / calls * 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="sets of random node ids per case")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    args = parser.parse_args()
    rows = [case(*c, placement, args.seeds) for c in CASES for placement in (PLACEMENT_VNODES, PLACEMENT_BALANCED)]
    cost = {placement: costs(placement) for placement in (PLACEMENT_VNODES, PLACEMENT_BALANCED)}
    if args.json:
        print(json.dumps({"seeds": args.seeds, "cases": rows, "costs": cost}, indent=1))
        return
    print(f"{args.seeds} sets of node ids per case; ratio: copies/even of the fullest and emptiest node (worst run); "
          "moved: copies changing owner / the newcomer's share (join) or the leaver's copies (leave), mean (worst)")
    print(f"{'P':>4} {'N':>2} {'nodes':>5} {'zones':>5} {'placement':>9} {'even':>6} {'min':>4} {'max':>4} "
          f"{'max/even':>8} {'min/even':>8} {'join moved':>12} {'leave moved':>12}")
    for r in rows:
        print(f"{r['partitions']:>4} {r['replicas']:>2} {r['nodes']:>5} {r['zones']:>5} {r['placement']:>9} {r['even']:>6.1f} "
              f"{r['min_copies']:>4} {r['max_copies']:>4} {r['max_ratio']:>8.2f} {r['min_ratio']:>8.2f} "
              f"{r['join_moved_x']:>5.2f} ({r['join_moved_worst_x']:>4.2f}) {r['leave_moved_x']:>5.2f} ({r['leave_moved_worst_x']:>4.2f})")
    for placement, c in cost.items():
        print(f"{placement}: ring of 20 nodes built in {c['ring_build_ms_20_nodes']:.1f} ms, read_owners {c['read_owners_ns']:.0f} ns")


if __name__ == "__main__":
    main()
