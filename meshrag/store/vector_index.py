"""The derived usearch HNSW index of one partition: update, search, save, recover.

SQLite is the truth; this index only mirrors the chunk vectors in it, keyed by
the chunk's integer key. It lives in two files of the partition directory:

* ``index.usearch`` the HNSW index as of some index-log seq, and
* ``index.json``    its sidecar: that seq, a checksum of the index file and the
  settings it was built with.

Recovery: load the saved index if its checksum and settings hold, replay the
log entries after its seq, and check that the index holds exactly the chunk
keys in SQLite; anything else (missing, corrupt, inconsistent) means a rebuild
from the vectors in SQLite. The SQLite side is reached through ``VectorSource``
so this module knows nothing of the partition's schema.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

import numpy as np
import usearch
from usearch.index import Index, MetricKind, ScalarKind

from meshrag.errors import ValidationError

log = logging.getLogger(__name__)

INDEX_FILE = "index.usearch"
SIDECAR_FILE = "index.json"
SIDECAR_FORMAT = 1

Scored = tuple[int, float]  # (chunk key, cosine similarity)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """HNSW and search tuning.

    ``expansion_search``: recall@10 against exact search, measured on 3000 random
    384-d vectors (the hard case; real embeddings cluster and do better):
    64 -> 0.71, 128 -> 0.90, 256 -> 0.97, 384 -> 0.998 at ~0.7 ms per query.
    ``threads`` bounds usearch's add threads: several nodes may share 2 cores.
    """

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 384
    exact_search_threshold: int = 4096  # filtered searches over fewer chunks are exact
    threads: int = 1


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


class VectorIndex:
    """Thread-safe: usearch calls serialise on an internal lock.

    Calls that take a ``VectorSource`` read SQLite through it, so the caller
    must hold whatever keeps that source consistent (the partition's write lock).
    """

    def __init__(self, directory: Path, dim: int, settings: IndexSettings, name: str = "index") -> None:
        self.directory = Path(directory)
        self.dim = dim
        self.settings = settings
        self.name = name  # for log lines, e.g. "partition 3"
        self._lock = threading.Lock()
        self._index = self._new_index()
        self._pending = 0  # changes since the last save

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_FILE

    @property
    def sidecar_path(self) -> Path:
        return self.directory / SIDECAR_FILE

    @property
    def pending(self) -> int:
        """Changes not yet in the saved files (a rebuilt index counts as unsaved)."""
        return self._pending

    def __len__(self) -> int:
        return len(self._index)

    def contains(self, keys: Sequence[int] | np.ndarray) -> list[bool]:
        if len(keys) == 0:
            return []
        with self._lock:
            return [bool(inside) for inside in self._index.contains(np.asarray(keys, dtype=np.uint64))]

    # --------------------------------------------------------------- update
    def update(
        self, removed: Sequence[int], added_keys: Sequence[int], added_vectors: Sequence[np.ndarray], source: VectorSource
    ) -> bool:
        """Mirror a committed transaction; returns True if the index had to be rebuilt.

        SQLite already holds the change; should usearch fail, rebuilding from
        SQLite restores the invariant rather than leaving a silent gap.
        """
        if not removed and not added_keys:
            return False
        rebuilt = False
        with self._lock:
            try:
                if removed:
                    self._index.remove(np.asarray(removed, dtype=np.uint64))
                if added_keys:
                    keys = np.asarray(added_keys, dtype=np.uint64)
                    self._index.add(keys, np.stack(added_vectors), threads=self.settings.threads)
            except Exception:
                log.exception("%s: index update failed; rebuilding from SQLite", self.name)
                self._index = self._built_from(source)
                rebuilt = True
        self._pending += len(removed) + len(added_keys)
        return rebuilt

    # --------------------------------------------------------------- search
    def search(self, query: np.ndarray, count: int) -> list[Scored]:
        """The ``count`` approximate nearest keys to a unit query, best first."""
        with self._lock:
            found = self._index.search(query, count)
        return [(int(key), 1.0 - float(distance)) for key, distance in zip(found.keys, found.distances)]

    def search_until(self, query: np.ndarray, k: int, resolve: Callable[[list[Scored]], list[T]], oversample: bool) -> list[T]:
        """ANN search, widening the candidate pool until k candidates survive ``resolve``
        (which drops keys gone or filtered out) or the index is exhausted.

        ``oversample`` starts wider, for post-filtered searches where many
        candidates are expected to fall away.
        """
        with self._lock:
            total = len(self._index)
        count = min(total, max(4 * k, 64) if oversample else k)
        while count > 0:
            hits = resolve(self.search(query, count))
            if len(hits) >= k or count >= total:
                return hits[:k]
            count = min(total, count * 4)
        return []

    # ------------------------------------------------------------ save/load
    def save(self, log_seq: int) -> None:
        """Write the index and a sidecar saying it covers the log through ``log_seq``.

        Index file first, sidecar second, each written to a temp file and
        renamed. A crash between the renames leaves an index newer than its
        sidecar's seq: replaying is idempotent, so that is harmless. Call
        ``mark_saved`` once whatever depends on the save (log trimming) is done.
        """
        tmp_index = self.index_path.with_suffix(".usearch.tmp")
        with self._lock:
            self._index.save(str(tmp_index))
            count = len(self._index)
        sidecar = {
            "format": SIDECAR_FORMAT,
            "log_seq": log_seq,
            "count": count,
            "dim": self.dim,
            "connectivity": self.settings.connectivity,
            "usearch": usearch.__version__,
            "bytes": tmp_index.stat().st_size,
            "blake2b": _file_digest(tmp_index),
        }
        _fsync_file(tmp_index)
        os.replace(tmp_index, self.index_path)
        _write_atomically(self.sidecar_path, json.dumps(sidecar).encode())
        _fsync_dir(self.directory)

    def mark_saved(self) -> None:
        self._pending = 0

    def load_saved(self) -> int | None:
        """Replace the index by the saved one and return its log seq; None (index
        untouched) if the files are absent, corrupt or built with other settings."""
        if not self.sidecar_path.exists():
            return None
        try:
            sidecar = json.loads(self.sidecar_path.read_text())
            if (
                sidecar.get("format") != SIDECAR_FORMAT
                or sidecar.get("dim") != self.dim
                or sidecar.get("connectivity") != self.settings.connectivity
                or sidecar.get("usearch") != usearch.__version__  # file format may change between versions
                or self.index_path.stat().st_size != sidecar.get("bytes")
                or _file_digest(self.index_path) != sidecar.get("blake2b")
            ):
                return None
            index = Index.restore(str(self.index_path))
        except (OSError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
            log.warning("%s: saved index unusable (%s)", self.name, exc)
            return None
        if index is None or index.ndim != self.dim or index.metric_kind != MetricKind.Cos or index.dtype != ScalarKind.F32:
            return None
        index.expansion_search = self.settings.expansion_search
        index.expansion_add = self.settings.expansion_add
        with self._lock:
            self._index = index
        return int(sidecar["log_seq"])

    # ------------------------------------------------------------- recovery
    def recover(self, source: VectorSource, fresh: bool) -> str:
        """Bring the index in line with SQLite on open: "new", "loaded", "caught_up:<n>" or "rebuilt"."""
        saved_seq = self.load_saved()
        if saved_seq is not None:
            trimmed = source.log_trimmed_through()
            if trimmed is None or saved_seq >= trimmed:  # else the log no longer covers the gap
                replayed = self.catch_up(source, saved_seq)
                if self.matches(source):
                    self._pending = replayed
                    return "loaded" if replayed == 0 else f"caught_up:{replayed}"
            log.warning("%s: saved index inconsistent with SQLite; rebuilding", self.name)
        elif not fresh:
            log.warning("%s: no valid saved index; rebuilding from SQLite", self.name)
        self.rebuild(source)
        return "new" if fresh else "rebuilt"

    def catch_up(self, source: VectorSource, saved_seq: int) -> int:
        """Replay log entries after ``saved_seq``; returns how many there were.

        Idempotent, so it can repeat work safely: keys are never reused and
        chunk vectors never change, so the net effect of a key's entries is
        simply: present in SQLite -> in the index, else not.
        """
        entries = source.keys_logged_after(saved_seq)
        keys = sorted(set(entries))
        present = source.vectors_of(keys)
        with self._lock:
            index = self._index
            indexed = index.contains(np.asarray(keys, dtype=np.uint64)) if keys else np.zeros(0, dtype=bool)
            stale = [key for key, inside in zip(keys, indexed) if inside and key not in present]
            missing = [key for key, inside in zip(keys, indexed) if not inside and key in present]
            if stale:
                index.remove(np.asarray(stale, dtype=np.uint64))
            if missing:
                vectors = np.frombuffer(b"".join(present[key] for key in missing), dtype=np.float32).reshape(-1, self.dim)
                index.add(np.asarray(missing, dtype=np.uint64), vectors, threads=self.settings.threads)
        return len(entries)

    def matches(self, source: VectorSource) -> bool:
        """Whether the index holds exactly the keys in SQLite."""
        keys = source.all_keys()
        with self._lock:
            if len(self._index) != len(keys):
                return False
            return len(keys) == 0 or bool(np.all(self._index.contains(keys)))

    def rebuild(self, source: VectorSource) -> None:
        """Build the index afresh from every vector in SQLite; the saved files are then stale."""
        index = self._built_from(source)
        with self._lock:
            self._index = index
        self._pending = len(index) + 1  # the saved files are wrong or absent: the next save must write

    def _built_from(self, source: VectorSource) -> Index:
        index = self._new_index()
        for rows in source.all_vectors():
            keys = np.fromiter((key for key, _ in rows), dtype=np.uint64, count=len(rows))
            vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(len(rows), self.dim)
            index.add(keys, vectors, threads=self.settings.threads)
        return index

    def _new_index(self) -> Index:
        s = self.settings
        return Index(
            ndim=self.dim,
            metric=MetricKind.Cos,
            dtype=ScalarKind.F32,
            connectivity=s.connectivity,
            expansion_add=s.expansion_add,
            expansion_search=s.expansion_search,
        )


# ------------------------------------------------------------------ files
def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
