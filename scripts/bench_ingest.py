#!/usr/bin/env python3
"""Ingestion throughput: the cluster against the embedder alone, measured in one run.

    .venv/bin/python scripts/bench_ingest.py                    # the Cranfield corpus, 1 node then 3
    .venv/bin/python scripts/bench_ingest.py --docs 400 --json out.json

Every figure is documents/s over the same documents (Cranfield, ../shared),
on this host, in this run:

(0) embedder alone: one process chunks the documents with the nodes' chunker
    and encodes every chunk with the same model, one torch thread, batches of
    64: the most one node's embedder could give, with nothing else to do.
(1) one node (P=16): `meshrag ingest FILE --node n1` (the CLI's defaults:
    batches of 32, two in flight per node).
(2) three nodes (P=16, N=2), the same command through n1 with
    `--no-discover`: every request lands on n1, which splits its texts over
    the three nodes' embedders (embedding/router.py). This is the embedding
    service alone.
(3) the same three nodes (fresh data), `meshrag ingest --node n1` with
    discovery: the CLI also spreads its batches over the nodes it finds.

Ratios: each cluster figure over (0), and (2) and (3) over (1). The issue's
goal is (2) >= 1.8x (1) on a 2-core host, where three embedder threads share
two cores with storage and replication.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshrag.localcluster import LocalCluster  # noqa: E402
from meshrag.rag.chunking import Chunker, ChunkingSettings  # noqa: E402
from meshrag.rag.embedder import Embedder, default_model_path  # noqa: E402
from meshrag.sources import iter_documents  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "cranfield" / "corpus.jsonl"


def log(message: str) -> None:
    print(f"[bench_ingest] {message}", file=sys.stderr, flush=True)


def corpus_file(work: Path, docs: int) -> Path:
    """The first ``docs`` Cranfield records, as the file every run ingests."""
    lines = [line for line in CORPUS.read_text().splitlines() if line.strip()][:docs]
    path = work / "cranfield.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def embedder_alone(path: Path) -> dict[str, Any]:
    """Chunk and encode every document in this process: no HTTP, no storage, no replication."""
    embedder = Embedder(default_model_path(), threads=1, max_batch=64)
    embedder.load()
    chunker = Chunker(ChunkingSettings(max_tokens=0, overlap_tokens=40), embedder.token_offsets, window=embedder.max_seq_tokens)
    documents = list(iter_documents([path]))
    embedder.encode(["warm up the model"] * 8)
    started = time.perf_counter()
    texts = [chunk.text for doc in documents for chunk in chunker.chunk(doc.text)]
    for start in range(0, len(texts), 64):
        embedder.encode(texts[start : start + 64])
    seconds = time.perf_counter() - started
    return {"documents": len(documents), "chunks": len(texts), "seconds": round(seconds, 2), "docs_per_s": round(len(documents) / seconds, 2)}


def cli_ingest(path: Path, node_url: str, discover: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "meshrag.cli", "ingest", str(path), "--node", node_url, "--json"]
    if not discover:
        command.append("--no-discover")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"meshrag ingest failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    created = summary["by_status"].get("created", 0)
    if created != summary["documents"]:
        raise RuntimeError(f"expected every document created on a fresh cluster: {summary}")
    return {"documents": summary["documents"], "seconds": round(seconds, 2), "docs_per_s": round(summary["documents"] / seconds, 2),
            "nodes_used": len(summary.get("nodes", [node_url]))}


def cluster_run(work: Path, name: str, size: int, replicas: int, path: Path, discover: bool) -> dict[str, Any]:
    cluster = LocalCluster(work / name, partitions=16, replicas=replicas)
    try:
        log(f"{name}: starting {size} node(s)")
        cluster.start(size)
        log(f"{name}: ingesting")
        figures = cli_ingest(path, cluster.nodes[0].url, discover)
        view = cluster.client(cluster.nodes[0]).cluster()["embedding"]
        figures["embedded_by_n1_router"] = {e["node"]: e["texts"] for e in view["embedders"]}
        figures["retries"] = view["retries"]
        log(f"{name}: {figures['docs_per_s']} documents/s")
        return figures
    finally:
        cluster.stop()


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    return round(a["docs_per_s"] / b["docs_per_s"], 2)


def render(report: dict[str, Any]) -> str:
    alone, one = report["embedder_alone"], report["one_node"]
    rows = [
        ("embedder alone, one process", alone, "1.00", "-"),
        ("1 node, meshrag ingest", one, f"{ratio(one, alone):.2f}", "1.00"),
    ]
    for key, label in (("three_nodes_service", "3 nodes N=2, one --node, no discovery"),
                       ("three_nodes_discover", "3 nodes N=2, one --node, discovery")):
        if key in report:
            rows.append((label, report[key], f"{ratio(report[key], alone):.2f}", f"{ratio(report[key], one):.2f}"))
    lines = [f"{'setup':42} {'docs':>5} {'seconds':>8} {'docs/s':>7} {'vs alone':>9} {'vs 1 node':>10}"]
    for label, figures, vs_alone, vs_one in rows:
        lines.append(f"{label:42} {figures['documents']:>5} {figures['seconds']:>8} {figures['docs_per_s']:>7} {vs_alone:>9} {vs_one:>10}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1400, help="first N Cranfield documents (default: all)")
    parser.add_argument("--skip-discover", action="store_true", help="leave out run (3)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meshrag-bench-ingest-") as tmp:
        work = Path(tmp)
        path = corpus_file(work, args.docs)
        log("embedder alone")
        report: dict[str, Any] = {"embedder_alone": embedder_alone(path)}
        report["one_node"] = cluster_run(work, "one", 1, 1, path, discover=False)
        report["three_nodes_service"] = cluster_run(work, "three", 3, 2, path, discover=False)
        if not args.skip_discover:
            report["three_nodes_discover"] = cluster_run(work, "three-discover", 3, 2, path, discover=True)
    report["ratios"] = {
        "one_node_vs_alone": ratio(report["one_node"], report["embedder_alone"]),
        "three_nodes_vs_alone": ratio(report["three_nodes_service"], report["embedder_alone"]),
        "three_nodes_vs_one_node": ratio(report["three_nodes_service"], report["one_node"]),
    }
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    print(render(report))
    print(json.dumps(report["ratios"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
