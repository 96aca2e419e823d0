#!/usr/bin/env python3
"""Benchmark event-loop lag on real nodes during ingest with repair running (not a test).

    git worktree add /tmp/meshrag-before be0c157      # the code before the loop fixes
    .venv/bin/python scripts/bench_loop_lag.py --before /tmp/meshrag-before
    .venv/bin/python scripts/bench_loop_lag.py --docs 300 --preload 10000 --json   # this checkout only

For each code version (``--before`` DIR if given, then this checkout), a fresh
3-node cluster of real processes (N=3, ``--partitions``, a repair pass every
``--repair-interval`` seconds on every node) is preloaded with ``--preload``
documents that bring their own vectors (nothing to embed, so it is quick);
then ``--docs`` Cranfield documents are ingested through n1 (QUORUM, batches
of 32, two in flight) while a monitor scrapes /metrics and /v1/cluster of
every node every ``--scrape-interval`` seconds. Reported per node: event-loop lag p50/p99/max
during the ingest and the repair passes that ran meanwhile.

The lag is measured by one probe in both versions (be0c157 has no lag metric):
every node starts through a ``sitecustomize`` module this script writes, which
wraps meshrag.node.Node.start (present in both) to run a task that sleeps
PROBE_INTERVAL_S and records how late it woke, into <data_dir>/lag_probe.txt.
All nodes share this machine: on 2 cores the figures include the nodes
competing with each other and with the embedder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
PROBE_FILE = "lag_probe.txt"
PROBE_INTERVAL_S = 0.02
PROBE_FLUSH_S = 1.0
SITECUSTOMIZE = f"""# Written by scripts/bench_loop_lag.py: the same event-loop lag probe in every node.
import sys
sys.path.insert(0, {str(SCRIPTS)!r})
import bench_loop_lag
bench_loop_lag.install_probe()
"""


# ------------------------------------------------------------------ inside each node
def install_probe() -> None:
    """Wrap Node.start so the node's loop also runs the lag probe (called by sitecustomize)."""
    import meshrag.node as node_module

    original = node_module.Node.start

    async def start(self: Any) -> None:
        await original(self)
        task = asyncio.get_running_loop().create_task(probe(Path(self.config.data_path) / PROBE_FILE))
        self._lag_probe_task = task  # keep a reference: the loop holds tasks weakly

    node_module.Node.start = start  # type: ignore[method-assign]


async def probe(path: Path) -> None:
    """Sleep PROBE_INTERVAL_S, record (wall time, seconds late); append to ``path`` every second."""
    samples: list[str] = []
    flushed = time.monotonic()
    while True:
        started = time.monotonic()
        await asyncio.sleep(PROBE_INTERVAL_S)
        woke = time.monotonic()
        samples.append(f"{time.time():.3f} {max(0.0, woke - started - PROBE_INTERVAL_S):.6f}\n")
        if woke - flushed >= PROBE_FLUSH_S:
            with path.open("a") as out:  # a few hundred bytes, the same cost in both versions
                out.writelines(samples)
            samples.clear()
            flushed = woke


# ------------------------------------------------------------------ the driver
def scrape_until(urls: Sequence[str], stop: threading.Event, interval_s: float) -> int:
    """What a monitoring system does: /metrics and /v1/cluster of every node, every ``interval_s``."""
    scrapes = 0
    while interval_s > 0 and not stop.wait(interval_s):
        for url in urls:
            for path in ("/metrics", "/v1/cluster"):
                try:
                    with urllib.request.urlopen(url + path, timeout=10) as response:
                        response.read()
                    scrapes += 1
                except OSError:
                    pass
    return scrapes


def preload(client: Any, count: int, dim: int) -> float:
    import numpy as np

    rng = np.random.default_rng(5)
    started = time.perf_counter()
    for start in range(0, count, 250):
        vectors = rng.standard_normal((min(250, count - start), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        batch = [{"id": f"pre{start + i:06d}", "text": f"preloaded document {start + i}", "vector": v.tolist()}
                 for i, v in enumerate(vectors)]
        client.upsert(batch, consistency="all")
    return time.perf_counter() - started


def ingest(client: Any, documents: Sequence[Any]) -> float:
    sys.path.insert(0, str(SCRIPTS))
    from eval_cranfield import batches

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda batch: client.upsert(batch, consistency="quorum"), batches(documents, 32)))
    return time.perf_counter() - started


def lag_of(data_dir: Path, since: float, until: float) -> dict[str, float]:
    lags = []
    for line in (data_dir / PROBE_FILE).read_text().splitlines():
        stamp, lag = line.split()
        if since <= float(stamp) <= until:
            lags.append(float(lag))
    lags.sort()
    return {
        "samples": len(lags),
        "p50_ms": round(statistics.median(lags) * 1000, 2),
        "p99_ms": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000, 2),
        "max_ms": round(lags[-1] * 1000, 2),
    }


def run_version(label: str, code: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(SCRIPTS))
    from eval_cranfield import DEFAULT_DATA, load_cranfield

    from meshrag.localcluster import LocalCluster

    probe_dir = root / "probe"
    probe_dir.mkdir(parents=True)
    (probe_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": os.pathsep.join([str(probe_dir), str(code)]),
           "MESHRAG_CLUSTER_REPAIR_INTERVAL_S": str(args.repair_interval)}
    documents = load_cranfield(DEFAULT_DATA, limit=args.docs).documents
    cluster = LocalCluster(root / "cluster", partitions=args.partitions, replicas=3, env=env).start(3)
    try:
        client = cluster.client(timeout=300)
        dim = int(client.cluster()["embedder"]["dim"])
        preload_s = preload(client, args.preload, dim)
        passes_before = {n.name: cluster.ring(n)["repair"]["passes"] for n in cluster.nodes}
        stop = threading.Event()
        scraper = ThreadPoolExecutor(1).submit(scrape_until, [n.url for n in cluster.nodes], stop, args.scrape_interval)
        since = time.time()
        ingest_s = ingest(client, documents)
        until = time.time()
        stop.set()
        scrapes = scraper.result()
        passes = {n.name: cluster.ring(n)["repair"]["passes"] - passes_before[n.name] for n in cluster.nodes}
        time.sleep(PROBE_FLUSH_S + 0.5)  # the probes write what they have
        nodes = {n.name: dict(lag_of(n.data_dir, since, until), repair_passes=passes[n.name]) for n in cluster.nodes}
    finally:
        cluster.stop()
    return {"version": label, "code": str(code), "preload_s": round(preload_s, 1), "ingest_s": round(ingest_s, 1),
            "docs_per_s": round(len(documents) / ingest_s, 1), "scrapes": scrapes, "nodes": nodes}


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"event-loop lag during a {s['docs']}-document Cranfield ingest through n1: 3 nodes on this machine, N=3, "
        f"P={s['partitions']}, {s['preload']} documents preloaded, a repair pass every {s['repair_interval']} s on every node, "
        f"/metrics and /v1/cluster scraped every {s['scrape_interval']} s (0: never)",
        f"{'version':<9}{'node':<6}{'samples':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'passes':>8}   ingest",
    ]
    for run in report["runs"]:
        for name, node in run["nodes"].items():
            lines.append(f"{run['version']:<9}{name:<6}{node['samples']:>8}{node['p50_ms']:>9.2f}{node['p99_ms']:>9.2f}"
                         f"{node['max_ms']:>9.2f}{node['repair_passes']:>8}   {run['docs_per_s']} docs/s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with (e.g. a worktree of be0c157)")
    parser.add_argument("--docs", type=int, default=400, help="Cranfield documents to ingest")
    parser.add_argument("--preload", type=int, default=15_000, help="documents (with their vectors) stored before the ingest")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--repair-interval", type=float, default=2.0)
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes of every node (0: none)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    versions = ([("before", args.before.resolve())] if args.before else []) + [("after", REPO)]
    report: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("before", "json")}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-loop-lag-") as tmp:
        for label, code in versions:
            report["runs"].append(run_version(label, code, Path(tmp) / label, args))
            print(f"{label}: done", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
