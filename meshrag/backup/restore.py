"""`meshrag restore SNAPSHOT_DIR --data-dir DIR`: a snapshot back into a stopped node's data directory.

Order, so that a failure at any step leaves the directory as it was or
marked unusable, never silently half-restored:

1. read the manifest; take the data directory's lock (datadir.py), so no node
   runs on it and none starts while this writes;
2. refuse what would lose or mix data unless ``force``: a directory of another
   node (node.json with another id), of a cluster with other settings
   (cluster.json), or holding partitions already;
3. copy every file the manifest lists into a staging directory inside the data
   directory, checking each one's size and sha256 as it is copied: nothing in
   place is touched until all of them matched;
4. mark the directory (restore.incomplete, which a node refuses to start on),
   remove what the snapshot replaces, move the staged files in, write node.json,
   remove the mark.

Identity: the node id is the snapshot's (the restored node *is* the node the
snapshot was taken of: its ring entry, its partitions). The generation is set
to the current Unix time in seconds, at least one above the snapshot's: the
node's previous life may have restarted after the snapshot, and a generation
at or below the one its peers last saw would make them ignore the restored
node's gossip (gossip/state.py compares (generation, incarnation)). Each later
start adds one, as ever.

Not restored: holdings.json. The restored node answers searches for a partition
only after repair found it in sync with another owner (cluster/holdings.py), so
it never serves the snapshot's state as if it were current. Versions and
tombstones come back exactly as stored, so repair moves newer versions in both
directions and a delete made after the snapshot wins over the restored copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from meshrag.backup.manifest import COPIED_FILES, HINTS_FILE, PARTITIONS_DIR, SnapshotInvalid, read_manifest, safe_relative
from meshrag.cluster.holdings import HOLDINGS_FILE
from meshrag.cluster.ringstate import CLUSTER_FILE, ClusterSettings
from meshrag.datadir import RESTORE_MARKER, DataDirLock
from meshrag.errors import MeshragError
from meshrag.identity import IDENTITY_FILE

STAGING_DIR = ".restore-staging"
COPY_BLOCK = 1 << 20
Progress = Callable[[str, int, int, int, int], None]  # phase, files done, files total, bytes done, bytes total


class RestoreRefused(MeshragError):
    """The target is another node's or another cluster's, or holds data (without --force)."""


@dataclass(frozen=True)
class RestoreResult:
    node_id: str
    generation: int
    files: int
    bytes: int
    partitions: int
    documents: int
    seconds: float


def restore(snapshot_dir: Path, data_dir: Path, *, force: bool = False, progress: Progress | None = None,
            now: Callable[[], float] = time.time) -> RestoreResult:
    started = time.monotonic()
    snapshot_dir, data_dir = Path(snapshot_dir), Path(data_dir)
    manifest = read_manifest(snapshot_dir)
    with DataDirLock(data_dir, "meshrag restore"):
        if not force:
            refusal = _refusal(manifest, data_dir)
            if refusal:
                raise RestoreRefused(refusal + "; pass --force to replace it", field="data_dir")
        staging = data_dir / STAGING_DIR
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _copy_verified(manifest, snapshot_dir, staging, progress)
            generation = _put_in_place(manifest, staging, data_dir, now)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    files = manifest["files"]
    return RestoreResult(manifest["node"]["id"], generation, len(files), sum(f["bytes"] for f in files.values()),
                         len(manifest["partitions"]), int(manifest["totals"]["documents"]), round(time.monotonic() - started, 3))


def _refusal(manifest: dict[str, Any], data_dir: Path) -> str | None:
    """Why restoring into ``data_dir`` could lose or mix data, or None."""
    identity = _json(data_dir / IDENTITY_FILE)
    if identity is not None and identity.get("node_id") != manifest["node"]["id"]:
        return (f"{data_dir} belongs to node {identity.get('node_id')}, the snapshot to node {manifest['node']['id']} "
                f"({manifest['node']['name']}); a restore gives the directory the snapshot's identity")
    cluster = _json(data_dir / CLUSTER_FILE)
    settings = (cluster or {}).get("settings")
    if settings is not None and ClusterSettings.from_dict(settings) != ClusterSettings.from_dict(manifest["cluster"]):
        return f"{data_dir} is of a cluster with settings {settings}, the snapshot of one with {manifest['cluster']}"
    partitions = data_dir / PARTITIONS_DIR
    if partitions.exists() and any(partitions.glob("p*/*.sqlite")):
        return f"{data_dir} holds partition data already (stop its node and empty it, or restore elsewhere)"
    return None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RestoreRefused(f"{path} is unreadable ({exc}); move it away or pass --force", field="data_dir") from None
    return value if isinstance(value, dict) else None


def _copy_verified(manifest: dict[str, Any], snapshot_dir: Path, staging: Path, progress: Progress | None) -> None:
    """Every listed file copied into ``staging`` with its size and sha256 checked on the way."""
    files: dict[str, dict[str, Any]] = manifest["files"]
    total = sum(int(entry["bytes"]) for entry in files.values())
    done_bytes = 0
    for done_files, (relpath, entry) in enumerate(sorted(files.items()), start=1):
        relative = safe_relative(relpath)
        source, target = snapshot_dir / relative, staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        size, digest = _copy_hashing(source, target)
        if size != entry["bytes"] or digest != entry["sha256"]:
            raise SnapshotInvalid(f"{source} does not match the manifest ({size} bytes, sha256 {digest[:12]}..., "
                                  f"expected {entry['bytes']} bytes, {entry['sha256'][:12]}...): the snapshot is damaged")
        done_bytes += size
        if progress is not None:
            progress("verify+copy", done_files, len(files), done_bytes, total)


def _copy_hashing(source: Path, target: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    try:
        with source.open("rb") as reader, target.open("wb") as writer:
            while block := reader.read(COPY_BLOCK):
                digest.update(block)
                writer.write(block)
                size += len(block)
            writer.flush()
            os.fsync(writer.fileno())
    except FileNotFoundError:
        raise SnapshotInvalid(f"{source} is listed in the manifest but missing: the snapshot is incomplete") from None
    return size, digest.hexdigest()


def _put_in_place(manifest: dict[str, Any], staging: Path, data_dir: Path, now: Callable[[], float]) -> int:
    """Replace the data directory's state by the staged snapshot; returns the generation written."""
    marker = data_dir / RESTORE_MARKER
    marker.write_text(f"restore of {manifest['name']} started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now()))}\n")
    shutil.rmtree(data_dir / PARTITIONS_DIR, ignore_errors=True)
    # Every SQLite file with its WAL: a stale -wal beside a restored database would be replayed into it.
    for name in (HOLDINGS_FILE, *COPIED_FILES, HINTS_FILE, HINTS_FILE + "-wal", HINTS_FILE + "-shm"):
        (data_dir / name).unlink(missing_ok=True)
    for entry in staging.iterdir():
        os.replace(entry, data_dir / entry.name)
    generation = max(int(manifest["node"]["generation"]) + 1, int(now()))
    identity = {"node_id": manifest["node"]["id"], "name": manifest["node"]["name"], "generation": generation}
    tmp = data_dir / (IDENTITY_FILE + ".tmp")
    tmp.write_text(json.dumps(identity))
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, data_dir / IDENTITY_FILE)
    marker.unlink()
    return generation
