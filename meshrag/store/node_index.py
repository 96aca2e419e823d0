"""One usearch HNSW index per node, over the chunk vectors of every partition it holds.

Why one: a node holds up to P=64 partitions, and searching P small indexes one
after another costs P searches; with ~1,500 vectors per partition and
expansion_search 384 each small HNSW visits nearly every vector, so search
time grew linearly with the node's data. One index answers in one search.
The price: the small indexes were searched nearly exhaustively, one large
HNSW is approximate (recall depends on the data, see IndexSettings), and an
insert into a large graph costs more than into a small one.

Keys: ``(pid << 40) | chunk_key``. A chunk key is the SQLite rowid of the chunk
in its partition (AUTOINCREMENT: never reused, and a key's vector never
changes). 40 bits hold 10^12 keys per partition and 24 bits the partition id
(at most 9999); a chunk key outside 0..2**40-1 raises ``ChunkKeyOverflow``
instead of colliding with another partition's keys.

Files, in the engine root (or, for a partition opened on its own, its
directory: a node of one partition):

* ``index.usearch`` the HNSW index, and
* ``index.json``    its sidecar: format, dim, connectivity, usearch version, the
  index file's size and blake2b checksum, and per partition the index-log seq
  the file covers.

SQLite stays the truth, and each partition's ``index_log`` (filled by triggers
in the transaction that changes a chunk) the recovery log. Recovery is per
partition as it attaches (``PartitionIndex.recover``): if the sidecar has a seq
for it and the log still reaches back to that seq, replay the log after it;
then check that the index's keys for the partition are exactly SQLite's; else
drop the partition's keys and re-add them from SQLite (only that partition is
rebuilt). Once every partition on disk has attached, ``retain`` drops the keys
of partitions no longer on disk (dropped, but not saved since).

Saving is node-wide (``save``). For each partition in turn, with its writes
paused (its write lock spans a write's SQLite commit and its index update),
read its log seq: at that instant the index holds exactly that partition's
state at that seq. Its writes resume at once; the file is written after the
last seq is read, so it holds every partition at its recorded seq or later.
Later is harmless: replaying is idempotent (keys are never reused and vectors
never change, so a logged key belongs in the index iff SQLite has it), so
recovery from the recorded seq converges either way, and it checks the keys
against SQLite regardless. Holding every write lock at once instead would stall
all writes of the node for the whole save (~1 s for 100,000 vectors of 384
dimensions: 170 MB written, checksummed, fsynced) and buy nothing; searches
and index updates wait only while usearch serialises the index (~0.2 s of
it). Index file and sidecar are each written to a temp file, fsynced and
renamed; only then is each partition's log trimmed through its recorded seq,
so a crash at any point leaves a saved index the logs still cover. A crash
between the two renames leaves a sidecar whose checksum does not match: every
partition rebuilds (correct, if slow).

Search (``search``) runs one ANN search and keeps the keys of the wanted
partitions, oversampled by the share of the index those partitions hold, and
widens until k candidates survive the caller's ``resolve`` (which drops keys
gone from SQLite or filtered out) or the index is exhausted. Unfiltered, the
best k are resolved first and the rest only if some of those are gone.

Concurrency: every usearch call serialises on one lock. usearch 2.26.6's
Python binding holds the GIL in ``search`` and ``add`` (two threads searching
take as long as one doing both searches, measured), and it runs each call on
the per-thread contexts 0..threads-1 of an executor of its own, after a
``reserve`` that may reallocate them, so two calls from two Python threads
would share context 0: concurrent calls are neither safe nor faster.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Collection, ContextManager, Iterable, Iterator, Protocol, Sequence, TypeVar

import numpy as np
import usearch
from usearch.index import Index, MetricKind, ScalarKind

from meshrag.store.vector_index import (
    IndexSettings,
    Scored,
    VectorSource,
    file_digest,
    fsync_dir,
    fsync_file,
    new_usearch_index,
    write_atomically,
)

log = logging.getLogger(__name__)

INDEX_FILE = "index.usearch"
SIDECAR_FILE = "index.json"
SIDECAR_FORMAT = 2  # 1 was the index of a single partition (seq, no partition map)

PARTITION_SHIFT = 40
CHUNK_KEY_LIMIT = 1 << PARTITION_SHIFT
MAX_PARTITION = (1 << (64 - PARTITION_SHIFT)) - 1
_SHIFT = np.uint64(PARTITION_SHIFT)
_MASK = np.uint64(CHUNK_KEY_LIMIT - 1)

NodeScored = tuple[int, int, float]  # (partition, chunk key, cosine similarity)
T = TypeVar("T")


class ChunkKeyOverflow(ValueError):
    """A chunk key that does not fit the node index's 40 bits (see the module docstring)."""


class LoggedPartition(Protocol):
    """What a save needs of a partition (partition.Partition)."""

    pid: int

    def writes_paused(self) -> ContextManager[int | None]:
        """Hold the partition's writes; yields its index-log seq (None if it is closed)."""
        ...

    def trim_index_log(self, seq: int) -> None:
        """Forget log entries through ``seq`` (a saved index covers them)."""
        ...


def node_keys(pid: int, keys: Sequence[int] | np.ndarray) -> np.ndarray:
    """Chunk keys of a partition as node index keys (uint64)."""
    chunk = np.asarray(keys, dtype=np.int64).reshape(-1)
    if chunk.size and (int(chunk.min()) < 0 or int(chunk.max()) >= CHUNK_KEY_LIMIT):
        bad = int(chunk.max()) if int(chunk.max()) >= CHUNK_KEY_LIMIT else int(chunk.min())
        raise ChunkKeyOverflow(
            f"partition {pid}: chunk key {bad} is outside 0..2**{PARTITION_SHIFT}-1, which the node index "
            "packs with the partition id into 64 bits; drop the partition and let repair refill it (fresh keys)"
        )
    return chunk.astype(np.uint64) | np.uint64(pid << PARTITION_SHIFT)


def split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Node index keys as (partition ids, chunk keys), both int64."""
    packed = np.asarray(keys, dtype=np.uint64)
    return (packed >> _SHIFT).astype(np.int64), (packed & _MASK).astype(np.int64)


class NodeIndex:
    """Thread-safe: usearch calls serialise on one lock, saves on another.

    Per-partition calls read SQLite through the ``VectorSource`` they are given,
    so the caller must hold that partition's write lock (``PartitionIndex`` is
    what a partition calls).
    """

    def __init__(self, root: Path, dim: int, settings: IndexSettings, name: str = "node index") -> None:
        self.root = Path(root)
        self.dim = dim
        self.settings = settings
        self.name = name  # for log lines
        self._lock = threading.Lock()  # every usearch call, and the dicts below
        self._save_lock = threading.Lock()  # one save at a time: each trims logs through what it wrote
        self._index = new_usearch_index(dim, settings)
        self._counts: dict[int, int] = {}  # vectors per partition, for oversampling
        self._pending: dict[int, int] = {}  # changes per partition not in the saved files
        self._saved: dict[int, int] = {}  # log seq per partition the loaded files cover, until it attaches
        self._loaded = False
        self._trim_holds = 0  # snapshots in progress: saves keep the logs (see hold_log_trims)

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    @property
    def sidecar_path(self) -> Path:
        return self.root / SIDECAR_FILE

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def pending(self) -> int:
        """Changes, over all partitions, not yet in the saved files."""
        with self._lock:
            return sum(self._pending.values())

    def pending_of(self, pid: int) -> int:
        with self._lock:
            return self._pending.get(pid, 0)

    def count_of(self, pid: int) -> int:
        with self._lock:
            return self._counts.get(pid, 0)

    def view(self, pid: int) -> PartitionIndex:
        if not 0 <= pid <= MAX_PARTITION:
            raise ValueError(f"partition {pid} out of range 0..{MAX_PARTITION}")
        return PartitionIndex(self, pid)

    # ------------------------------------------------------------ load
    def load_saved(self) -> bool:
        """Adopt the saved index and the log seqs it covers; False (the index left empty)
        if the files are absent, damaged or built with other settings: every partition
        then rebuilds from SQLite as it attaches."""
        restored = self._read_saved()
        if restored is None:
            return False
        index, seqs = restored
        pids, counts = np.unique(_keys_in(index) >> _SHIFT, return_counts=True)
        with self._lock:
            self._index = index
            self._counts = {int(pid): int(count) for pid, count in zip(pids, counts)}
            self._pending = {}
            self._saved = seqs
            self._loaded = True
        return True

    def _read_saved(self) -> tuple[Index, dict[int, int]] | None:
        if not self.sidecar_path.exists():
            return None
        try:
            sidecar = json.loads(self.sidecar_path.read_text())
            if not self._fits(sidecar):
                log.warning("%s: saved index is damaged or was built otherwise; partitions rebuild from SQLite", self.name)
                return None
            seqs = {int(pid): int(seq) for pid, seq in sidecar["partitions"].items()}
            index = Index.restore(str(self.index_path))
        except (OSError, ValueError, RuntimeError, TypeError, AttributeError, KeyError) as exc:
            log.warning("%s: saved index unusable (%s); partitions rebuild from SQLite", self.name, exc)
            return None
        if index is None or index.ndim != self.dim or index.metric_kind != MetricKind.Cos or index.dtype != ScalarKind.F32:
            return None
        # Settable (usearch declares the setters apart from the getters, which mypy misreads).
        # The search beam needs no restoring: every search sets its own (_set_beam).
        index.expansion_add = self.settings.expansion_add  # type: ignore[misc]
        return index, seqs

    def _fits(self, sidecar: dict) -> bool:
        return (
            sidecar.get("format") == SIDECAR_FORMAT
            and sidecar.get("dim") == self.dim
            and sidecar.get("connectivity") == self.settings.connectivity
            and sidecar.get("usearch") == usearch.__version__  # the file format may change between versions
            and self.index_path.stat().st_size == sidecar.get("bytes")
            and file_digest(self.index_path) == sidecar.get("blake2b")
        )

    # ------------------------------------------------------------ recovery
    def recover(self, pid: int, source: VectorSource, fresh: bool) -> str:
        """Bring a partition's vectors in line with its SQLite as it attaches:
        "new", "loaded", "caught_up:<n>" or "rebuilt"."""
        with self._lock:
            saved = self._saved.pop(pid, None)
        if saved is not None and not fresh:
            trimmed = source.log_trimmed_through()
            if trimmed is None or saved >= trimmed:  # else the log no longer covers the gap
                replayed = self._catch_up(pid, source, saved)
                if self._matches(pid, source):
                    self._add_pending(pid, replayed)
                    return "loaded" if replayed == 0 else f"caught_up:{replayed}"
            log.warning("%s: saved vectors of partition %d are inconsistent with SQLite; rebuilding them", self.name, pid)
        elif not fresh:
            # One warning for a whole unusable file was enough (load_saved).
            log.log(logging.WARNING if self._loaded else logging.INFO,
                    "%s: no saved vectors of partition %d; rebuilding them from SQLite", self.name, pid)
        self._rebuild(pid, source)
        return "new" if fresh else "rebuilt"

    def _catch_up(self, pid: int, source: VectorSource, saved_seq: int) -> int:
        """Replay a partition's log after ``saved_seq``; returns how many entries there were.

        Idempotent, so it can repeat work safely: the net effect of a key's
        entries is simply present in SQLite -> in the index, else not.
        """
        entries = source.keys_logged_after(saved_seq)
        keys = sorted(set(entries))
        present = source.vectors_of(keys)
        with self._lock:
            indexed = np.asarray(self._index.contains(node_keys(pid, keys))) if keys else np.zeros(0, dtype=bool)
            stale = [key for key, inside in zip(keys, indexed) if inside and key not in present]
            missing = [key for key, inside in zip(keys, indexed) if not inside and key in present]
            if stale:
                self._remove_locked(pid, node_keys(pid, stale))
            if missing:
                vectors = np.frombuffer(b"".join(present[key] for key in missing), dtype=np.float32).reshape(-1, self.dim)
                self._add_locked(pid, node_keys(pid, missing), vectors)
        return len(entries)

    def _matches(self, pid: int, source: VectorSource) -> bool:
        """Whether the index holds exactly the partition's keys in SQLite."""
        expected = np.sort(source.all_keys().astype(np.int64))
        with self._lock:
            held = self._chunk_keys_locked(pid)
        return bool(np.array_equal(np.sort(held), expected))

    def _rebuild(self, pid: int, source: VectorSource) -> None:
        """Drop a partition's vectors and add them again from SQLite, a batch per lock hold
        (searches go on meanwhile; the caller holds the partition's write lock)."""
        with self._lock:
            self._drop_locked(pid)
        added = 0
        for rows in source.all_vectors():
            keys = node_keys(pid, [key for key, _ in rows])
            vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(len(rows), self.dim)
            with self._lock:
                self._add_locked(pid, keys, vectors)
            added += len(rows)
        self._add_pending(pid, added + 1)  # the saved files lack this: the next save must write

    def retain(self, pids: Collection[int]) -> list[int]:
        """Drop the vectors of every partition not in ``pids`` (those on disk, attached);
        returns the partitions dropped."""
        keep = set(pids)
        with self._lock:
            indexed = {int(pid) for pid in np.unique(_keys_in(self._index) >> _SHIFT)}
            gone = sorted((indexed | set(self._saved)) - keep)
        for pid in gone:
            self.drop(pid)
        if gone:
            log.info("%s: dropped the vectors of partitions %s, no longer on disk", self.name, gone)
        return gone

    # ------------------------------------------------------------ updates
    def update(
        self, pid: int, removed: Sequence[int], added_keys: Sequence[int], added_vectors: Sequence[np.ndarray], source: VectorSource
    ) -> bool:
        """Mirror a partition's committed transaction; returns True if its vectors had to be rebuilt.

        SQLite already holds the change; should usearch fail, rebuilding the
        partition from SQLite restores the invariant rather than leaving a gap.
        A chunk key that does not fit (ChunkKeyOverflow) is raised as it is.
        """
        if not removed and not added_keys:
            return False
        gone, new = node_keys(pid, removed), node_keys(pid, added_keys)
        failed = False
        with self._lock:
            try:
                if len(gone):
                    self._remove_locked(pid, gone)
                if len(new):
                    self._add_locked(pid, new, np.stack(added_vectors))
            except Exception:
                log.exception("%s: index update of partition %d failed; rebuilding it from SQLite", self.name, pid)
                failed = True
        if failed:
            self._rebuild(pid, source)
        else:
            self._add_pending(pid, len(removed) + len(added_keys))
        return failed

    def drop(self, pid: int) -> int:
        """Remove a partition's vectors (found by key prefix) and forget its saved seq;
        returns how many went."""
        with self._lock:
            removed = self._drop_locked(pid)
            self._saved.pop(pid, None)
            self._pending[pid] = self._pending.get(pid, 0) + removed + 1  # the saved file still has them
        return removed

    def contains(self, pid: int, keys: Sequence[int] | np.ndarray) -> list[bool]:
        if len(keys) == 0:
            return []
        packed = node_keys(pid, keys)
        with self._lock:
            return [bool(inside) for inside in np.asarray(self._index.contains(packed))]

    def _add_locked(self, pid: int, keys: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add(keys, vectors, threads=self.settings.threads)
        self._counts[pid] = self._counts.get(pid, 0) + len(keys)

    def _remove_locked(self, pid: int, keys: np.ndarray) -> None:
        removed = int(self._index.remove(keys))
        self._counts[pid] = self._counts.get(pid, 0) - removed

    def _drop_locked(self, pid: int) -> int:
        keys = _keys_in(self._index)
        mine = keys[(keys >> _SHIFT) == np.uint64(pid)]
        removed = int(self._index.remove(mine)) if len(mine) else 0
        self._counts.pop(pid, None)
        return removed

    def _chunk_keys_locked(self, pid: int) -> np.ndarray:
        keys = _keys_in(self._index)
        return (keys[(keys >> _SHIFT) == np.uint64(pid)] & _MASK).astype(np.int64)

    def _add_pending(self, pid: int, changes: int) -> None:
        with self._lock:
            self._pending[pid] = self._pending.get(pid, 0) + changes

    # ------------------------------------------------------------ search
    def search(
        self,
        query: np.ndarray,
        k: int,
        partitions: Collection[int] | None,
        resolve: Callable[[list[NodeScored]], list[T]],
        oversample: bool = False,
    ) -> list[T]:
        """ANN search over the given partitions (None: all), widening the candidate pool
        until k candidates survive ``resolve`` or the index is exhausted.

        ``resolve`` gets (partition, chunk key, score) best first, only of the wanted
        partitions, and drops keys gone or filtered out. ``oversample`` starts wider,
        for post-filtered searches where many candidates are expected to fall away.
        """
        wanted = None if partitions is None else set(partitions)
        with self._lock:
            total = len(self._index)
            held = total if wanted is None else sum(self._counts.get(pid, 0) for pid in wanted)
        if k <= 0 or held <= 0 or total == 0:
            return []
        count = min(total, _first_pool(k, held / total, oversample))
        while True:
            found = _resolved(self._nearest(query, count, wanted, self.settings.beam(k, count)), k, resolve,
                              window=None if oversample else k)
            if len(found) >= k or count >= total:
                return found[:k]
            count = min(total, count * 4)

    def _nearest(self, query: np.ndarray, count: int, wanted: set[int] | None, beam: int) -> list[NodeScored]:
        with self._lock:
            # threads=1: one query runs on one thread anyway; 0 (usearch's default) would have the
            # binding set up a worker per core for every call, which costs more than the search.
            exhaustive = len(self._index) <= self.settings.exhaustive_below  # faster and exact when small
            self._set_beam(beam)
            found = self._index.search(query, count, threads=1, exact=exhaustive)
        pids, keys = split_keys(found.keys)
        scores = 1.0 - np.asarray(found.distances, dtype=np.float64)
        scored = zip(pids.tolist(), keys.tolist(), scores.tolist())
        return [entry for entry in scored if wanted is None or entry[0] in wanted]

    def _set_beam(self, beam: int) -> None:
        """usearch keeps the beam in the index: set it only when a search needs another
        (the caller holds the lock)."""
        if self._index.expansion_search != beam:
            self._index.expansion_search = beam  # type: ignore[misc]

    # ------------------------------------------------------------ save
    def save(self, partitions: Iterable[LoggedPartition], force: bool = False) -> int | None:
        """Write the index and the log seq of each partition it covers, then trim their logs
        (the protocol is in the module docstring). ``partitions``: every partition attached.

        Returns None if nothing was written (no change pending, files present, not
        forced), else how many partitions had changes that the files now hold.
        """
        with self._save_lock:
            if not (force or self.pending or not self.sidecar_path.exists()):
                return None
            held = list(partitions)
            seqs: dict[int, int] = {}
            covered: dict[int, int] = {}
            for part in held:
                with part.writes_paused() as seq:
                    if seq is not None:  # else closed meanwhile (dropped): its vectors are gone too
                        seqs[part.pid] = seq
                        covered[part.pid] = self.pending_of(part.pid)
            covered.update(self._write_files(seqs, held=covered.keys()))
            for part in held:
                if part.pid in seqs and not self._trim_holds:
                    part.trim_index_log(seqs[part.pid])
            self._settle(covered)
            return sum(1 for changes in covered.values() if changes)

    @contextmanager
    def hold_log_trims(self) -> Iterator[None]:
        """While held, saves write the files but trim no partition's log. A snapshot holds it
        from copying the saved files until its last partition database is copied, so each
        copied log still reaches back to the seq the copied sidecar records and the restored
        node catches up from the log instead of rebuilding. The next save after it trims."""
        with self._save_lock:
            self._trim_holds += 1
        try:
            yield
        finally:
            with self._save_lock:
                self._trim_holds -= 1

    def link_saved_files(self, target_dir: Path) -> list[Path]:
        """Put the saved index file and its sidecar, a matching pair, into ``target_dir``;
        returns what it placed (nothing if no save happened yet). Hard links where it can:
        a save replaces both files by rename, never writes into them, so a link keeps the
        pair as it is now at no cost; a copy across file systems."""
        placed: list[Path] = []
        with self._save_lock:  # no save between the two files
            if not self.sidecar_path.exists() or not self.index_path.exists():
                return placed
            for source in (self.index_path, self.sidecar_path):
                target = target_dir / source.name
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
                placed.append(target)
        return placed

    def _write_files(self, seqs: dict[int, int], held: Collection[int]) -> dict[int, int]:
        """Index file, then sidecar; returns the pending changes of partitions not held
        (dropped ones), read as the index is written, which the file therefore covers."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_name(INDEX_FILE + ".tmp")
        with self._lock:
            self._index.save(str(tmp))
            count = len(self._index)
            unheld = {pid: changes for pid, changes in self._pending.items() if pid not in held}
        sidecar = {
            "format": SIDECAR_FORMAT,
            "count": count,
            "dim": self.dim,
            "connectivity": self.settings.connectivity,
            "usearch": usearch.__version__,
            "bytes": tmp.stat().st_size,
            "blake2b": file_digest(tmp),
            "partitions": {str(pid): seq for pid, seq in sorted(seqs.items())},
        }
        fsync_file(tmp)
        os.replace(tmp, self.index_path)
        write_atomically(self.sidecar_path, json.dumps(sidecar).encode())
        fsync_dir(self.root)
        return unheld

    def _settle(self, covered: dict[int, int]) -> None:
        """Count the changes a save wrote as saved; those made since stay pending."""
        with self._lock:
            for pid, changes in covered.items():
                left = self._pending.get(pid, 0) - changes
                if left > 0:
                    self._pending[pid] = left
                else:
                    self._pending.pop(pid, None)


class PartitionIndex:
    """One partition's share of the node index, in the partition's own chunk keys:
    what a Partition updates, recovers and searches. Thread-safety as NodeIndex."""

    __slots__ = ("node", "pid")

    def __init__(self, node: NodeIndex, pid: int) -> None:
        self.node = node
        self.pid = pid

    def __len__(self) -> int:
        return self.node.count_of(self.pid)

    @property
    def pending(self) -> int:
        """This partition's changes not yet in the saved files (a rebuild counts as unsaved)."""
        return self.node.pending_of(self.pid)

    def contains(self, keys: Sequence[int] | np.ndarray) -> list[bool]:
        return self.node.contains(self.pid, keys)

    def recover(self, source: VectorSource, fresh: bool) -> str:
        return self.node.recover(self.pid, source, fresh)

    def update(
        self, removed: Sequence[int], added_keys: Sequence[int], added_vectors: Sequence[np.ndarray], source: VectorSource
    ) -> bool:
        return self.node.update(self.pid, removed, added_keys, added_vectors, source)

    def search(self, query: np.ndarray, k: int, resolve: Callable[[list[Scored]], list[T]], oversample: bool = False) -> list[T]:
        """NodeIndex.search restricted to this partition; ``resolve`` gets (chunk key, score)."""
        return self.node.search(
            query, k, (self.pid,), lambda scored: resolve([(key, score) for _, key, score in scored]), oversample
        )


# ------------------------------------------------------------------ helpers
def _keys_in(index: Index) -> np.ndarray:
    """Every key in the index (uint64); removed keys are not listed."""
    return np.asarray(index.keys[0 : len(index)], dtype=np.uint64)


def _resolved(scored: list[NodeScored], k: int, resolve: Callable[[list[NodeScored]], list[T]], window: int | None) -> list[T]:
    """What ``resolve`` keeps of ``scored``, window by window, best first, until k survive.

    Without a filter almost every candidate survives, so resolving the best k first spares
    reading the rest from SQLite (one query per partition they fall in). A window is
    stretched over candidates tied with its last, so ties are settled by ``resolve``.
    """
    if window is None:
        return resolve(scored)
    found: list[T] = []
    start = 0
    while start < len(scored) and len(found) < k:
        end = min(len(scored), start + window)
        while end < len(scored) and scored[end][2] == scored[end - 1][2]:
            end += 1
        found.extend(resolve(scored[start:end]))
        start = end
    return found


def _first_pool(k: int, share: float, oversample: bool) -> int:
    """The first candidate count: k (or more, for a post-filter) scaled up by the share of
    the index the wanted partitions hold, twice over so that a shortfall, which costs a
    second and wider search, stays rare. The beam is at least expansion_search wide, so
    asking for up to a quarter of that costs about as much as asking for k."""
    base = max(4 * k, 64) if oversample else k
    return base if share >= 1.0 else math.ceil(2 * base / share)
