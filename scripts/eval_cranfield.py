#!/usr/bin/env python3
"""Retrieval quality on Cranfield: nDCG@10 and recall@100 through the HTTP API.

    .venv/bin/python scripts/eval_cranfield.py                 # starts its own node in a temp dir
    .venv/bin/python scripts/eval_cranfield.py --node URL      # uses a running node
    .venv/bin/python scripts/eval_cranfield.py --baseline      # + exact cosine search in-process

Corpus, queries and graded qrels come from ../shared/data/cranfield (BEIR
layout: corpus.jsonl with _id/title/text, queries.jsonl with _id/text,
qrels.tsv "query-id corpus-id score"). The 1,400 abstracts are ingested through
POST /v1/documents (ids "corpus:<_id>", the way `meshrag ingest corpus.jsonl`
names them), then every query with judgements runs through POST /v1/search in
each mode.

Relevance: the qrels grades are 1..4, higher meaning more relevant (4 = the
document answers the question completely, 1 = minimal interest; the original
Cranfield codes 1..4 reversed, as ir_datasets/BEIR publish them). The grade is
used directly as the gain of nDCG (linear gains, log2(rank + 1) discount, ideal
ranking from all of the query's judgements), as trec_eval and BEIR do. Every
judged document (grade >= 1) counts as relevant for recall.

Search returns chunks; a document ranks at its best chunk (the first time it
appears in the score-ordered hits) and later chunks of it are dropped, so k=100
chunks can yield slightly fewer than 100 documents.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshrag.client import MeshClient  # noqa: E402
from meshrag.localnode import LocalNode  # noqa: E402
from meshrag.sources import SourceDocument, iter_documents  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cranfield"
MODES = ("dense", "bm25", "hybrid")
NDCG_AT = 10


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Cranfield:
    documents: list[SourceDocument]  # ids "corpus:<_id>", as `meshrag ingest` names them
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> cranfield doc id -> grade
    skipped: list[str]  # records without text (Cranfield has two), as reported by sources.py

    def cranfield_id(self, doc_id: str) -> str:
        """'corpus:184' -> '184' (the id the qrels use)."""
        return doc_id.split(":", 1)[1]


def load_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                queries[str(record["_id"])] = record["text"]
    return queries


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Graded judgements; the header row and grades <= 0 (not relevant) are skipped."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
                continue  # header
            query_id, doc_id, grade = parts[0], parts[1], int(parts[2])
            if grade > 0:
                qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


def load_cranfield(data_dir: Path, limit: int | None = None) -> Cranfield:
    skipped: list[str] = []
    documents = list(iter_documents([data_dir / "corpus.jsonl"], on_skip=lambda path, reason: skipped.append(reason)))
    return Cranfield(
        documents=documents[:limit] if limit else documents,
        queries=load_queries(data_dir / "queries.jsonl"),
        qrels=load_qrels(data_dir / "qrels.tsv"),
        skipped=skipped,
    )


# ---------------------------------------------------------------- metrics


def dcg(gains: Iterable[float]) -> float:
    return sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))


def ndcg_at(ranked: Sequence[str], grades: dict[str, int], k: int = NDCG_AT) -> float:
    ideal = dcg(sorted(grades.values(), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg(grades.get(doc, 0) for doc in ranked[:k]) / ideal


def recall_at(ranked: Sequence[str], grades: dict[str, int], k: int) -> float:
    if not grades:
        return 0.0
    return len(set(ranked[:k]) & set(grades)) / len(grades)


def dedupe_by_document(doc_ids: Iterable[str]) -> list[str]:
    """Keep each document at its first (best) position."""
    seen: set[str] = set()
    ranked: list[str] = []
    for doc_id in doc_ids:
        if doc_id not in seen:
            seen.add(doc_id)
            ranked.append(doc_id)
    return ranked


def score_run(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int) -> dict[str, float]:
    """Mean nDCG@10 and recall@k over the judged queries in `runs`."""
    judged = [q for q in runs if q in qrels]
    return {
        "ndcg@10": round(statistics.fmean(ndcg_at(runs[q], qrels[q]) for q in judged), 4),
        f"recall@{k}": round(statistics.fmean(recall_at(runs[q], qrels[q], k) for q in judged), 4),
        "queries": len(judged),
    }


# ---------------------------------------------------------------- over HTTP


def batches(documents: Sequence[SourceDocument], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(documents), size):
        yield [{"id": d.id, "text": d.text, "metadata": d.metadata} for d in documents[start : start + size]]


def ingest(client: MeshClient, documents: Sequence[SourceDocument], batch_size: int, concurrency: int, progress: bool) -> dict[str, Any]:
    """Upload in batches, `concurrency` in flight (keeps the node's embedder batches full)."""
    from tqdm import tqdm

    by_status: dict[str, int] = {}
    started = time.perf_counter()
    with tqdm(total=len(documents), unit="doc", desc="ingest", disable=not progress, file=sys.stderr) as bar, ThreadPoolExecutor(concurrency) as pool:
        for response in pool.map(client.upsert, batches(documents, batch_size)):
            for result in response["results"]:
                by_status[result["status"]] = by_status.get(result["status"], 0) + 1
            bar.update(len(response["results"]))
    seconds = time.perf_counter() - started
    return {"documents": len(documents), "seconds": round(seconds, 2), "docs_per_s": round(len(documents) / seconds, 1), "by_status": by_status}


def search_run(client: MeshClient, data: Cranfield, mode: str, k: int, progress: bool) -> tuple[dict[str, list[str]], list[float]]:
    """Every judged query through /v1/search; returns ranked cranfield ids per query and latencies (ms)."""
    from tqdm import tqdm

    runs: dict[str, list[str]] = {}
    latencies: list[float] = []
    judged = [q for q in data.queries if q in data.qrels]
    for query_id in tqdm(judged, desc=f"search {mode}", unit="q", disable=not progress, file=sys.stderr):
        started = time.perf_counter()
        result = client.search(data.queries[query_id], k=k, mode=mode)
        latencies.append((time.perf_counter() - started) * 1000)
        runs[query_id] = dedupe_by_document(data.cranfield_id(hit["doc_id"]) for hit in result["hits"])
    return runs, latencies


# ---------------------------------------------------------------- exact baseline


def exact_cosine_runs(data: Cranfield, k: int, threads: int) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Reference: the same model on each whole document (no chunking), exact cosine in numpy."""
    import numpy as np

    from meshrag.rag.embedder import Embedder, default_model_path

    embedder = Embedder(default_model_path(), threads=threads)
    embedder.load()
    started = time.perf_counter()
    doc_vectors = embedder.encode([d.text for d in data.documents])
    embed_seconds = time.perf_counter() - started
    judged = [q for q in data.queries if q in data.qrels]
    query_vectors = embedder.encode([data.queries[q] for q in judged])
    scores = query_vectors @ doc_vectors.T  # rows are unit length: dot product = cosine
    doc_ids = [data.cranfield_id(d.id) for d in data.documents]
    runs = {q: [doc_ids[i] for i in np.argsort(-scores[row], kind="stable")[:k]] for row, q in enumerate(judged)}
    return runs, {"model": embedder.model_name, "embed_seconds": round(embed_seconds, 1)}


# ---------------------------------------------------------------- main


def start_own_node(work_dir: Path, threads: int, partitions: int | None) -> LocalNode:
    """A node with no generator role: evaluation needs no LLM, and loading one costs time and memory."""
    env = {"MESHRAG_EMBEDDER_THREADS": str(threads), "MESHRAG_OBSERVABILITY_LOG_FORMAT": "text"}
    if partitions:
        env["MESHRAG_CLUSTER_PARTITIONS"] = str(partitions)
    node = LocalNode(work_dir / "node", name="eval", extra_args=["--roles", "storage,coordinator"], env=env)
    return node.start()


def evaluate(args: argparse.Namespace, data: Cranfield, client: MeshClient) -> dict[str, Any]:
    progress = not args.quiet
    report: dict[str, Any] = {"node": client.base_url, "documents": len(data.documents), "skipped": data.skipped, "k": args.k}
    report["ingest"] = ingest(client, data.documents, args.batch_size, args.concurrency, progress)
    report["modes"] = {}
    for mode in args.modes:
        runs, latencies = search_run(client, data, mode, args.k, progress)
        scores = score_run(runs, data.qrels, args.k)
        scores["p50_ms"] = round(statistics.median(latencies), 1)
        report["modes"][mode] = scores
    if args.baseline:
        print("baseline: embedding whole documents in-process ...", file=sys.stderr)
        runs, info = exact_cosine_runs(data, args.k, args.threads)
        report["baseline"] = {**score_run(runs, data.qrels, args.k), **info}
    return report


def render(report: dict[str, Any]) -> str:
    k = report["k"]
    rows = [(mode, f"{s['ndcg@10']:.4f}", f"{s[f'recall@{k}']:.4f}", s["queries"], s["p50_ms"]) for mode, s in report["modes"].items()]
    if "baseline" in report:
        s = report["baseline"]
        rows.append(("exact cosine (in-process, whole doc)", f"{s['ndcg@10']:.4f}", f"{s[f'recall@{k}']:.4f}", s["queries"], "-"))
    headers = ("mode", "nDCG@10", f"recall@{k}", "queries", "p50 ms")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ing = report["ingest"]
    footer = f"\ningested {ing['documents']} documents in {ing['seconds']} s ({ing['docs_per_s']} docs/s; {ing['by_status']}) via {report['node']}"
    if report["skipped"]:
        footer += f"\nskipped {len(report['skipped'])} corpus records: {'; '.join(report['skipped'])}"
    return "\n".join(lines) + footer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", help="URL of a running node (default: start one in a temp dir)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"cranfield directory (default {DEFAULT_DATA})")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES), help="comma-separated: dense,bm25,hybrid")
    parser.add_argument("--k", type=int, default=100, help="hits per search (default 100)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads for the own node and the baseline")
    parser.add_argument("--partitions", type=int, help="partitions of the own node (default: the node's default)")
    parser.add_argument("--baseline", action="store_true", help="also run exact cosine search in-process on whole documents")
    parser.add_argument("--min-dense-ndcg", type=float, default=0.36, help="exit 1 if dense nDCG@10 is below this (default 0.36)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = load_cranfield(args.data)
    with tempfile.TemporaryDirectory(prefix="meshrag-eval-") as work:
        node = None if args.node else start_own_node(Path(work), args.threads, args.partitions)
        try:
            if node is not None:
                print(f"starting a node on {node.url} (log {node.log_path}) ...", file=sys.stderr)
                node.wait_ready()
            client = MeshClient(args.node or node.url, timeout=300)  # type: ignore[union-attr]
            report = evaluate(args, data, client)
        finally:
            if node is not None:
                node.stop()
    print(json.dumps(report, indent=2) if args.json else render(report))
    dense = report["modes"].get("dense")
    if dense is not None and dense["ndcg@10"] < args.min_dense_ndcg:
        print(f"FAIL: dense nDCG@10 {dense['ndcg@10']:.4f} < {args.min_dense_ndcg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
