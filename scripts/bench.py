#!/usr/bin/env python3
"""Benchmark a node over HTTP against the same work done in-process (not a test).

    .venv/bin/python scripts/bench.py                  # starts its own node in a temp dir
    .venv/bin/python scripts/bench.py --node URL       # uses a running node
    .venv/bin/python scripts/bench.py --json

(a) ingest:  N Cranfield abstracts through POST /v1/documents in batches, as
    docs/s and chunks/s, against Embedder.encode alone on the very same chunk
    texts (read back from the node) in this process. The ratio says how much of
    the embedder's speed survives HTTP, chunking, SQLite and usearch.
(b) search:  the 225 Cranfield queries one after another through /v1/search
    (dense, k=10), p50/p99, against embed(query) + usearch search on one index
    holding the same chunk vectors, in this process.
(a') re-ingest: the same documents again; all unchanged, nothing embedded,
    as a speed-up over the first ingest.
(c) ask:     time to first token and tokens/s of a streamed /v1/ask on the
    node's generator (token events counted), over the sample questions.

Document ids carry a per-run nonce so that a node that already holds the
corpus still does the full work (an unchanged upsert is a no-op).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_cranfield import DEFAULT_DATA, REPO, batches, ingest, load_queries  # noqa: E402

from meshrag.client import MeshClient  # noqa: E402
from meshrag.localnode import LocalNode  # noqa: E402
from meshrag.sources import SourceDocument, iter_documents  # noqa: E402

SAMPLES = REPO / "samples"


WARM_UP_QUESTION = "What does this handbook cover?"


@dataclass(frozen=True)
class Settings:
    docs: int
    batch_size: int
    concurrency: int
    threads: int
    generation_threads: str
    queries: int
    ask_questions: int
    max_tokens: int


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def rename(documents: Sequence[SourceDocument], nonce: str) -> list[SourceDocument]:
    return [SourceDocument(f"bench-{nonce}/{d.id}", d.text, d.metadata) for d in documents]


# ---------------------------------------------------------------- (a) ingest


def chunk_texts(client: MeshClient, doc_ids: Sequence[str]) -> list[str]:
    """The chunks the node made, read back so the in-process run embeds exactly the same texts."""
    return [chunk["text"] for doc_id in doc_ids for chunk in client.get_document(doc_id)["chunks"]]


def bench_ingest(client: MeshClient, embedder: Any, documents: Sequence[SourceDocument], s: Settings) -> tuple[dict[str, Any], np.ndarray]:
    """Alternate rounds: `concurrency` batches over HTTP (timed), then their chunks in-process (timed).

    Interleaving keeps both sides under the same background load; on a shared
    2-core host two runs minutes apart can differ by a factor of two.
    """
    from tqdm import tqdm

    http_s = local_s = 0.0
    by_status: dict[str, int] = {}
    vectors: list[np.ndarray] = []
    chunks = 0
    embedder.encode(["warm-up: the first call pays one-off allocations"])
    rounds = list(batches(documents, s.batch_size * s.concurrency))
    with ThreadPoolExecutor(s.concurrency) as pool, tqdm(total=len(documents), unit="doc", desc="ingest", file=sys.stderr) as bar:
        for round_docs in rounds:
            started = time.perf_counter()
            for response in pool.map(client.upsert, [round_docs[i : i + s.batch_size] for i in range(0, len(round_docs), s.batch_size)]):
                for result in response["results"]:
                    by_status[result["status"]] = by_status.get(result["status"], 0) + 1
            http_s += time.perf_counter() - started
            texts = chunk_texts(client, [d["id"] for d in round_docs])
            started = time.perf_counter()
            vectors.append(embedder.encode(texts))
            local_s += time.perf_counter() - started
            chunks += len(texts)
            bar.update(len(round_docs))
    return {
        "documents": len(documents),
        "chunks": chunks,
        "http_seconds": round(http_s, 2),
        "http_docs_per_s": round(len(documents) / http_s, 1),
        "http_chunks_per_s": round(chunks / http_s, 1),
        "embed_only_seconds": round(local_s, 2),
        "embed_only_docs_per_s": round(len(documents) / local_s, 1),
        "embed_only_chunks_per_s": round(chunks / local_s, 1),
        "ratio": round(local_s / http_s, 3),
        "by_status": by_status,
    }, np.concatenate(vectors)


def bench_reingest(client: MeshClient, documents: Sequence[SourceDocument], s: Settings, first_http_s: float) -> dict[str, Any]:
    """The same documents again: every one must come back unchanged, with nothing embedded."""
    embedded_before = embedded_chunks(client)
    by_status: dict[str, int] = {}
    started = time.perf_counter()
    with ThreadPoolExecutor(s.concurrency) as pool:
        for response in pool.map(client.upsert, list(batches(documents, s.batch_size))):
            for result in response["results"]:
                by_status[result["status"]] = by_status.get(result["status"], 0) + 1
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "docs_per_s": round(len(documents) / seconds, 1),
        "speedup_vs_first": round(first_http_s / seconds, 1),
        "chunks_embedded": embedded_chunks(client) - embedded_before,
        "by_status": by_status,
    }


def embedded_chunks(client: MeshClient) -> float:
    """The node's meshrag_chunks_embedded_total counter."""
    with urllib.request.urlopen(client.base_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("meshrag_chunks_embedded_total "))


# ---------------------------------------------------------------- (b) search


def local_index(vectors: np.ndarray) -> Any:
    """One usearch index with the node's default HNSW settings, searched through its graph
    (the node's exhaustive search of small indexes is its own: the baseline stays plain usearch)."""
    from meshrag.config import StorageConfig
    from meshrag.store.vector_index import new_usearch_index

    settings = StorageConfig().index_settings()
    index = new_usearch_index(vectors.shape[1], settings)
    index.expansion_search = settings.beam(10)  # the node's beam for the k=10 searches compared
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors)
    return index


def bench_search(client: MeshClient, embedder: Any, vectors: np.ndarray, queries: list[str]) -> dict[str, Any]:
    """Each query over HTTP, then the same query in-process: both see the same background load."""
    from tqdm import tqdm

    index = local_index(vectors)
    for query in queries[:5]:  # warm-up both paths
        client.search(query, k=10, mode="dense")
        index.search(embedder.encode([query])[0], 10)
    http_ms: list[float] = []
    local_ms: list[float] = []
    node_ms: dict[str, list[float]] = {}
    for query in tqdm(queries, desc="search", unit="q", file=sys.stderr):
        started = time.perf_counter()
        timings = client.search(query, k=10, mode="dense")["timings"]
        http_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        index.search(embedder.encode([query])[0], 10)
        local_ms.append((time.perf_counter() - started) * 1000)
        for key, value in timings.items():
            node_ms.setdefault(key, []).append(float(value))
    result: dict[str, Any] = {"queries": len(queries)}
    for name, values in (("http", http_ms), ("in_process", local_ms)):
        result[f"{name}_p50_ms"] = round(percentile(values, 50), 2)
        result[f"{name}_p99_ms"] = round(percentile(values, 99), 2)
    result["ratio_p50"] = round(result["http_p50_ms"] / result["in_process_p50_ms"], 2)
    result["ratio_p99"] = round(result["http_p99_ms"] / result["in_process_p99_ms"], 2)
    # Where the node spends a search (its own timings), to explain the ratio.
    result["node_timings_p50_ms"] = {key: round(percentile(values, 50), 2) for key, values in sorted(node_ms.items())}
    return result


# ---------------------------------------------------------------- (c) ask


def timed_ask(client: MeshClient, question: str, max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    first = last = None
    tokens = 0
    server_ttft = float("nan")
    for event, data in client.ask_stream(question, max_tokens=max_tokens):
        if event == "done":
            server_ttft = float(data.get("timings", {}).get("first_token_ms", "nan"))
        elif event == "token":
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
            tokens += 1
        elif event == "error":
            raise RuntimeError(f"ask failed: {data['error']}")
    if first is None or last is None:
        return {"ttft_ms": float("nan"), "node_ttft_ms": server_ttft, "tokens": 0, "tokens_per_s": 0.0}
    # Decode rate: tokens after the first over the time after the first.
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return {"ttft_ms": (first - started) * 1000, "node_ttft_ms": server_ttft, "tokens": tokens, "tokens_per_s": rate}


def bench_ask(client: MeshClient, questions: list[str], max_tokens: int) -> dict[str, Any]:
    samples = [p for p in (SAMPLES / "corpus",) if p.exists()]
    if samples:
        ingest(client, list(iter_documents(samples)), 32, 1, progress=False)
    # Warm-up with a question not measured: a repeated prompt would hit llama.cpp's prompt cache.
    timed_ask(client, WARM_UP_QUESTION, 8)
    runs = [timed_ask(client, q, max_tokens) for q in questions]
    return {
        "questions": len(runs),
        "max_tokens": max_tokens,
        "ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in runs), 1),
        "node_ttft_ms_median": round(statistics.median(r["node_ttft_ms"] for r in runs), 1),
        "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in runs), 1),
        "tokens_mean": round(statistics.fmean(r["tokens"] for r in runs), 1),
        "runs": [{k: round(v, 1) for k, v in r.items()} for r in runs],
    }


# ---------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    import torch

    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def render(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        f"machine: {m['cores']} cores ({m['cpu']}), python {m['python']}, torch {m['torch']}",
        "settings: " + ", ".join(f"{k}={v}" for k, v in s.items()),
        "",
        f"{'benchmark':<34}{'over HTTP':>14}{'in-process':>14}{'ratio':>9}",
    ]
    a = report.get("ingest")
    if a:
        lines.append(f"{'ingest docs/s':<34}{a['http_docs_per_s']:>14}{a['embed_only_docs_per_s']:>14}{a['ratio']:>9}")
        label = f"ingest chunks/s ({a['chunks']} chunks)"
        lines.append(f"{label:<34}{a['http_chunks_per_s']:>14}{a['embed_only_chunks_per_s']:>14}{a['ratio']:>9}")
    r = report.get("reingest")
    if r:
        lines.append(f"{'re-ingest same docs/s':<34}{r['docs_per_s']:>14}{'-':>14}{'-':>9}")
        lines.append(f"  {r['speedup_vs_first']}x faster than the first ingest; chunks embedded: {r['chunks_embedded']:.0f}; {r['by_status']}")
    b = report.get("search")
    if b:
        lines.append(f"{'search p50 ms (dense, k=10)':<34}{b['http_p50_ms']:>14}{b['in_process_p50_ms']:>14}{b['ratio_p50']:>9}")
        lines.append(f"{'search p99 ms':<34}{b['http_p99_ms']:>14}{b['in_process_p99_ms']:>14}{b['ratio_p99']:>9}")
        lines.append("  node's own p50: " + ", ".join(f"{k} {v}" for k, v in b["node_timings_p50_ms"].items()))
    lines.append("  (ratio: ingest = HTTP throughput / in-process throughput; search = HTTP latency / in-process latency)")
    c = report.get("ask")
    if c:
        lines.append(f"{'ask time to first token ms':<34}{c['ttft_ms_median']:>14}{'-':>14}{'-':>9}")
        lines.append(f"  node's own first_token_ms median: {c['node_ttft_ms_median']}")
        label = f"ask tokens/s (max {c['max_tokens']} tokens)"
        lines.append(f"{label:<34}{c['tokens_per_s_median']:>14}{'-':>14}{'-':>9}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", help="URL of a running node (default: start one in a temp dir)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--docs", type=int, default=1400, help="Cranfield documents to ingest (default 1400)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads, node and in-process alike")
    parser.add_argument("--gen-threads", type=int, help="llama.cpp threads of the own node (default: the node's default)")
    parser.add_argument("--queries", type=int, default=225)
    parser.add_argument("--ask-questions", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip-ask", action="store_true", help="do not load or time the generator")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def start_own_node(work_dir: Path, threads: int, gen_threads: int | None, with_generator: bool) -> LocalNode:
    env = {"MESHRAG_EMBEDDER_THREADS": str(threads), "MESHRAG_OBSERVABILITY_LOG_FORMAT": "text"}
    if gen_threads:
        env["MESHRAG_GENERATION_THREADS"] = str(gen_threads)
    roles = "storage,coordinator,generator" if with_generator else "storage,coordinator"
    return LocalNode(work_dir / "node", name="bench", extra_args=["--roles", roles], env=env).start()


def run(args: argparse.Namespace, client: MeshClient) -> dict[str, Any]:
    from meshrag.rag.embedder import Embedder, default_model_path

    documents = rename(list(iter_documents([args.data / "corpus.jsonl"]))[: args.docs], uuid.uuid4().hex[:8])
    queries = list(load_queries(args.data / "queries.jsonl").values())[: args.queries]
    questions = [q for q in (SAMPLES / "questions.txt").read_text().splitlines() if q.strip()][: args.ask_questions]
    generation_threads = str(args.gen_threads) if args.gen_threads else "node default"
    settings = Settings(len(documents), args.batch_size, args.concurrency, args.threads, generation_threads, len(queries), len(questions), args.max_tokens)
    embedder = Embedder(default_model_path(), threads=args.threads)
    embedder.load()
    report: dict[str, Any] = {"machine": machine(), "settings": vars(settings), "node": client.base_url}
    try:
        report["ingest"], vectors = bench_ingest(client, embedder, documents, settings)
        report["reingest"] = bench_reingest(client, documents, settings, report["ingest"]["http_seconds"])
        report["search"] = bench_search(client, embedder, vectors, queries)
        if not args.skip_ask:
            report["ask"] = bench_ask(client, questions, args.max_tokens)
    finally:
        if args.node:  # leave a shared node as we found it (a temp node just goes away)
            remove_documents(client, documents)
    return report


def remove_documents(client: MeshClient, documents: Sequence[SourceDocument]) -> None:
    from meshrag.client import MeshClientError

    for document in documents:
        try:
            client.delete_document(document.id)
        except MeshClientError as exc:
            if exc.status != 404:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meshrag-bench-") as work:
        node = None if args.node else start_own_node(Path(work), args.threads, args.gen_threads, not args.skip_ask)
        try:
            if node is not None:
                print(f"starting a node on {node.url} (log {node.log_path}) ...", file=sys.stderr)
                node.wait_ready()
            client = MeshClient(args.node or node.url, timeout=300)  # type: ignore[union-attr]
            report = run(args, client)
        finally:
            if node is not None:
                node.stop()
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
