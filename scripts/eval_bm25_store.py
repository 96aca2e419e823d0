#!/usr/bin/env python3
"""BM25 quality of the store on Cranfield: nDCG@10 straight from StorageEngine, no node.

    .venv/bin/python scripts/eval_bm25_store.py                     # P=1 and P=64
    .venv/bin/python scripts/eval_bm25_store.py --partitions 1,16,64 --no-title

Documents are loaded as ``meshrag ingest corpus.jsonl`` loads them (sources.py:
ids "corpus:<_id>"), with the title put before the text ("title. text") as the
reference figures in shared/reference do; sources.py itself keeps a jsonl
record's title as metadata only, which ``--no-title`` reproduces. Each is
chunked with the node's default chunker (200/40 tokens of the bundled model's
tokenizer; only the tokenizer is loaded, no embedder). Vectors are random:
only BM25 is measured. Every judged query runs through
``engine.search_bm25(analyzer.query_terms(q), 100)`` with the engine's own
statistics over all partitions, which is what makes P=1 and P=64 score alike.

nDCG@10 uses exponential gains (2^grade - 1, the reference figures' definition;
scripts/eval_cranfield.py reports linear gains), the ideal ranking from all of
a query's judgements; a document ranks at its best chunk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from eval_cranfield import DEFAULT_DATA, Cranfield, dedupe_by_document, load_cranfield  # noqa: E402

from meshrag.rag.chunking import Chunker, ChunkingSettings  # noqa: E402
from meshrag.sources import SourceDocument  # noqa: E402
from meshrag.store.analysis import Analyzer  # noqa: E402
from meshrag.store.engine import StorageEngine  # noqa: E402
from meshrag.store.types import ChunkWrite, DocumentWrite  # noqa: E402

NDCG_AT = 10
K = 100
DIM = 8
TARGET = 0.35


def default_chunker() -> Chunker:
    """The node's default chunker over the bundled model's tokenizer, without loading the model."""
    from tokenizers import Tokenizer

    from meshrag.rag.embedder import default_model_path

    model = Path(default_model_path())
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    # The model's window as Embedder.max_seq_tokens gives it: max_seq_length less [CLS] and [SEP].
    window = json.loads((model / "sentence_bert_config.json").read_text())["max_seq_length"] - 2
    return Chunker(ChunkingSettings(), lambda text: list(tokenizer.encode(text, add_special_tokens=False).offsets), window=window)


def document_writes(documents: Sequence[SourceDocument], chunker: Chunker) -> list[DocumentWrite]:
    rng = np.random.default_rng(0)
    writes = []
    for doc in documents:
        chunks = tuple(
            ChunkWrite(f"{doc.id}#1.{c.seq}", c.seq, c.text, c.start, c.end, rng.standard_normal(DIM).astype(np.float32))
            for c in chunker.chunk(doc.text)
        )
        writes.append(DocumentWrite(doc.id, 1, hashlib.sha256(doc.text.encode()).hexdigest(), doc.text, doc.metadata, chunks))
    return writes


def with_titles(data: Cranfield) -> Cranfield:
    titled = [replace(d, text=f"{d.metadata.get('title', '')}. {d.text}".strip()) for d in data.documents]
    return replace(data, documents=titled)


def exponential_ndcg(ranked: Sequence[str], grades: dict[str, int], k: int = NDCG_AT) -> float:
    dcg = sum((2 ** grades.get(doc, 0) - 1) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sum((2**grade - 1) / math.log2(rank + 2) for rank, grade in enumerate(sorted(grades.values(), reverse=True)[:k]))
    return dcg / ideal if ideal else 0.0


def evaluate(data: Cranfield, writes: list[DocumentWrite], partitions: int, analyzer: Analyzer, work: Path) -> dict[str, float]:
    engine = StorageEngine(work / f"p{partitions}", partitions, DIM, analyzer=analyzer)
    engine.open()
    try:
        started = time.perf_counter()
        for start in range(0, len(writes), 256):
            engine.upsert(writes[start : start + 256])
        ingest_s = time.perf_counter() - started
        judged = [q for q in data.queries if q in data.qrels]
        scores, latencies = [], []
        for query_id in judged:
            started = time.perf_counter()
            candidates = engine.search_bm25(analyzer.query_terms(data.queries[query_id]), K)
            latencies.append(1000 * (time.perf_counter() - started))
            ranked = dedupe_by_document(data.cranfield_id(c.doc_id) for c in candidates)
            scores.append(exponential_ndcg(ranked, data.qrels[query_id]))
        chunks = engine.stats()["chunks"]
    finally:
        engine.close()
    return {
        "ndcg@10": statistics.fmean(scores), "queries": len(judged), "chunks": chunks,
        "ingest_s": ingest_s, "p50_ms": statistics.median(latencies), "max_ms": max(latencies),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"cranfield directory (default {DEFAULT_DATA})")
    parser.add_argument("--partitions", type=lambda s: [int(p) for p in s.split(",")], default=[1, 64], help="comma-separated (default 1,64)")
    parser.add_argument("--no-title", action="store_true", help="index the text alone, as sources.py passes it on today")
    parser.add_argument("--stemmer", default="english", help="Snowball language or none (default english)")
    parser.add_argument("--stopwords", default="english", help="english or none (default english)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = load_cranfield(args.data)
    data = data if args.no_title else with_titles(data)
    analyzer = Analyzer(language=args.stemmer, stopwords=args.stopwords)
    writes = document_writes(data.documents, default_chunker())
    results = {}
    with tempfile.TemporaryDirectory(prefix="meshrag-bm25-") as work:
        for partitions in args.partitions:
            results[partitions] = result = evaluate(data, writes, partitions, analyzer, Path(work))
            print(
                f"P={partitions:<4} nDCG@10 {result['ndcg@10']:.4f} over {result['queries']} queries, "
                f"{result['chunks']} chunks; ingest {result['ingest_s']:.1f} s, "
                f"search p50 {result['p50_ms']:.1f} ms (max {result['max_ms']:.1f})"
            )
    figures = {round(r["ndcg@10"], 12) for r in results.values()}
    print(f"analyzer {analyzer.fingerprint()}, titles {'not in' if args.no_title else 'in'} the text")
    print("identical across partition counts" if len(figures) == 1 else f"DIFFERENT across partition counts: {sorted(figures)}")
    best = min(r["ndcg@10"] for r in results.values())
    print(f"{'meets' if best >= TARGET else 'BELOW'} the target nDCG@10 >= {TARGET}")
    return 0 if len(figures) == 1 and best >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
