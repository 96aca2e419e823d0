#!/usr/bin/env python3
"""Recall and latency of one usearch HNSW index against its search beam (expansion_search).

    .venv/bin/python scripts/bench_beam.py --data real --sizes 10000,100000
    .venv/bin/python scripts/bench_beam.py --data random --beams 64,192,384

For each size: one index with the node's graph settings (IndexSettings), the
same queries searched at each beam, top-k recall against exact numpy search,
p50/p99 per query (threads=1, as the node searches). What the default beam
(IndexSettings.expansion_search, expansion_per_result) was chosen from.

Data:
  real       MiniLM (the bundled model) embeddings of English prose lines taken
             from the comments and docstrings of the installed Python packages:
             real text, no download. Embedding 100,200 lines takes ~5 min on 2
             cores; --cache keeps the vectors (.npy) for the next run.
  clustered  unit vectors around random topics (scripts/bench_index_layout.py).
  random     uniform random unit vectors: HNSW's worst case (no neighbourhoods).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_index_layout import dataset  # noqa: E402

from meshrag.store.vector_index import IndexSettings, new_usearch_index  # noqa: E402

QUERIES = 200
PROSE = re.compile(r"^[A-Za-z][A-Za-z ,.'()-]+$")


def prose_lines(count: int) -> list[str]:
    """``count`` distinct English lines (7+ words, letters and punctuation only) from the
    comments and docstrings of the packages installed beside meshrag, in a fixed order."""
    site = Path(np.__file__).resolve().parent.parent
    lines: set[str] = set()
    for path in sorted(site.rglob("*.py")):
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for raw in text.splitlines():
            line = raw.strip().lstrip("#").strip()
            if len(line) >= 40 and len(line.split()) >= 7 and PROSE.match(line):
                lines.add(line)
    ordered = sorted(lines)
    random.Random(7).shuffle(ordered)
    if len(ordered) < count:
        raise SystemExit(f"only {len(ordered)} prose lines in {site}; ask for fewer vectors")
    return ordered[:count]


def real_vectors(count: int, cache: Path | None) -> np.ndarray:
    if cache is not None and cache.exists():
        vectors = np.load(cache)
        if len(vectors) >= count:
            return vectors[:count]
    from tqdm import tqdm

    from meshrag.rag.embedder import Embedder, default_model_path

    lines = prose_lines(count)
    embedder = Embedder(default_model_path(), threads=2)
    embedder.load()
    rows = [embedder.encode(lines[i : i + 256]) for i in tqdm(range(0, count, 256), desc="embed", unit="batch", file=sys.stderr)]
    vectors = np.concatenate(rows).astype(np.float32)
    if cache is not None:
        np.save(cache, vectors)
    return vectors


def data(kind: str, size: int, largest: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, queries); for real data the queries are lines not in the index."""
    if kind != "real":
        return dataset(kind, size, QUERIES, 384)
    vectors = real_vectors(largest + QUERIES, cache)
    return vectors[:size], vectors[largest : largest + QUERIES]


def sweep(vectors: np.ndarray, queries: np.ndarray, beams: Sequence[int], ks: Sequence[int]) -> list[dict[str, Any]]:
    settings = IndexSettings()
    index = new_usearch_index(vectors.shape[1], settings)
    started = time.perf_counter()
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=2)
    build_s = time.perf_counter() - started
    rows = []
    for k in ks:
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
        for beam in beams:
            if beam < k:
                continue
            index.expansion_search = beam
            for query in queries[:10]:  # warm-up
                index.search(query, k, threads=1)
            ms, recalls = [], []
            for query, truth in zip(queries, exact):
                started = time.perf_counter()
                found = index.search(query, k, threads=1)
                ms.append((time.perf_counter() - started) * 1000)
                recalls.append(len(set(found.keys.tolist()) & set(truth.tolist())) / k)
            rows.append({"size": len(vectors), "k": k, "beam": beam, "recall": round(float(np.mean(recalls)), 4),
                         "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
                         "build_s": round(build_s, 1)})
            print(f"{len(vectors):>7}  k={k:<3} beam={beam:<4} recall@k {rows[-1]['recall']:.4f}  "
                  f"p50 {rows[-1]['p50_ms']:.3f} ms  p99 {rows[-1]['p99_ms']:.3f} ms", flush=True)
    return rows


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["real", "clustered", "random"], default="real")
    parser.add_argument("--sizes", type=int_list, default=[10000, 100000])
    parser.add_argument("--beams", type=int_list, default=[64, 128, 192, 256, 384])
    parser.add_argument("--k", type=int_list, default=[10, 100], help="result counts (default 10,100)")
    parser.add_argument("--cache", type=Path, default=None, help="real data: keep the embeddings in this .npy")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for size in sorted(args.sizes):
        vectors, queries = data(args.data, size, max(args.sizes), args.cache)
        rows += sweep(vectors, queries, args.beams, args.k)
    if args.json is not None:
        args.json.write_text(json.dumps({"data": args.data, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
