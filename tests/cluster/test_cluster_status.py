"""`meshrag verify` and `meshrag status` against 3 real nodes: all in sync after an ingest, a replica
made stale on disk is reported diverged (and under-replicated), and repair brings it back.

Repair passes run only at start and on events here (repair_interval_s is long), so the stale copy
stays stale until the test restarts its node: what verify sees is what is on disk, not a race.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from meshrag.localcluster import LocalCluster
from meshrag.ring import partition_for
from meshrag.store.schema import register_digest_functions
from tests.cluster.conftest import running, vector_documents

pytestmark = pytest.mark.slow

P, DOCS = 8, 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("status"), partitions=P, replicas=3,
                         env={"MESHRAG_CLUSTER_REPAIR_INTERVAL_S": "3600"})
    for started in running(local, 3):
        started.client().upsert(vector_documents(DOCS), consistency="all")
        yield started


def meshrag(cluster: LocalCluster, *args: str, node: int = 1) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "meshrag.cli", *args, "--node", cluster.nodes[node].url],
                          capture_output=True, text=True, timeout=60, env=env)


def verify(cluster: LocalCluster) -> tuple[int, dict[str, Any]]:
    result = meshrag(cluster, "verify", "--json")
    return result.returncode, json.loads(result.stdout)


def make_stale(cluster: LocalCluster, node_name: str, doc_id: str) -> int:
    """Lower the document's version in the node's SQLite file, as a replica that missed an update
    would hold it; the digest triggers keep the partition's buckets in step (as the node's own writes do)."""
    pid = partition_for(doc_id, P)
    path = Path(cluster.node(node_name).data_dir) / "partitions" / f"p{pid:04d}" / "store.sqlite"
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        register_digest_functions(conn)
        changed = conn.execute("UPDATE documents SET version = version - 1 WHERE doc_id = ?", (doc_id,)).rowcount
    finally:
        conn.close()
    assert changed == 1
    return pid


def test_verify_finds_every_partition_in_sync_after_an_ingest(cluster: LocalCluster) -> None:
    status, report = verify(cluster)
    assert status == 0, report["summary"]
    assert report["summary"]["in_sync"] == P and [p["partition"] for p in report["partitions"]] == list(range(P))
    for partition in report["partitions"]:
        assert len(partition["replicas"]) == 3 and len({r["digest"] for r in partition["replicas"]}) == 1
    # Every replica counted every document: 3 copies of each.
    assert sum(r["documents"] for p in report["partitions"] for r in p["replicas"]) == 3 * DOCS
    table = meshrag(cluster, "verify")
    assert table.returncode == 0 and f"{P} partitions: {P} in sync, 0 repairing, 0 diverged, 0 unreachable" in table.stdout


def test_status_from_any_node_shows_all_members_and_an_even_ring(cluster: LocalCluster) -> None:
    for node in (0, 2):
        doc = json.loads(meshrag(cluster, "status", "--json", node=node).stdout)
        assert sorted((m["name"], m["state"]) for m in doc["members"]) == [("n1", "alive"), ("n2", "alive"), ("n3", "alive")]
        assert [p["reachable"] for p in doc["peers"]] == [True] * 3 and all(p["same_ring"] for p in doc["peers"])
        # 3 nodes, 3 replicas: every node holds every partition, exactly its share.
        assert [(n["node"], n["copies"], n["target"], n["ratio"]) for n in doc["balance"]["nodes"]] == [
            ("n1", P, P, 1.0), ("n2", P, P, 1.0), ("n3", P, P, 1.0)]
        assert doc["replication"]["under_replicated"] == [] and doc["hints"] == {}
        assert {t["node"] for t in doc["transfers"]} == {"n1", "n2", "n3"}
    table = meshrag(cluster, "status", "--no-color").stdout
    assert all(name in table for name in ("n1", "n2", "n3")) and "RATIO" in table and "\x1b[" not in table


def test_a_stale_replica_is_diverged_until_repair_brings_it_back(cluster: LocalCluster) -> None:
    doc_id = vector_documents(DOCS)[0]["id"]
    pid = make_stale(cluster, "n3", doc_id)
    status, report = verify(cluster)
    assert status == 1, report["summary"]
    states = {p["partition"]: p["state"] for p in report["partitions"]}
    assert states.pop(pid) == "diverged" and set(states.values()) == {"in sync"}
    replicas = {r["node"]: r["digest"] for r in report["partitions"][pid]["replicas"]}
    assert replicas["n1"] == replicas["n2"] != replicas["n3"]
    doc = json.loads(meshrag(cluster, "status", "--json").stdout)
    [under] = doc["replication"]["under_replicated"]
    assert under["partition"] == pid and under["in_sync"] == 2
    # A restart's repair pass pulls the newer version back onto n3.
    cluster.restart(cluster.node("n3"))
    cluster.wait_for(lambda: verify(cluster)[0] == 0, 30, "every partition in sync again after n3's repair pass")
