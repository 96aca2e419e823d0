"""What the vector index shares with its callers: settings, its source of truth,
query normalisation, exact scoring and durable file writes.

The index itself is node_index.py: one usearch HNSW index per node over the
chunk vectors of every partition it holds. SQLite is the truth; each
partition's SQLite is reached through ``VectorSource`` (schema.ChunkVectors),
so the index knows nothing of the partition's schema.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
from usearch.index import Index, MetricKind, ScalarKind

from meshrag.errors import ValidationError

Scored = tuple[int, float]  # (chunk key, cosine similarity)


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """HNSW and search tuning (one index per node holds every vector of the node).

    The search beam (usearch's ``expansion_search``) is ``beam(k, count)``: at least
    ``expansion_search``, ``expansion_per_result`` times the results wanted, as
    Weaviate's dynamic ef, and the candidate pool asked of the index. Recall@10
    against exact search, 384-d MiniLM embeddings of 100,200 real English lines
    (scripts/bench_beam.py --data real): at 100,000 vectors 128 gives 0.989, 192 0.9955 (0.94 ms per
    query), 384 0.9995 (1.84 ms); at 10,000, 192 gives 0.999. Top-100 at
    100,000: 256 gives 0.989, 384 0.995, hence 4 per result. So 192 keeps
    recall above 0.99 on real embeddings at half the cost of 384. Uniform
    random vectors have no neighbourhood structure and are HNSW's worst case
    (top-10 at 192: 0.75 at 10,000, 0.19 at 100,000; at 384: 0.90 and 0.33).
    ``threads`` bounds usearch's add threads: several nodes may share 2 cores.
    ``exhaustive_below``: an index of at most this many vectors is searched
    exhaustively (usearch's SIMD brute force) instead of through the graph, as
    Qdrant's full-scan threshold does: exact, and faster than HNSW at expansion
    384 up to ~15,000 384-d vectors on the 2-core dev host with cold caches
    (0.11 vs 0.28 ms at 1,400; 0.34 vs 0.50 ms at 8,000; 0.63 vs 0.59 ms at 16,000).
    """

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 192
    expansion_per_result: int = 4
    exact_search_threshold: int = 4096  # filtered searches matching fewer chunks (all searched partitions) are exact
    exhaustive_below: int = 8192
    threads: int = 1

    def beam(self, k: int, count: int | None = None) -> int:
        """The HNSW search beam for a search that wants ``k`` results and asks the index for
        ``count`` (default k) nearest vectors. Recall is owed to the k: a pool oversampled for
        a post-filter or a subset of partitions only has to fit in the beam, not widen it 4x."""
        return max(self.expansion_search, self.expansion_per_result * k, count or k)


class VectorSource(Protocol):
    """The truth the index is derived from (the partition's SQLite).

    Keys are never reused and a key's vector never changes, which is what makes
    replaying the log idempotent.
    """

    def keys_logged_after(self, seq: int) -> list[int]:
        """The key of every log entry after ``seq``, in log order (repeats kept)."""
        ...

    def log_trimmed_through(self) -> int | None:
        """The highest seq ever trimmed from the log, or None if it never was."""
        ...

    def vectors_of(self, keys: Sequence[int]) -> dict[int, bytes]:
        """The float32 vectors of those keys that still exist."""
        ...

    def all_keys(self) -> np.ndarray:
        """Every chunk key (uint64)."""
        ...

    def all_vectors(self) -> Iterator[list[tuple[int, bytes]]]:
        """Every (key, float32 vector bytes), in batches."""
        ...


def unit_query_vector(vector: np.ndarray, dim: int) -> np.ndarray:
    """The query as a unit float32 vector; a wrong shape is the caller's error."""
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if query.shape[0] != dim:
        raise ValidationError(f"vector must have {dim} values, got {query.shape[0]}", field="vector")
    norm = float(np.linalg.norm(query))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValidationError("vector must be finite and not all zeros", field="vector")
    return query / norm


def exact_top_k(query: np.ndarray, k: int, rows: Sequence[tuple[int, bytes]], dim: int) -> list[Scored]:
    """Top-k of (key, vector bytes) rows by cosine similarity to a unit query, computed exactly.

    Used for selective filters: scoring a few thousand vectors straight from
    SQLite beats post-filtering an ANN search, and it never misses a match.
    """
    if not rows or k <= 0:
        return []
    keys = np.fromiter((key for key, _ in rows), dtype=np.int64, count=len(rows))
    matrix = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(len(rows), dim)
    norms = np.linalg.norm(matrix, axis=1)
    scores = (matrix @ query) / np.where(norms == 0.0, 1.0, norms)
    top = np.argsort(-scores, kind="stable")[:k]
    return [(int(keys[i]), float(scores[i])) for i in top]


def new_usearch_index(dim: int, settings: IndexSettings) -> Index:
    """An empty cosine index of float32 vectors with the given HNSW settings."""
    return Index(
        ndim=dim,
        metric=MetricKind.Cos,
        dtype=ScalarKind.F32,
        connectivity=settings.connectivity,
        expansion_add=settings.expansion_add,
        expansion_search=settings.expansion_search,  # a search sets its own: IndexSettings.beam
    )


# ------------------------------------------------------------------ files
def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
