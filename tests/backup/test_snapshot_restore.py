"""backup/: a node's snapshot job over a real engine, and the offline restore of it: the same
documents, versions, tombstones and digests come back; the identity is kept with a higher
generation; holdings are not carried over; damaged snapshots and occupied directories are refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from meshrag.backup.manifest import SnapshotInvalid, read_manifest
from meshrag.backup.restore import RestoreRefused, restore
from meshrag.backup.snapshot import Snapshots, SnapshotSources
from meshrag.cluster.ringstate import ClusterSettings
from meshrag.datadir import DataDirLock, DataDirLocked, RESTORE_MARKER, lock_for_node
from meshrag.errors import ConfigError
from meshrag.store.engine import StorageEngine
from tests.store.conftest import DIM, make_doc

SETTINGS = ClusterSettings(partitions=4, replicas=2, model="test-model", dim=DIM, analysis="a")


def _data_dir(root: Path) -> tuple[Path, StorageEngine]:
    data = root / "data"
    engine = StorageEngine(data / "partitions", partitions=4, dim=DIM)
    engine.open()
    engine.upsert([make_doc(f"d{i}", version=5) for i in range(120)])
    for i in range(0, 120, 10):
        engine.delete(f"d{i}", 9)
    engine.save_indexes()
    (data / "holdings.json").write_text("[0, 1, 2, 3]\n")
    (data / "cluster.json").write_text(json.dumps({"settings": dataclasses.asdict(SETTINGS), "ring": []}))
    (data / "node.json").write_text(json.dumps({"node_id": "abc123", "name": "n2", "generation": 3}))
    return data, engine


def _take(engine: StorageEngine, data: Path, name: str = "snap") -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        pool = ThreadPoolExecutor(2)
        loop = asyncio.get_running_loop()
        sources = SnapshotSources(engine, data, "abc123", "n2", 3, SETTINGS, lambda fn, *a: loop.run_in_executor(pool, fn, *a))
        snapshots = Snapshots(lambda: sources)
        job = await snapshots.start(name)
        for _ in range(500):
            if job.state != "running":
                break
            await asyncio.sleep(0.02)
        pool.shutdown()
        return job.as_dict()

    return asyncio.run(run())


def test_snapshot_then_restore_brings_back_every_document_version_and_tombstone(tmp_path: Path) -> None:
    data, engine = _data_dir(tmp_path)
    job = _take(engine, data)
    assert job["state"] == "done", job
    assert job["partitions_done"] == job["partitions_total"] == 4 and job["documents"] == 108
    snapshot = data / "snapshots" / "snap"
    manifest = read_manifest(snapshot)
    assert manifest["node"] == {"id": "abc123", "name": "n2", "generation": 3}
    assert manifest["index"] == "copied" and manifest["totals"]["tombstones"] == 12
    assert not (snapshot / "holdings.json").exists() and not (snapshot / "node.json").exists()

    target = tmp_path / "replacement"
    result = restore(snapshot, target, now=lambda: 1_700_000_000)
    assert (result.node_id, result.generation, result.documents) == ("abc123", 1_700_000_000, 108)
    assert json.loads((target / "node.json").read_text())["node_id"] == "abc123"
    assert not (target / "holdings.json").exists()  # repair must find each partition in sync before it answers
    assert not (target / RESTORE_MARKER).exists()
    copy = StorageEngine(target / "partitions", partitions=4, dim=DIM)
    copy.open()
    for pid in engine.local_partitions():
        assert copy.digest_entries(pid) == engine.digest_entries(pid)
        recovery = copy.stats()["partitions"][pid]["recovery"]
        assert recovery == "loaded" or recovery.startswith("caught_up")
    assert copy.get("d10").deleted and copy.get("d10").version == 9
    copy.close()
    engine.close()


def test_a_restore_keeps_a_generation_above_the_snapshots(tmp_path: Path) -> None:
    data, engine = _data_dir(tmp_path)
    _take(engine, data)
    engine.close()
    result = restore(data / "snapshots" / "snap", tmp_path / "t", now=lambda: 2)  # a clock that reads nearly zero
    assert result.generation == 4


def test_refusals_leave_the_target_untouched(tmp_path: Path) -> None:
    data, engine = _data_dir(tmp_path)
    _take(engine, data, "snap")
    engine.close()
    snapshot = data / "snapshots" / "snap"
    # A target another node's process holds.
    busy = tmp_path / "busy"
    held = lock_for_node(busy, "n9")
    try:
        with pytest.raises(DataDirLocked, match="in use by node n9"):
            restore(snapshot, busy)
    finally:
        held.release()
    # A directory of another node, or one holding data: refused unless forced.
    other = tmp_path / "other"
    other.mkdir()
    (other / "node.json").write_text(json.dumps({"node_id": "zzz", "name": "n5", "generation": 1}))
    with pytest.raises(RestoreRefused, match="belongs to node zzz"):
        restore(snapshot, other)
    assert restore(snapshot, other, force=True).node_id == "abc123"
    with pytest.raises(RestoreRefused, match="holds partition data"):
        restore(snapshot, data)
    # A damaged snapshot: refused before anything in place changes.
    victim = next(snapshot.glob("partitions/p*/store.sqlite"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    fresh = tmp_path / "fresh"
    with pytest.raises(SnapshotInvalid, match="does not match the manifest"):
        restore(snapshot, fresh)
    assert sorted(p.name for p in fresh.iterdir()) == ["node.lock"]


def test_a_node_refuses_a_half_restored_directory(tmp_path: Path) -> None:
    (tmp_path / RESTORE_MARKER).write_text("x")
    with pytest.raises(ConfigError, match="interrupted restore"):
        lock_for_node(tmp_path, "n1")
    with DataDirLock(tmp_path, "probe"):  # and the failed start did not keep the lock
        pass
