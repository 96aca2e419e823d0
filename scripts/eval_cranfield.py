#!/usr/bin/env python3
"""Retrieval quality on Cranfield through the HTTP API, against one in-process index.

    .venv/bin/python scripts/eval_cranfield.py                        # 1 node of its own (temp dir)
    .venv/bin/python scripts/eval_cranfield.py --nodes 3 --replicas 2 # 3 nodes, N=2, P=64
    .venv/bin/python scripts/eval_cranfield.py --nodes 3 --replicas 2 --partitions 16 --json out.json
    .venv/bin/python scripts/eval_cranfield.py --node URL             # a running node
    .venv/bin/python scripts/eval_cranfield.py --no-baseline          # HTTP runs only (no in-process embedding)

Corpus, queries and graded qrels come from ../shared/data/cranfield (BEIR
layout: corpus.jsonl with _id/title/text, queries.jsonl with _id/text,
qrels.tsv "query-id corpus-id score"). The abstracts are read by
meshrag.sources.iter_documents, exactly as `meshrag ingest corpus.jsonl` reads
them (ids "corpus:<_id>", the title leading the text), and ingested through
POST /v1/documents on the first node. Then every judged query (225) runs
through POST /v1/search in each mode, the queries taking turns over the
cluster's nodes (query i through node i mod K): search must give the same
answer whichever node coordinates it.

Relevance: the qrels grades are 1..4, higher meaning more relevant (4 = the
document answers the question completely; the original Cranfield codes 1..4
reversed, as ir_datasets/BEIR publish them). nDCG@10 uses exponential gains
2^grade - 1 by default (as the search issue and ../shared/reference do;
--gains linear uses the grade itself, as trec_eval does), a log2(rank + 1)
discount and the ideal ranking from all of the query's judgements. Every
judged document counts as relevant for recall@k.

Search returns chunks; a document ranks at its best chunk (the first time it
appears in the score-ordered hits) and later chunks of it are dropped, so k=100
chunks can yield fewer than 100 documents.

Baseline (on by default), "one process with one usearch index over the same
chunks": the chunks the cluster stored are read back (GET /v1/documents/{id}),
embedded in this process with the bundled model, and put in ONE usearch index
with the node's default HNSW settings; the same queries run through it and are
scored the same way. Exact cosine search in numpy over the same chunk vectors
gives each query's true top-10 chunks, against which the cluster's dense top-10
(and the one index's) is scored as recall@10 = |top-10 ∩ exact top-10| / 10,
by chunk id ("<doc id>#<version>.<seq>", the same in hits and in GET). usearch
builds its graph with several threads, so the one-index figures move by a few
1e-4 from run to run; exact search does not.

Also reported: hybrid rebuilt here by RRF (k=60) from the HTTP dense and BM25
answers, over chunks (the node's way) and over documents (the reference's way),
which tells a fusion problem from weak inputs; and every answer with coverage
< 1 (its node, missing partitions and timings; --work-dir keeps the node logs
that explain it). With --check the exit status is 1 when any acceptance check
of the search issue fails.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshrag.client import MeshClient  # noqa: E402
from meshrag.config import ClusterConfig  # noqa: E402
from meshrag.localcluster import LocalCluster  # noqa: E402
from meshrag.sources import SourceDocument, iter_documents  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cranfield"
MODES = ("dense", "bm25", "hybrid")
NDCG_AT = 10
RECALL_AT = 10  # recall against exact search: chunk level, top 10
GAINS: dict[str, Callable[[int], float]] = {
    "exponential": lambda grade: 2.0**grade - 1.0,
    "linear": float,
}
# The search issue's acceptance criterion.
MAX_DENSE_DELTA = 0.005
MIN_RECALL_VS_EXACT = 0.99
MIN_NDCG = {"bm25": 0.35, "hybrid": 0.40}


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

    def judged(self) -> list[str]:
        """Query ids with judgements, in file order (the order queries are sent)."""
        return [q for q in self.queries if q in self.qrels]


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


def ndcg_at(ranked: Sequence[str], grades: dict[str, int], k: int = NDCG_AT, gains: str = "exponential") -> float:
    gain = GAINS[gains]
    ideal = dcg(gain(g) for g in sorted(grades.values(), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg(gain(grades.get(doc, 0)) for doc in ranked[:k]) / ideal


def recall_at(ranked: Sequence[str], grades: dict[str, int], k: int) -> float:
    if not grades:
        return 0.0
    return len(set(ranked[:k]) & set(grades)) / len(grades)


def overlap_at(found: Sequence[str], exact: Sequence[str], k: int = RECALL_AT) -> float:
    """|found top-k ∩ exact top-k| / k: recall of an approximate search against the exact one."""
    truth = set(exact[:k])
    return len(set(found[:k]) & truth) / len(truth) if truth else 1.0


def dedupe_by_document(doc_ids: Iterable[str]) -> list[str]:
    """Keep each document at its first (best) position."""
    seen: set[str] = set()
    ranked: list[str] = []
    for doc_id in doc_ids:
        if doc_id not in seen:
            seen.add(doc_id)
            ranked.append(doc_id)
    return ranked


def score_run(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int, gains: str = "exponential") -> dict[str, Any]:
    """Mean nDCG@10 and recall@k over the judged queries in `runs`."""
    judged = [q for q in runs if q in qrels]
    return {
        "ndcg@10": round(statistics.fmean(ndcg_at(runs[q], qrels[q], gains=gains) for q in judged), 4),
        f"recall@{k}": round(statistics.fmean(recall_at(runs[q], qrels[q], k) for q in judged), 4),
        "queries": len(judged),
    }


def mean_overlap(found: dict[str, list[str]], exact: dict[str, list[str]]) -> float:
    return round(statistics.fmean(overlap_at(found[q], exact[q]) for q in exact), 4)


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


@dataclass
class SearchRun:
    """One mode's answers: ranked cranfield doc ids and raw chunk ids per query."""

    docs: dict[str, list[str]] = field(default_factory=dict)
    chunks: dict[str, list[str]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    # queries answered with coverage < 1 -> what the answer said, to find the cause in the node logs
    partial: dict[str, dict[str, Any]] = field(default_factory=dict)


def search_run(clients: Sequence[MeshClient], data: Cranfield, mode: str, k: int, progress: bool,
               timeout_ms: int | None = None) -> SearchRun:
    """Every judged query through /v1/search, query i through node i mod len(clients).

    `timeout_ms` None: the node's own search deadline (search.timeout_ms).
    """
    from tqdm import tqdm

    run = SearchRun()
    for i, query_id in enumerate(tqdm(data.judged(), desc=f"search {mode}", unit="q", disable=not progress, file=sys.stderr)):
        started = time.perf_counter()
        result = clients[i % len(clients)].search(data.queries[query_id], k=k, mode=mode, timeout_ms=timeout_ms)
        run.latencies_ms.append((time.perf_counter() - started) * 1000)
        hits = result["hits"]
        run.docs[query_id] = dedupe_by_document(data.cranfield_id(hit["doc_id"]) for hit in hits)
        run.chunks[query_id] = [hit["chunk_id"] for hit in hits]
        if result.get("coverage", 1.0) < 1.0:
            run.partial[query_id] = {
                "node": clients[i % len(clients)].base_url, "coverage": result["coverage"], "ms": round(run.latencies_ms[-1], 1),
                "missing_partitions": result.get("missing_partitions"), "timings": result.get("timings"),
            }
    return run


@dataclass(frozen=True)
class StoredChunks:
    """The chunks the cluster made, read back so the in-process baseline indexes exactly them."""

    chunk_ids: list[str]
    doc_ids: list[str]  # cranfield ids, one per chunk
    texts: list[str]


def stored_chunks(client: MeshClient, data: Cranfield, concurrency: int = 4) -> StoredChunks:
    with ThreadPoolExecutor(concurrency) as pool:
        stored = list(pool.map(lambda d: client.get_document(d.id), data.documents))
    chunks = [(doc["id"], chunk) for doc in stored for chunk in doc["chunks"]]
    return StoredChunks(
        chunk_ids=[c["chunk_id"] for _, c in chunks],
        doc_ids=[data.cranfield_id(doc_id) for doc_id, _ in chunks],
        texts=[c["text"] for _, c in chunks],
    )


# ---------------------------------------------------------------- in-process baselines


def load_embedder(threads: int) -> Any:
    from meshrag.rag.embedder import Embedder, default_model_path

    embedder = Embedder(default_model_path(), threads=threads)
    embedder.load()
    return embedder


def one_index(vectors: Any) -> Any:
    """One usearch index with the node's default HNSW settings: scripts/bench.py's, the same baseline."""
    from bench import local_index  # scripts/ is on sys.path whenever this file runs or is imported

    return local_index(vectors)


@dataclass(frozen=True)
class Baseline:
    one_index: SearchRun  # one usearch index over the stored chunks
    exact: SearchRun  # exact cosine over the same chunk vectors
    info: dict[str, Any]


def chunk_baseline(chunks: StoredChunks, data: Cranfield, k: int, threads: int) -> Baseline:
    """The same chunks and queries in this process: one HNSW index, and exact search in numpy."""
    import numpy as np

    embedder = load_embedder(threads)
    started = time.perf_counter()
    chunk_vectors = embedder.encode(chunks.texts)
    embed_seconds = time.perf_counter() - started
    judged = data.judged()
    # One query at a time, as the node embeds a query that arrives alone (no padding to a batch).
    query_vectors = np.stack([embedder.encode([data.queries[q]])[0] for q in judged])
    index = one_index(chunk_vectors)
    approximate = index.search(query_vectors, min(k, len(chunk_vectors)))
    scores = query_vectors @ chunk_vectors.T  # rows are unit length: dot product = cosine
    hnsw, exact = SearchRun(), SearchRun()
    for row, query_id in enumerate(judged):
        hnsw_rows = [int(key) for key in approximate.keys[row][: approximate.counts[row]]]
        exact_rows = [int(i) for i in np.argsort(-scores[row], kind="stable")[:k]]
        for run, rows in ((hnsw, hnsw_rows), (exact, exact_rows)):
            run.chunks[query_id] = [chunks.chunk_ids[i] for i in rows]
            run.docs[query_id] = dedupe_by_document(chunks.doc_ids[i] for i in rows)
    info = {"model": embedder.model_name, "chunks": len(chunks.texts), "embed_seconds": round(embed_seconds, 1)}
    return Baseline(hnsw, exact, info)


def exact_cosine_runs(data: Cranfield, k: int, threads: int) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Reference: the same model on each whole document (no chunking), exact cosine in numpy."""
    import numpy as np

    embedder = load_embedder(threads)
    started = time.perf_counter()
    doc_vectors = embedder.encode([d.text for d in data.documents])
    embed_seconds = time.perf_counter() - started
    judged = data.judged()
    query_vectors = embedder.encode([data.queries[q] for q in judged])
    scores = query_vectors @ doc_vectors.T
    doc_ids = [data.cranfield_id(d.id) for d in data.documents]
    runs = {q: [doc_ids[i] for i in np.argsort(-scores[row], kind="stable")[:k]] for row, q in enumerate(judged)}
    return runs, {"model": embedder.model_name, "embed_seconds": round(embed_seconds, 1)}


# ---------------------------------------------------------------- the evaluation


def mode_scores(run: SearchRun, data: Cranfield, k: int, gains: str) -> dict[str, Any]:
    scores = score_run(run.docs, data.qrels, k, gains)
    if run.latencies_ms:
        scores["p50_ms"] = round(statistics.median(run.latencies_ms), 1)
        scores["max_ms"] = round(max(run.latencies_ms), 1)
        scores["partial"] = len(run.partial)
        scores["partial_queries"] = run.partial
    return scores


def rrf(rankings: Sequence[Sequence[str]], rrf_k: int = 60) -> list[str]:
    """Reciprocal rank fusion of id lists (k=60, as the node and ../shared/reference fuse)."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores, key=lambda item: (-scores[item], item))


def fusion_diagnostics(runs: dict[str, SearchRun], data: Cranfield, k: int, gains: str) -> dict[str, Any]:
    """Hybrid rebuilt here from the HTTP dense and BM25 answers, to tell fusion from its inputs.

    "chunks": RRF over the chunk rankings, then documents at their best chunk (the
    node's way: should reproduce its hybrid up to candidate depth); "documents":
    RRF over the document rankings (the reference's way, one entry per document).
    """
    dense, bm25 = runs["dense"], runs["bm25"]
    by_chunks: dict[str, list[str]] = {}
    by_documents: dict[str, list[str]] = {}
    for q in dense.docs:
        fused_chunks = rrf([dense.chunks[q], bm25.chunks[q]])
        # chunk ids are "<doc id>#<version hex>.<seq>" (rag/pipeline.py chunk_id_for)
        by_chunks[q] = dedupe_by_document(data.cranfield_id(c.rsplit("#", 1)[0]) for c in fused_chunks)
        by_documents[q] = rrf([dense.docs[q], bm25.docs[q]])
    return {
        "rrf_of_http_chunks": score_run(by_chunks, data.qrels, k, gains),
        "rrf_of_http_documents": score_run(by_documents, data.qrels, k, gains),
    }


def evaluate(args: argparse.Namespace, data: Cranfield, clients: Sequence[MeshClient]) -> dict[str, Any]:
    """Ingest through clients[0], search round-robin through all, then the in-process baselines."""
    progress = not args.quiet
    report: dict[str, Any] = {
        "nodes": [c.base_url for c in clients], "cluster": cluster_settings(args), "gains": args.gains,
        "documents": len(data.documents), "skipped": data.skipped, "k": args.k, "timeout_ms": args.timeout_ms,
    }
    report["ingest"] = ingest(clients[0], data.documents, args.batch_size, args.concurrency, progress)
    runs = {mode: search_run(clients, data, mode, args.k, progress, args.timeout_ms) for mode in args.modes}
    report["modes"] = {mode: mode_scores(run, data, args.k, args.gains) for mode, run in runs.items()}
    if {"dense", "bm25"} <= set(runs):
        report["fusion"] = fusion_diagnostics(runs, data, args.k, args.gains)
    if args.baseline:
        print("baseline: reading back and embedding the stored chunks in-process ...", file=sys.stderr)
        baseline = chunk_baseline(stored_chunks(clients[0], data), data, args.k, args.threads)
        one = mode_scores(baseline.one_index, data, args.k, args.gains)
        one["recall@10_vs_exact"] = mean_overlap(baseline.one_index.chunks, baseline.exact.chunks)
        report["baseline"] = {
            "one_index": one,
            "exact": mode_scores(baseline.exact, data, args.k, args.gains),
            **baseline.info,
        }
        if "dense" in runs:
            dense = report["modes"]["dense"]
            dense["recall@10_vs_exact"] = mean_overlap(runs["dense"].chunks, baseline.exact.chunks)
            dense["delta_vs_one_index"] = round(dense["ndcg@10"] - report["baseline"]["one_index"]["ndcg@10"], 4)
    if args.whole_documents:
        print("whole documents: embedding them in-process ...", file=sys.stderr)
        whole, info = exact_cosine_runs(data, args.k, args.threads)
        report["whole_documents"] = {**score_run(whole, data.qrels, args.k, args.gains), **info}
    report["checks"] = acceptance_checks(report)
    return report


def acceptance_checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The search issue's criterion, for the figures this report has: name -> value, target, ok."""
    checks: dict[str, dict[str, Any]] = {}
    modes = report["modes"]
    dense = modes.get("dense", {})
    if "delta_vs_one_index" in dense:
        delta = dense["delta_vs_one_index"]
        checks["dense nDCG@10 within 0.005 of one index"] = {"value": delta, "target": f"|Δ| <= {MAX_DENSE_DELTA}", "ok": abs(delta) <= MAX_DENSE_DELTA}
        recall = dense["recall@10_vs_exact"]
        checks["dense recall@10 vs exact"] = {"value": recall, "target": f">= {MIN_RECALL_VS_EXACT}", "ok": recall >= MIN_RECALL_VS_EXACT}
    for mode, target in MIN_NDCG.items():
        if mode in modes and report["gains"] == "exponential":  # the targets are for exponential gains
            value = modes[mode]["ndcg@10"]
            checks[f"{mode} nDCG@10"] = {"value": value, "target": f">= {target}", "ok": value >= target}
    partial = sum(s.get("partial", 0) for s in modes.values())
    checks["every search saw every partition"] = {"value": partial, "target": "0 partial answers", "ok": partial == 0}
    return checks


# ---------------------------------------------------------------- own cluster


def cluster_settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.node:
        return {"external": args.node}
    return {"nodes": args.nodes, "partitions": args.partitions, "replicas": args.replicas}


@contextmanager
def own_cluster(work_dir: Path, args: argparse.Namespace) -> Iterator[LocalCluster]:
    """K real nodes (storage + coordinator: evaluation needs no LLM); stopped on the way out.

    When anything fails, each node's log tail goes to stderr: a failing search
    is usually explained there.
    """
    env = {"MESHRAG_EMBEDDER_THREADS": str(args.threads)}
    cluster = LocalCluster(work_dir / "cluster", partitions=args.partitions, replicas=args.replicas, env=env)
    try:
        print(f"starting {args.nodes} node(s), P={args.partitions}, N={args.replicas} under {cluster.root} ...", file=sys.stderr)
        yield cluster.start(args.nodes)
    except BaseException:
        for node in cluster.nodes:
            print(f"--- {node.name} ({node.url}), log {node.log_path}:\n{node.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        cluster.stop()


def run(args: argparse.Namespace, data: Cranfield, work_dir: Path) -> dict[str, Any]:
    """The whole evaluation, on the running node of --node or on a cluster of its own under work_dir."""
    if args.node:
        return evaluate(args, data, [MeshClient(args.node, timeout=300)])
    with own_cluster(work_dir, args) as cluster:
        report = evaluate(args, data, [cluster.client(node, timeout=300) for node in cluster.nodes])
        report["logs"] = [str(node.log_path) for node in cluster.nodes]  # kept where work_dir is kept
        return report


# ---------------------------------------------------------------- report


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def render(report: dict[str, Any]) -> str:
    k = report["k"]
    settings = report["cluster"]
    where = settings.get("external") or f"{settings['nodes']} node(s), P={settings['partitions']}, N={settings['replicas']}"
    gains = "exponential gains (2^rel - 1)" if report["gains"] == "exponential" else "linear gains (rel)"
    queries = next(iter(report["modes"].values()))["queries"] if report["modes"] else 0
    lines = [
        f"Cranfield, {report['documents']} documents, {queries} judged queries; nDCG@10 with {gains}",
        f"cluster: {where}; queries round-robin over {len(report['nodes'])} node(s); "
        f"search deadline {str(report['timeout_ms']) + ' ms' if report.get('timeout_ms') else 'the node default'}",
        "",
    ]

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value) if value is not None else "-"

    rows = [(mode, fmt(s["ndcg@10"]), fmt(s[f"recall@{k}"]), fmt(s.get("recall@10_vs_exact")), s["queries"], s["p50_ms"], s["partial"])
            for mode, s in report["modes"].items()]
    if "baseline" in report:
        b = report["baseline"]
        rows.append(("dense, one usearch index in-process (same chunks)", fmt(b["one_index"]["ndcg@10"]), fmt(b["one_index"][f"recall@{k}"]),
                     fmt(b["one_index"]["recall@10_vs_exact"]), b["one_index"]["queries"], "-", "-"))
        rows.append(("dense, exact cosine in-process (same chunks)", fmt(b["exact"]["ndcg@10"]), fmt(b["exact"][f"recall@{k}"]), "1.0000", b["exact"]["queries"], "-", "-"))
    for name, label in (("rrf_of_http_chunks", "hybrid rebuilt here: RRF of HTTP dense+bm25 chunks"), ("rrf_of_http_documents", "hybrid rebuilt here: RRF of HTTP dense+bm25 documents")):
        if name in report.get("fusion", {}):
            s = report["fusion"][name]
            rows.append((label, fmt(s["ndcg@10"]), fmt(s[f"recall@{k}"]), "-", s["queries"], "-", "-"))
    if "whole_documents" in report:
        s = report["whole_documents"]
        rows.append(("dense, exact cosine in-process (whole documents)", fmt(s["ndcg@10"]), fmt(s[f"recall@{k}"]), "-", s["queries"], "-", "-"))
    lines += table(("run", "nDCG@10", f"recall@{k}", "recall@10 vs exact", "queries", "p50 ms", "partial"), rows)
    if report["checks"]:
        lines += ["", "acceptance (search issue):"]
        lines += [f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {c['value']} (target {c['target']})" for name, c in report["checks"].items()]
    ing = report["ingest"]
    lines.append(f"\ningested {ing['documents']} documents in {ing['seconds']} s ({ing['docs_per_s']} docs/s; {ing['by_status']}) via {report['nodes'][0]}")
    if "baseline" in report:
        lines.append(f"baseline: {report['baseline']['chunks']} chunks embedded in-process in {report['baseline']['embed_seconds']} s ({report['baseline']['model']})")
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])} corpus records: {'; '.join(report['skipped'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = ClusterConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", help="URL of a running node (default: start a cluster of its own in a temp dir)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the own cluster (default 1)")
    parser.add_argument("--partitions", type=int, default=defaults.partitions, help=f"partitions of the own cluster (default {defaults.partitions}, the node's)")
    parser.add_argument("--replicas", type=int, help=f"replicas N of the own cluster (default min({defaults.replicas}, nodes))")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"cranfield directory (default {DEFAULT_DATA})")
    parser.add_argument("--docs", type=int, help="ingest only the first DOCS documents (a quick smoke run; figures not comparable)")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES), help="comma-separated: dense,bm25,hybrid")
    parser.add_argument("--gains", choices=sorted(GAINS), default="exponential", help="nDCG gains: 2^rel-1 (default) or rel")
    parser.add_argument("--k", type=int, default=100, help="hits per search (default 100)")
    parser.add_argument("--timeout-ms", type=int, help="each search's deadline (default: the node's search.timeout_ms); "
                        "a loaded host can push a search past it, and a partial answer scores lower")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads for the own nodes and the baseline")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="read back the stored chunks and search them in-process: one usearch index and exact (default on)")
    parser.add_argument("--whole-documents", action="store_true", help="also exact cosine over whole documents in-process (another embedding pass)")
    parser.add_argument("--min-dense-ndcg", type=float, default=0.36, help="exit 1 if dense nDCG@10 is below this (default 0.36)")
    parser.add_argument("--check", action="store_true", help="exit 1 if any acceptance check fails")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE ('-': print it instead of the table)")
    parser.add_argument("--work-dir", type=Path, help="keep the own cluster's data and node logs here (default: a temp dir, removed)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    if args.nodes < 1 or args.partitions < 1:
        parser.error("--nodes and --partitions must be >= 1")
    args.replicas = args.replicas or min(defaults.replicas, args.nodes)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = load_cranfield(args.data, args.docs)
    if args.work_dir:
        report = run(args, data, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="meshrag-eval-") as work:
            report = run(args, data, Path(work))
    if args.json is not None and str(args.json) != "-":
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if str(args.json) == "-" else render(report))
    dense = report["modes"].get("dense")
    if dense is not None and dense["ndcg@10"] < args.min_dense_ndcg:
        print(f"FAIL: dense nDCG@10 {dense['ndcg@10']:.4f} < {args.min_dense_ndcg}", file=sys.stderr)
        return 1
    if args.check and not all(c["ok"] for c in report["checks"].values()):
        print("FAIL: acceptance checks: " + ", ".join(n for n, c in report["checks"].items() if not c["ok"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
