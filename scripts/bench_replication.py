#!/usr/bin/env python3
"""Benchmark replicated storage with real node processes on loopback (not a test).

    .venv/bin/python scripts/bench_replication.py              # 400 Cranfield documents
    .venv/bin/python scripts/bench_replication.py --docs 1398 --json

(a) ingest: the same documents through one node of a 3-node cluster with N=1,
    then of a fresh 3-node cluster with N=3 (QUORUM), against the embedder
    alone on the very same chunk texts in this process. Ratios, all measured
    in this run: N=3 / N=1 (replication overhead) and N=3 / embedder.
(b) repair: a 4th node joins the N=3 cluster; the time from its readiness
    until every node holds exactly its ring share, and the transfer speed (documents/s and MB/s,
    from the nodes' own repair counters).
(c) restore: a node is killed with -9 and removed (`remove`); the time until
    every document is on 3 live nodes again, with the transfer speed.

All nodes share this machine: on 2 cores, 3-4 node processes compete with
each other, so the figures are a floor for what separate hosts would do.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_cranfield import DEFAULT_DATA, batches, load_cranfield  # noqa: E402

from meshrag.client import MeshClient  # noqa: E402
from meshrag.localcluster import LocalCluster  # noqa: E402
from meshrag.sources import SourceDocument  # noqa: E402

PARTITIONS = 32


def ingest(client: MeshClient, documents: Sequence[SourceDocument], consistency: str) -> float:
    """Seconds to upsert everything in batches of 32, two in flight."""
    from tqdm import tqdm

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool, tqdm(total=len(documents), unit="doc", desc=f"ingest {consistency}", file=sys.stderr) as bar:
        upload = lambda batch: client.upsert(batch, consistency=consistency)  # noqa: E731
        for response in pool.map(upload, batches(documents, 32)):
            bar.update(len(response["results"]))
    return time.perf_counter() - started


def embed_alone(client: MeshClient, documents: Sequence[SourceDocument]) -> tuple[float, int]:
    """Seconds to embed the chunks the cluster made (read back), in this process."""
    from meshrag.rag.embedder import Embedder, default_model_path

    texts = [chunk["text"] for doc in documents for chunk in client.get_document(doc.id)["chunks"]]
    embedder = Embedder(default_model_path(), threads=1)
    embedder.load()
    embedder.encode(["warm-up"])
    started = time.perf_counter()
    for start in range(0, len(texts), 64):
        embedder.encode(texts[start : start + 64])
    return time.perf_counter() - started, len(texts)


def repair_counters(cluster: LocalCluster) -> tuple[int, int]:
    """Documents and bytes moved by repair, all nodes together: a pull counts on the
    node that pulled (in), a push on the node that pushed (out), so in + out is every
    transfer once, duplicates included."""
    docs = size = 0
    for node in cluster.running():
        repair = cluster.ring(node)["repair"]
        docs += repair["docs_in"] + repair["docs_out"]
        size += repair["bytes_in"] + repair["bytes_out"]
    return docs, size


def transfer(seconds: float, before: tuple[int, int], after: tuple[int, int]) -> dict[str, Any]:
    docs, size = after[0] - before[0], after[1] - before[1]
    return {"seconds": round(seconds, 2), "documents_moved": docs, "mb_moved": round(size / 1e6, 2),
            "docs_per_s": round(docs / seconds, 1), "mb_per_s": round(size / 1e6 / seconds, 2)}


def run(docs: int, root: Path) -> dict[str, Any]:
    documents = load_cranfield(DEFAULT_DATA, limit=docs).documents
    ids = [doc.id for doc in documents]
    report: dict[str, Any] = {"documents": len(documents), "partitions": PARTITIONS}

    single = LocalCluster(root / "n1-cluster", partitions=PARTITIONS, replicas=1).start(3)
    try:
        n1_s = ingest(single.client(timeout=300), documents, "quorum")
        embed_s, chunks = embed_alone(single.client(), documents)
    finally:
        single.stop()

    replicated = LocalCluster(root / "n3-cluster", partitions=PARTITIONS, replicas=3,
                              env={"MESHRAG_CLUSTER_REPAIR_INTERVAL_S": "5"}).start(3)
    try:
        n3_s = ingest(replicated.client(timeout=300), documents, "quorum")
        report["ingest"] = {
            "chunks": chunks,
            "embedder_alone_docs_per_s": round(len(documents) / embed_s, 1),
            "n1_docs_per_s": round(len(documents) / n1_s, 1),
            "n3_docs_per_s": round(len(documents) / n3_s, 1),
            "n3_over_n1": round(n1_s / n3_s, 3),
            "n3_over_embedder": round(embed_s / n3_s, 3),
        }
        before = repair_counters(replicated)
        replicated.add("n4")  # waits until it is ready: its first repair pass starts now
        started = time.perf_counter()
        LocalCluster.wait_for(lambda: replicated.holds_ring_share(ids), 600, "every node holds its share", poll_s=0.25)
        report["join"] = transfer(time.perf_counter() - started, before, repair_counters(replicated))
        held = len(replicated.stored_ids(replicated.node("n4")))
        report["join"]["share_of_copies_moved"] = round(held / (3 * len(ids)), 3)
        report["join"]["transfers_per_document"] = round(report["join"]["documents_moved"] / held, 2)

        victim = replicated.node("n2")
        victim.kill9()
        observer = replicated.node("n1")
        LocalCluster.wait_for(lambda: replicated.member_state(observer, "n2") == "dead", 60, "n2 seen dead")
        before = repair_counters(replicated)
        started = time.perf_counter()
        replicated.client(observer).remove("n2")
        LocalCluster.wait_for(lambda: set(replicated.copies(ids, replicated.running()).values()) == {3}, 600,
                              "3 copies on the survivors", poll_s=0.25)
        report["restore"] = transfer(time.perf_counter() - started, before, repair_counters(replicated))
    finally:
        replicated.stop()
    return report


def render(report: dict[str, Any]) -> str:
    i, j, r = report["ingest"], report["join"], report["restore"]
    return "\n".join([
        f"{report['documents']} Cranfield documents ({i['chunks']} chunks), {report['partitions']} partitions, 3 nodes on this machine",
        f"ingest: embedder alone {i['embedder_alone_docs_per_s']} docs/s | N=1 {i['n1_docs_per_s']} docs/s | N=3 QUORUM {i['n3_docs_per_s']} docs/s",
        f"        N=3 / N=1 = {i['n3_over_n1']}   N=3 / embedder alone = {i['n3_over_embedder']}",
        f"join:   4th node in sync in {j['seconds']} s, {j['documents_moved']} documents ({j['mb_moved']} MB) at "
        f"{j['docs_per_s']} docs/s, {j['mb_per_s']} MB/s; it holds {j['share_of_copies_moved']:.1%} of all copies"
        f" ({j['transfers_per_document']} transfers per document it holds)",
        f"remove: 3 copies restored in {r['seconds']} s, {r['documents_moved']} documents ({r['mb_moved']} MB) at "
        f"{r['docs_per_s']} docs/s, {r['mb_per_s']} MB/s",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=400, help="Cranfield documents to use (at most 1398)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meshrag-bench-replication-") as tmp:
        report = run(args.docs, Path(tmp))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
