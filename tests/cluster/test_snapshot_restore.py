"""`meshrag snapshot` and `meshrag restore` with real processes (3 nodes, P=8, N=2).

A writer keeps ingesting (documents bring their vectors) while n2 is snapshotted
through the CLI; writes and deletes go on after it; n2 is killed with SIGKILL, its
data directory wiped, the snapshot restored into it and n2 started again. After
repair, every partition's replicas hold the same digest, every acknowledged
document is readable, and no document deleted after the snapshot came back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from meshrag.client import MeshClientError
from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode
from tests.cluster.conftest import running, vector_documents

P = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from running(LocalCluster(tmp_path_factory.mktemp("snapshot"), partitions=P, replicas=2), 3)


class Writer:
    """Upserts batches through n1 at quorum until stopped; remembers what was acknowledged."""

    def __init__(self, cluster: LocalCluster) -> None:
        self._client = cluster.client(cluster.nodes[0], timeout=30)
        self._docs = vector_documents(4000, prefix="w")
        self.acked: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for start in range(0, len(self._docs), 10):
            if self._stop.is_set():
                return
            batch = self._docs[start:start + 10]
            try:
                self._client.upsert(batch, consistency="quorum")
            except MeshClientError:
                continue  # not acknowledged: not expected back
            self.acked.extend(doc["id"] for doc in batch)

    def __enter__(self) -> "Writer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _meshrag(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshrag.cli", *args], capture_output=True, text=True, timeout=120)


def _verified(node: LocalNode) -> bool:
    """`meshrag verify --json` through ``node``: every partition's replicas compared by digest, all in sync."""
    verify = _meshrag("verify", "--node", node.url, "--json")
    if verify.returncode != 0:
        return False
    report = json.loads(verify.stdout)
    return report["summary"]["in_sync"] == P and all(row["state"] == "in sync" for row in report["partitions"])


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_node_restored_from_a_snapshot_taken_under_load_converges(cluster: LocalCluster, tmp_path: Path) -> None:
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    client = cluster.client(n1, timeout=30)
    with Writer(cluster) as writer:
        cluster.wait_for(lambda: len(writer.acked) >= 300, 60, "300 documents acknowledged")
        taken = _meshrag("snapshot", "--node", n2.url, "--out", "s1")
        assert taken.returncode == 0, taken.stderr
        assert "partitions" in taken.stderr and "snapshot s1:" in taken.stdout  # progress, then the summary
        at_snapshot = len(writer.acked)
        cluster.wait_for(lambda: len(writer.acked) >= at_snapshot + 200, 60, "200 more documents after the snapshot")
    deleted = writer.acked[:40]  # in the snapshot as live documents: must not come back
    for doc_id in deleted:
        client.delete_document(doc_id, consistency="quorum")

    saved = tmp_path / "s1"  # off the node's disk, as an operator would keep it
    shutil.copytree(n2.data_dir / "snapshots" / "s1", saved)
    n2.kill9()
    n2.stop()  # closes its log
    shutil.rmtree(n2.data_dir)
    started = time.monotonic()
    restored = _meshrag("restore", str(saved), "--data-dir", str(n2.data_dir))
    assert restored.returncode == 0, restored.stderr
    assert "verify+copy" in restored.stderr and f"restored node {cluster.node_id(n2)}" in restored.stdout
    restore_s = time.monotonic() - started

    n2.start().wait_ready()
    cluster.wait_for(lambda: _verified(n1), 60, "meshrag verify: every partition in sync", poll_s=1.0)
    print(f"snapshot of n2 under load, restore {restore_s:.1f} s: {len(writer.acked)} acknowledged, {len(deleted)} deleted after")

    n2_client = cluster.client(n2, timeout=30)
    for doc_id in writer.acked[40:]:
        assert n2_client.get_document(doc_id, consistency="all")["id"] == doc_id
    for doc_id in deleted:
        with pytest.raises(MeshClientError) as gone:
            n2_client.get_document(doc_id, consistency="all")
        assert gone.value.status == 404
    assert not set(deleted) & cluster.stored_ids(n2)
