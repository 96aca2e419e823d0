"""Shared helpers for the storage tests: deterministic documents and vectors,
real partitions in tmp_path, and a brute-force reference for dense search."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from meshrag.store.analysis import Analyzer
from meshrag.store.engine import StorageEngine
from meshrag.store.filters import matches
from meshrag.store.partition import IndexSettings, Partition
from meshrag.store.types import Candidate, ChunkWrite, DocumentWrite

DIM = 16


def unit_vector(seed: int | str, dim: int = DIM) -> np.ndarray:
    """A deterministic random unit vector (seeded, so another process can rebuild it)."""
    if isinstance(seed, str):
        seed = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "big")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def make_doc(
    doc_id: str,
    version: int = 1,
    texts: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    dim: int = DIM,
    vectors: list[np.ndarray] | None = None,
) -> DocumentWrite:
    """A document whose chunk ids and content hash follow from its id, version and texts."""
    texts = texts if texts is not None else [f"{doc_id} first part", f"{doc_id} second part"]
    metadata = metadata or {}
    chunks = tuple(
        ChunkWrite(
            chunk_id=f"{doc_id}#{version}#{seq}",
            seq=seq,
            text=text,
            start=seq * 100,
            end=seq * 100 + len(text),
            vector=vectors[seq] if vectors is not None else unit_vector(f"{doc_id}#{version}#{seq}", dim),
        )
        for seq, text in enumerate(texts)
    )
    content_hash = hashlib.sha256(repr((texts, sorted(metadata.items()))).encode()).hexdigest()
    return DocumentWrite(doc_id, version, content_hash, " ".join(texts), metadata, chunks)


def corpus(count: int) -> list[DocumentWrite]:
    """``count`` two-chunk documents with metadata to filter on."""
    return [make_doc(f"d{i}", metadata={"n": i, "group": i % 10, "even": i % 2 == 0}) for i in range(count)]


def brute_force(docs: list[DocumentWrite], query: np.ndarray, k: int, flt: Any = None) -> list[tuple[str, float]]:
    """The exact top-k (chunk id, cosine) over the documents, for comparing searches against."""
    scored = [
        (chunk.chunk_id, float(np.dot(chunk.vector, query / np.linalg.norm(query))))
        for doc in docs
        if flt is None or matches(flt, doc.metadata)
        for chunk in doc.chunks
    ]
    return sorted(scored, key=lambda item: -item[1])[:k]


def open_partition(root: Path, pid: int = 3, dim: int = DIM, **settings: Any) -> Partition:
    partition = Partition(root, pid, dim, IndexSettings(**settings))
    partition.open()
    return partition


@pytest.fixture
def partition(tmp_path: Path) -> Iterator[Partition]:
    part = open_partition(tmp_path)
    yield part
    part.close()


def sql(part: Partition, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the partition's SQLite file through an independent connection."""
    conn = sqlite3.connect(part.db_path)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


ANALYZER = Analyzer()


def bm25(store: Partition | StorageEngine, query: str, k: int, flt: Any = None) -> list[Candidate]:
    """BM25 search of query text, analyzed as a coordinator analyzes it."""
    return store.search_bm25(ANALYZER.query_terms(query), k, flt)
