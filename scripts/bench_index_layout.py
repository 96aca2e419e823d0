#!/usr/bin/env python3
"""Benchmark the node's vector index layout: one usearch index per node (not a test).

    .venv/bin/python scripts/bench_index_layout.py                   # 10,000 and 100,000 documents
    .venv/bin/python scripts/bench_index_layout.py --docs 10000 --json

Unit float32 vectors (384-d by default), one chunk per document, spread over
64 partitions by ``hash mod 64`` inside a StorageEngine, all in this process.
For each count:

(a) ingest: documents/s through ``engine.upsert`` in batches of 32 (SQLite,
    BM25 terms, the node index), then one ``save_indexes`` and a reopen (load);
(b) k=10 ``engine.search_dense`` (phase one) p50/p99 over the queries, on all
    partitions and on half of them, and phase two (``hits``) of the results;
(c) the same vectors in one plain usearch Index in this process, same
    settings: the floor any layout can reach;
(d) recall@10 of (b) and (c) against exact numpy search;
(e) the old layout, rebuilt here from plain usearch indexes: one per partition,
    searched one after another (as the old engine did, usearch's default
    threads) and merged. Index time only: the old engine also read each
    partition's hits from SQLite, so its end-to-end figures were higher.

Uniform random vectors (``--data random``, the default) have no neighbourhood
structure: they are HNSW's worst case, and its recall at a fixed
expansion_search falls as the index grows (0.9 at 10,000, 0.3 at 100,000),
while small per-partition indexes were searched nearly exhaustively. ``--data
clustered`` puts documents around topics, as real embeddings are.

Also an empty HTTP round trip on loopback (aiohttp server and client in this
process), for the target "engine p50 <= 3 x (plain index + empty round trip)".
Timings share the machine with whatever else runs on it; the p50 is the figure
to compare, the p99 shows the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# Appended, not prepended: PYTHONPATH=<another checkout> benchmarks that code's engine instead.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from usearch.index import Index, MetricKind, ScalarKind  # noqa: E402

from meshrag.ring import partition_for  # noqa: E402
from meshrag.store.engine import StorageEngine  # noqa: E402
from meshrag.store.partition import IndexSettings  # noqa: E402
from meshrag.store.types import ChunkWrite, DocumentWrite  # noqa: E402

PARTITIONS = 64
BATCH = 32


# ------------------------------------------------------------------ data
def unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered_rows(count: int, dim: int, seed: int, topics: np.ndarray) -> np.ndarray:
    """Unit vectors around random topics (cosine ~0.7 to their topic, ~0.5 between two of
    one topic): a neighbourhood structure like real embeddings have, and random ones lack."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((count, dim)).astype(np.float32) / np.sqrt(dim)
    rows = topics[rng.integers(0, len(topics), count)] + noise
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def dataset(kind: str, count: int, queries: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, queries); ``clustered`` has one topic per 100 documents, queries near topics too."""
    if kind == "random":
        return unit_rows(count, dim, seed=count), unit_rows(queries, dim, seed=1)
    topics = unit_rows(max(count // 100, 10), dim, seed=count + 1)
    return clustered_rows(count, dim, count, topics), clustered_rows(queries, dim, 1, topics)


def document(i: int, vector: np.ndarray) -> DocumentWrite:
    doc_id = f"doc-{i}"
    text = f"document {i}"
    chunk = ChunkWrite(f"{doc_id}#1#0", 0, text, 0, len(text), vector)
    return DocumentWrite(doc_id, 1, hashlib.sha256(text.encode()).hexdigest(), text, {"i": i}, (chunk,))


def exact_top(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray, k: int) -> list[set[int]]:
    """Row numbers of the exact top-k among the masked rows, per query."""
    tops = []
    for query in queries:
        scores = np.where(mask, vectors @ query, -np.inf)
        top = np.argpartition(-scores, k)[:k]
        tops.append({int(i) for i in top})
    return tops


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def interleaved(searches: dict[str, Callable[[np.ndarray], Any]], queries: np.ndarray) -> dict[str, tuple[list[Any], list[float]]]:
    """Every search on every query, query by query, so that all of them see the same load."""
    timings: dict[str, tuple[list[Any], list[float]]] = {name: ([], []) for name in searches}
    for query in queries:
        for name, search in searches.items():
            started = time.perf_counter()
            found = search(query)
            timings[name][1].append(time.perf_counter() - started)
            timings[name][0].append(found)
    return timings


def recall(found: Sequence[set[int]], exact: Sequence[set[int]]) -> float:
    return float(np.mean([len(f & e) / len(e) for f, e in zip(found, exact)]))


def row_of(chunk_id: str) -> int:
    return int(chunk_id.split("#", 1)[0].removeprefix("doc-"))


# ------------------------------------------------------------------ layouts
def new_plain(dim: int, settings: IndexSettings) -> Index:
    return Index(
        ndim=dim, metric=MetricKind.Cos, dtype=ScalarKind.F32, connectivity=settings.connectivity,
        expansion_add=settings.expansion_add, expansion_search=settings.expansion_search,
    )


def ingested_engine(root: Path, vectors: np.ndarray, settings: IndexSettings) -> tuple[StorageEngine, dict[str, Any]]:
    """(a): the engine with every document, saved and reopened, and what that took."""
    engine = StorageEngine(root, PARTITIONS, vectors.shape[1], settings)
    engine.open()
    started = time.perf_counter()
    for start in range(0, len(vectors), BATCH):
        engine.upsert([document(i, vectors[i]) for i in range(start, min(start + BATCH, len(vectors)))])
        if start % 10_000 < BATCH:
            print(f"  ingested {start + BATCH} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    engine.save_indexes()
    save_s = time.perf_counter() - started
    engine.close()
    started = time.perf_counter()
    engine.open()
    reopen_s = time.perf_counter() - started
    index_files = [root / "index.usearch"] + sorted(root.glob("p*/index.usearch"))
    return engine, {
        "ingest_docs_per_s": len(vectors) / ingest_s,
        "ingest_s": ingest_s,
        "save_s": save_s,
        "reopen_s": reopen_s,
        "recovery": sorted({engine.partition(pid).recovery for pid in engine.local_partitions()}),
        "index_bytes": sum(path.stat().st_size for path in index_files if path.exists()),
    }


def plain_index(vectors: np.ndarray, settings: IndexSettings) -> tuple[Index, float]:
    """(c): one plain usearch index of every vector, built in one call (all cores)."""
    index = new_plain(vectors.shape[1], settings)
    started = time.perf_counter()
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=os.cpu_count() or 1)
    return index, time.perf_counter() - started


def old_layout(vectors: np.ndarray, placed: np.ndarray, settings: IndexSettings) -> Callable[[np.ndarray, Sequence[int]], set[int]]:
    """(e): one plain usearch index per partition, searched one after another and merged."""
    indexes = {}
    for pid in range(PARTITIONS):
        rows = np.flatnonzero(placed == pid)
        index = indexes[pid] = new_plain(vectors.shape[1], settings)
        index.add(rows.astype(np.uint64), vectors[rows], threads=os.cpu_count() or 1)

    def merged(query: np.ndarray, pids: Sequence[int]) -> set[int]:
        found = []
        for pid in pids:  # usearch's default threads, as the old engine searched
            matches = indexes[pid].search(query, 10)
            found.extend(zip((1.0 - matches.distances).tolist(), matches.keys.tolist()))
        return {int(key) for _, key in heapq.nlargest(10, found)}

    return merged


def empty_round_trip(count: int = 300) -> dict[str, float]:
    """An empty POST over loopback HTTP (aiohttp both ends, one keep-alive connection)."""
    import aiohttp
    from aiohttp import web

    async def run() -> list[float]:
        async def empty(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=b"")

        app = web.Application()
        app.router.add_post("/", empty)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        seconds = []
        async with aiohttp.ClientSession() as session:
            for _ in range(count + 20):
                started = time.perf_counter()
                async with session.post(f"http://127.0.0.1:{port}/", data=b"") as response:
                    await response.read()
                seconds.append(time.perf_counter() - started)
        await runner.cleanup()
        return seconds[20:]

    ms = np.array(asyncio.run(run())) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


# ------------------------------------------------------------------ main
def run(count: int, args: argparse.Namespace, settings: IndexSettings) -> dict[str, Any]:
    vectors, queries = dataset(args.data, count, args.queries, args.dim)
    placed = np.array([partition_for(f"doc-{i}", PARTITIONS) for i in range(count)])
    half = list(range(0, PARTITIONS, 2))
    exact = {
        "all": exact_top(vectors, queries, np.ones(count, bool), 10),
        "half": exact_top(vectors, queries, np.isin(placed, half), 10),
    }
    result: dict[str, Any] = {"docs": count, "data": args.data}
    with tempfile.TemporaryDirectory(dir=args.tmp) as root:
        print(f"{count} docs: engine", file=sys.stderr)
        engine, result["engine"] = ingested_engine(Path(root), vectors, settings)
        try:
            searches: dict[str, Callable[[np.ndarray], Any]] = {
                "engine_all": lambda q: engine.search_dense(q, 10),
                "engine_half": lambda q: engine.search_dense(q, 10, partitions=half),
            }
            if not args.engine_only:
                print(f"{count} docs: plain index, old layout", file=sys.stderr)
                plain, result["plain_build_s"] = plain_index(vectors, settings)
                merged = old_layout(vectors, placed, settings)
                searches |= {
                    "plain": lambda q: plain.search(q, 10, threads=1),
                    "old_all": lambda q: merged(q, range(PARTITIONS)),
                    "old_half": lambda q: merged(q, half),
                }
            for query in queries[:20]:  # warm the page cache and the reader pools
                for search in searches.values():
                    search(query)
            timings = interleaved(searches, queries)
            rows = {
                "engine_all": lambda r: {row_of(c.chunk_id) for c in r}, "engine_half": lambda r: {row_of(c.chunk_id) for c in r},
                "plain": lambda r: set(r.keys.tolist()), "old_all": lambda r: r, "old_half": lambda r: r,
            }
            for name, (found, seconds) in timings.items():
                wanted = exact["half"] if name.endswith("half") else exact["all"]
                result[name] = {**percentiles(seconds), "recall": recall([rows[name](r) for r in found], wanted)}
            if hasattr(engine, "hits"):  # phase two; older code had none
                phase_two = interleaved({"hits": engine.hits}, timings["engine_all"][0])  # type: ignore[dict-item]
                result["hits"] = percentiles(phase_two["hits"][1])
        finally:
            engine.close()
    return result


def report(results: list[dict[str, Any]], http: dict[str, float] | None) -> None:
    names = [
        ("engine_all", "node index, all partitions"), ("engine_half", "node index, half"), ("hits", "  phase two (hits of 10)"),
        ("plain", "one plain usearch index"), ("old_all", "old: 64 indexes, all (index only)"),
        ("old_half", "old: 64 indexes, half (index only)"),
    ]
    print(f"\n{'docs':>7} {'layout':<34} {'p50 ms':>7} {'p99 ms':>7} {'recall':>7}")
    for r in results:
        for key, name in names:
            if key in r:
                row = r[key]
                print(f"{r['docs']:>7} {name:<34} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row.get('recall', float('nan')):>7.3f}")
        e = r["engine"]
        print(f"{r['docs']:>7} ingest {e['ingest_docs_per_s']:.0f} docs/s ({e['ingest_s']:.0f} s), save {e['save_s']:.2f} s, "
              f"reopen {e['reopen_s']:.2f} s ({'/'.join(e['recovery'])}), index {e['index_bytes'] / 1e6:.0f} MB")
    if http:
        print(f"empty HTTP round trip p50 {http['p50_ms']:.2f} ms, p99 {http['p99_ms']:.2f} ms")
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = large["engine_all"]["p50_ms"] / small["engine_all"]["p50_ms"]
        print(f"p50 at {large['docs']} / p50 at {small['docs']}: {ratio:.2f} (target <= 2)"
              + (f"; plain index: {large['plain']['p50_ms'] / small['plain']['p50_ms']:.2f}" if "plain" in large else ""))
    for r in results:
        if "plain" in r and http:
            bound = 3 * (r["plain"]["p50_ms"] + http["p50_ms"])
            print(f"{r['docs']}: engine p50 {r['engine_all']['p50_ms']:.2f} ms vs 3 x (plain + round trip) = {bound:.2f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000], help="document counts to run")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--data", choices=["random", "clustered"], default="random",
                        help="uniform random unit vectors (HNSW's worst case) or clustered ones (closer to embeddings)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--expansion-search", type=int, default=None, help="override IndexSettings' default")
    parser.add_argument("--engine-only", action="store_true", help="skip the plain index and the old layout")
    parser.add_argument("--tmp", default=None, help="directory for the engine's files (default: the system's)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    settings = IndexSettings() if args.expansion_search is None else IndexSettings(expansion_search=args.expansion_search)
    results = [run(count, args, settings) for count in args.docs]
    http = None if args.engine_only else empty_round_trip()
    if args.json:
        print(json.dumps({"settings": {"connectivity": settings.connectivity, "expansion_add": settings.expansion_add,
                                       "expansion_search": settings.expansion_search}, "dim": args.dim,
                          "partitions": PARTITIONS, "cpus": os.cpu_count(), "runs": results, "http": http}, indent=2))
    else:
        report(results, http)
    return 0


if __name__ == "__main__":
    sys.exit(main())
