"""Optional auto-removal (cluster.auto_remove_after_s) with real processes.

Off by default (the rebalancing tests show a dead or flapping node keeps its
partitions); when set, a member dead for longer than the timeout is removed
from the ring by one surviving node, and its partitions are re-replicated.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from meshrag.cli import render_status
from meshrag.localcluster import LocalCluster
from tests.cluster.conftest import vector_documents

DOCS = vector_documents(120, prefix="auto")
IDS = [doc["id"] for doc in DOCS]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("auto-remove"), partitions=8, replicas=2,
                         env={"MESHRAG_CLUSTER_AUTO_REMOVE_AFTER_S": "4", "MESHRAG_CLUSTER_REPAIR_INTERVAL_S": "5"})
    try:
        local.start(3)
        yield local
    finally:
        local.stop()


@pytest.mark.timeout(300)
def test_a_node_dead_past_the_timeout_is_removed_and_its_copies_restored(cluster: LocalCluster) -> None:
    n1, _, n3 = cluster.nodes
    cluster.client(n1).upsert(DOCS, consistency="all")
    assert set(cluster.copies(IDS).values()) == {2}
    n3.kill9()
    cluster.wait_for(lambda: _status_of(cluster, "n3") == "removed", 90, "n3 removed from the ring by itself")
    survivors = cluster.running()
    cluster.wait_for(lambda: set(cluster.copies(IDS, survivors).values()) == {2}, 60, "2 copies on the survivors")
    table = render_status(cluster.client(n1).cluster())
    assert "RING NODE" in table and "removed" in table and "Under-replicated partitions: 0" in table


def _status_of(cluster: LocalCluster, name: str) -> str | None:
    nodes = cluster.ring(cluster.nodes[0]).get("nodes", [])
    return next((n["status"] for n in nodes if n["name"] == name), None)
