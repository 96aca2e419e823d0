#!/usr/bin/env python3
"""Chaos check for replicated storage: writes keep landing while replicas die and freeze.

    .venv/bin/python chaos/replica_faults.py [--seconds 60] [--seed 1] [--consistency quorum]

A 3-node cluster (N=3, real processes on loopback) takes a steady stream of
document batches through n1 while a seeded fault loop, round after round,
kills n2 with -9 and restarts it, or freezes n3 with SIGSTOP for a few
seconds and thaws it. Documents bring their own vectors, so the stream is
fast and the faults land among many writes in flight.

Acceptance (exit status 0 on pass, 1 on failure):
1. Every acknowledged document is, the moment the stream ends, on at least W
   replicas (read from each node's SQLite files), W = 2 for quorum, 3 for all.
2. Within 60 s after the faults stop, every acknowledged document is on all
   3 replicas (hints and anti-entropy), and readable by id through every node.
A batch whose outcome was unknown (503) is retried as is: writes are
idempotent, and the retry's acknowledgement is what counts.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshrag.client import MeshClientError  # noqa: E402
from meshrag.localcluster import LocalCluster  # noqa: E402

BATCH = 20


def batch_of(index: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    vectors = rng.standard_normal((BATCH, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [{"id": f"chaos/{index:05d}/{i}", "text": f"chaos document {index}.{i}", "vector": v.tolist()} for i, v in enumerate(vectors)]


def write_stream(cluster: LocalCluster, consistency: str, stop: threading.Event, acked: list[str], log: list[str]) -> None:
    client = cluster.client(cluster.nodes[0], timeout=30)
    rng = np.random.default_rng(0)
    index = 0
    while not stop.is_set():
        batch = batch_of(index, rng)
        for attempt in range(10):
            try:
                acked.extend(r["id"] for r in client.upsert(batch, consistency=consistency)["results"])
                break
            except MeshClientError as exc:
                log.append(f"batch {index} attempt {attempt}: {exc.status} {exc.code}")
                time.sleep(0.5)
        index += 1


def fault_loop(cluster: LocalCluster, seconds: float, seed: int, log: list[str]) -> None:
    rng = random.Random(seed)
    _, n2, n3 = cluster.nodes
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 4.0))
        if rng.random() < 0.5:
            log.append("kill -9 n2, restart")
            n2.kill9()
            time.sleep(rng.uniform(0.5, 3.0))
            n2.start().wait_ready()
        else:
            pause = rng.uniform(1.0, 6.0)
            log.append(f"SIGSTOP n3 for {pause:.1f} s")
            cluster.pause(n3)
            time.sleep(pause)
            cluster.resume(n3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--consistency", choices=("quorum", "all"), default="quorum")
    args = parser.parse_args()
    need = 2 if args.consistency == "quorum" else 3
    with tempfile.TemporaryDirectory(prefix="meshrag-chaos-") as tmp:
        cluster = LocalCluster(Path(tmp), partitions=16, replicas=3).start(3)
        try:
            return run(cluster, args, need)
        finally:
            cluster.stop()


def run(cluster: LocalCluster, args: argparse.Namespace, need: int) -> int:
    acked: list[str] = []
    events: list[str] = []
    stop = threading.Event()
    writer = threading.Thread(target=write_stream, args=(cluster, args.consistency, stop, acked, events))
    writer.start()
    try:
        fault_loop(cluster, args.seconds, args.seed, events)
    finally:
        stop.set()
        writer.join()
    for node in cluster.nodes:
        if not node.is_running():
            node.start().wait_ready()
    print("\n".join(events))
    copies = cluster.copies(acked)
    short = [doc_id for doc_id, count in copies.items() if count < need]
    print(f"{len(acked)} documents acknowledged at {args.consistency}; {len(short)} on fewer than {need} replicas at the end")
    try:
        waited = cluster.wait_for(lambda: set(cluster.copies(acked).values()) == {3}, 60, "all on 3 replicas", poll_s=1.0)
        print(f"all on 3 replicas {waited:.1f} s after the faults stopped")
    except TimeoutError as exc:
        print(f"FAIL: {exc}")
        return 1
    unreadable = [d for node in cluster.nodes for d in acked[:: max(1, len(acked) // 50)] if not _readable(cluster, node, d)]
    if short or unreadable:
        print(f"FAIL: {len(short)} under-replicated at the end, {len(unreadable)} unreadable")
        return 1
    print("PASS")
    return 0


def _readable(cluster: LocalCluster, node: Any, doc_id: str) -> bool:
    try:
        return cluster.client(node).get_document(doc_id)["id"] == doc_id
    except MeshClientError:
        return False


if __name__ == "__main__":
    sys.exit(main())
