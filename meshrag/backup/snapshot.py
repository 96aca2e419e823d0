"""The node's side of `meshrag snapshot`: a consistent copy of its data while it serves.

What is consistent: each partition database is copied as of one instant
(store/snapshot.py: SQLite's backup API inside one read transaction, so writes
go on meanwhile), and a document lives in one partition, so every document,
with its chunks, vectors, version and tombstone, is copied whole. Partitions
are copied one after another, not at one common instant: nothing needs that,
since repair compares and heals each partition on its own.

The node index (usearch) is copied as it was last saved, with the sidecar that
names the index-log seq it covers for each partition; index saves keep the logs
(``hold_index_log_trims``) until the last database is copied, so each copied
log still reaches back to that seq and the restored node replays a few log
entries instead of rebuilding its index. Recovery checks the index against
SQLite either way (node_index.py), so a partition whose log was trimmed or that
appeared after the save is rebuilt from its vectors: correct, only slower.

One snapshot at a time per node (a second is 409). The work runs in the storage
executor, one partition per call, so requests' storage work interleaves with it.
A job's progress (partitions done / total, bytes) is what the status route shows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from meshrag.backup.manifest import (
    COPIED_FILES, FORMAT, HINTS_FILE, KIND, PARTIAL_SUFFIX, PARTITIONS_DIR, SNAPSHOTS_DIR, file_entries, read_manifest,
    write_manifest, SnapshotInvalid,
)
from meshrag.cluster.repair import root_hash
from meshrag.cluster.ringstate import ClusterSettings
from meshrag.errors import MeshragError
from meshrag.store.engine import StorageEngine
from meshrag.store.snapshot import backup_database, summarize_database

log = logging.getLogger(__name__)

KEPT_JOBS = 16  # finished jobs whose status is remembered in memory (finished snapshots are also read from disk)
SPACE_MARGIN = 1.1  # free space wanted: what the databases take now, plus growth while they are copied


class SnapshotRunning(MeshragError):
    status = 409
    code = "snapshot_running"


class SnapshotExists(MeshragError):
    status = 409
    code = "snapshot_exists"


class InsufficientStorage(MeshragError):
    status = 507
    code = "insufficient_storage"


@dataclass(frozen=True)
class SnapshotSources:
    """What the node hands a snapshot (node.py ``snapshot_sources``)."""

    engine: StorageEngine
    data_dir: Path
    node_id: str
    node_name: str
    generation: int
    settings: ClusterSettings
    run_blocking: Callable[..., Awaitable[Any]]  # fn, *args -> its result, in the storage executor


@dataclass
class SnapshotJob:
    name: str
    path: Path
    started_at: float
    state: str = "running"  # then done or failed
    phase: str = "starting"  # index, partitions, node files, checksums, done
    partitions_done: int = 0
    partitions_total: int = 0
    bytes_done: int = 0
    documents: int = 0
    finished_at: float | None = None
    error: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def staging(self) -> Path:
        return self.path.with_name(self.path.name + PARTIAL_SUFFIX)

    def add_bytes(self, count: int) -> None:
        self.bytes_done += count  # from the storage thread; read on the loop (an int, never torn)

    def as_dict(self) -> dict[str, Any]:
        end = self.finished_at or time.time()
        return {
            "name": self.name, "path": str(self.path), "state": self.state, "phase": self.phase,
            "partitions_done": self.partitions_done, "partitions_total": self.partitions_total,
            "bytes": self.bytes_done, "documents": self.documents, "started_at": self.started_at,
            "finished_at": self.finished_at, "seconds": round(end - self.started_at, 3), "error": self.error,
        }


def default_name(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


class Snapshots:
    """This node's snapshot jobs: one running at most, recent ones remembered."""

    def __init__(self, sources: Callable[[], SnapshotSources]) -> None:
        self._sources = sources  # raises (503/421) while the node cannot snapshot
        self._running: SnapshotJob | None = None
        self._starting = False  # a start between its checks and its task (two requests at once)
        self._jobs: dict[str, SnapshotJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, name: str | None) -> SnapshotJob:
        """Check, reserve the target directory, and start the copy in the background."""
        if self._running is not None or self._starting:
            running = self._running.name if self._running is not None else "another"
            raise SnapshotRunning(f"snapshot {running!r} is still running on this node; wait for it (one at a time)")
        sources = self._sources()
        self._starting = True
        try:
            now = time.time()
            name = name or default_name(now)
            job = SnapshotJob(name, sources.data_dir / SNAPSHOTS_DIR / name, now)
            await sources.run_blocking(_reserve, job, sources)
        finally:
            self._starting = False
        self._running = self._jobs[job.name] = job
        task = asyncio.create_task(self._run(job, sources), name=f"snapshot-{job.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def status(self, name: str) -> dict[str, Any] | None:
        """A job of this process, or a finished snapshot found on disk; None if neither."""
        job = self._jobs.get(name)
        if job is not None:
            return job.as_dict()
        sources = self._sources()
        return await sources.run_blocking(_finished_on_disk, sources.data_dir / SNAPSHOTS_DIR / name)

    async def _run(self, job: SnapshotJob, sources: SnapshotSources) -> None:
        try:
            job.manifest = await self._copy(job, sources)
            job.state, job.phase = "done", "done"
            log.info("snapshot %s: %d partitions, %d documents, %d bytes in %.1f s at %s", job.name,
                     job.partitions_done, job.documents, job.bytes_done, time.time() - job.started_at, job.path)
        except asyncio.CancelledError:
            job.state, job.error = "failed", "cancelled (the node is stopping)"
            raise  # its staging directory goes with the next snapshot's start (_reserve)
        except Exception as exc:
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("snapshot %s failed", job.name)
            await sources.run_blocking(shutil.rmtree, job.staging, True)
        finally:
            job.finished_at = time.time()
            self._running = None
            self._forget_old_jobs()

    async def _copy(self, job: SnapshotJob, sources: SnapshotSources) -> dict[str, Any]:
        run, engine = sources.run_blocking, sources.engine
        target = job.staging / PARTITIONS_DIR
        hold = engine.hold_index_log_trims()
        await run(hold.__enter__)
        try:
            job.phase = "index"
            index_files = await run(engine.link_index_files, target)
            job.phase = "partitions"
            pids = engine.local_partitions()
            job.partitions_total = len(pids)
            partitions: dict[str, dict[str, Any]] = {}
            for pid in pids:
                summary = await run(_copy_partition, engine, pid, target, job)
                if summary is not None:
                    partitions[str(pid)] = summary
                    job.documents += summary["documents"]
                job.partitions_done += 1
        finally:
            await run(hold.__exit__, None, None, None)
        job.phase = "node files"
        await run(_copy_node_files, sources.data_dir, job)
        job.phase = "checksums"
        return await run(_finish, job, sources, partitions, index_files)

    def _forget_old_jobs(self) -> None:
        finished = [name for name, job in self._jobs.items() if job.state != "running"]
        for name in finished[:-KEPT_JOBS]:
            del self._jobs[name]


# ------------------------------------------------------------------ blocking steps (storage executor)
def _reserve(job: SnapshotJob, sources: SnapshotSources) -> None:
    """Refuse an existing target or too little free space; make the staging directory."""
    root = job.path.parent
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*" + PARTIAL_SUFFIX):  # left by a node killed mid-snapshot: one job at a time
        shutil.rmtree(stale, ignore_errors=True)
    if job.path.exists():
        raise SnapshotExists(f"snapshot {job.name!r} already exists at {job.path}; choose another name or delete it",
                             field="name")
    needed = int(_bytes_to_copy(sources) * SPACE_MARGIN)
    free = shutil.disk_usage(root).free
    if free < needed:
        raise InsufficientStorage(f"{root} has {free} bytes free; the snapshot needs about {needed}")
    (job.staging / PARTITIONS_DIR).mkdir(parents=True)


def _bytes_to_copy(sources: SnapshotSources) -> int:
    """What the databases take now (the index is hard-linked, not copied)."""
    total = 0
    for path in [*(sources.data_dir / PARTITIONS_DIR).glob("p*/store.sqlite*"), *sources.data_dir.glob(HINTS_FILE + "*")]:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


def _copy_partition(engine: StorageEngine, pid: int, target: Path, job: SnapshotJob) -> dict[str, Any] | None:
    """One partition's database, copied and summarised; None if it was dropped meanwhile."""
    source = engine.database_of(pid)
    if source is None:
        return None
    copy = target / source.parent.name / source.name
    copy.parent.mkdir()
    try:
        backup_database(source, copy, on_step=job.add_bytes)
    except Exception:
        if engine.database_of(pid) is None:  # handed off and dropped while it was copied
            shutil.rmtree(copy.parent, ignore_errors=True)
            return None
        raise
    summary = summarize_database(copy)
    return {
        "documents": summary.documents, "tombstones": summary.tombstones, "chunks": summary.chunks,
        "max_version": summary.max_version, "root": root_hash(summary.bucket_hashes),
    }


def _copy_node_files(data_dir: Path, job: SnapshotJob) -> None:
    for name in COPIED_FILES:  # each replaced by rename when written: a copy is one version of it
        source = data_dir / name
        if source.exists():
            shutil.copy2(source, job.staging / name)
    hints = data_dir / HINTS_FILE
    if hints.exists():
        backup_database(hints, job.staging / HINTS_FILE, on_step=job.add_bytes)


def _finish(job: SnapshotJob, sources: SnapshotSources, partitions: dict[str, dict[str, Any]], index_files: list[Path]) -> dict[str, Any]:
    """Checksums, then manifest.json, then the staging directory renamed to the snapshot's name."""
    files = sorted(path for path in job.staging.rglob("*") if path.is_file())
    totals = {key: sum(p[key] for p in partitions.values()) for key in ("documents", "tombstones", "chunks")}
    manifest = {
        "kind": KIND, "format": FORMAT, "name": job.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(job.started_at)), "created_at_unix": job.started_at,
        "node": {"id": sources.node_id, "name": sources.node_name, "generation": sources.generation},
        "cluster": dataclasses.asdict(sources.settings),
        "partitions": partitions,
        "totals": {**totals, "partitions": len(partitions), "bytes": sum(path.stat().st_size for path in files)},
        "index": "copied" if any(path.suffix == ".usearch" for path in index_files) else "rebuilt on restore",
        "files": file_entries(job.staging, files),
        "seconds": round(time.time() - job.started_at, 3),
    }
    write_manifest(job.staging, manifest)
    job.staging.rename(job.path)
    return manifest


def _finished_on_disk(path: Path) -> dict[str, Any] | None:
    try:
        manifest = read_manifest(path)
    except SnapshotInvalid:
        return None
    totals = manifest.get("totals", {})
    return {
        "name": manifest["name"], "path": str(path), "state": "done", "phase": "done",
        "partitions_done": totals.get("partitions", 0), "partitions_total": totals.get("partitions", 0),
        "bytes": totals.get("bytes", 0), "documents": totals.get("documents", 0),
        "started_at": manifest.get("created_at_unix"), "finished_at": None, "seconds": manifest.get("seconds"), "error": None,
    }
