"""Versions under clock skew, with real processes: 3 nodes (P=4, N=3, every node a replica
of everything), n2's clock 30 s behind and n3's 30 s ahead (node.clock_offset_s).

* A write through the node that is behind still wins over the version it read
  (the coordinator observes what it reads before stamping), and is reported
  updated only because the replicas kept it.
* A node far beyond cluster.max_clock_drift_s cannot drag the others' versions
  forward: its writes are refused by the other replicas, named in the error
  and counted in their metrics.
* A node ahead does not purge a tombstone before the grace period has passed
  on everybody's clock (purge waits grace + the drift bound).
"""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Iterator

import numpy as np
import pytest

from meshrag.client import MeshClientError
from meshrag.clock import hlc_to_wall
from meshrag.localcluster import LocalCluster
from tests.cluster.conftest import running

SKEW_S = 30.0
GRACE_S = 4.0
DRIFT_S = 75.0  # > the 60 s between n2 and n3, so the three stay within the bound


def _vector(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


def _doc(doc_id: str, text: str, seed: int) -> dict[str, object]:
    return {"id": doc_id, "text": text, "vector": _vector(seed)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {
        "MESHRAG_CLUSTER_MAX_CLOCK_DRIFT_S": str(DRIFT_S),
        "MESHRAG_STORAGE_TOMBSTONE_GRACE_S": str(GRACE_S),
        "MESHRAG_CLUSTER_MAX_HINT_WINDOW_S": "1",
    }
    skewed = {"n2": {"MESHRAG_NODE_CLOCK_OFFSET_S": str(-SKEW_S)}, "n3": {"MESHRAG_NODE_CLOCK_OFFSET_S": str(SKEW_S)}}
    yield from running(LocalCluster(tmp_path_factory.mktemp("skew"), partitions=4, replicas=3, env=env), 3, node_env=skewed)


def _texts(cluster: LocalCluster, doc_id: str) -> set[str]:
    """The text each node's own copy holds (?local=true: no replica is consulted)."""
    return {cluster.client(node).get_document(doc_id, local=True)["text"] for node in cluster.running()}


def _wait_for_copies(cluster: LocalCluster, doc_id: str, text: str) -> None:
    cluster.wait_for(lambda: _texts_or_none(cluster, doc_id) == {text}, 20, f"{doc_id} = {text!r} on every node")


def _texts_or_none(cluster: LocalCluster, doc_id: str) -> set[str] | None:
    try:
        return _texts(cluster, doc_id)
    except MeshClientError:
        return None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_write_through_a_node_30s_behind_wins_over_the_version_it_read(cluster: LocalCluster) -> None:
    n1, n2, n3 = cluster.nodes
    ahead = cluster.client(n3).upsert([_doc("skewed", "first text, through the node ahead", 1)], consistency="all")
    first = ahead["results"][0]
    assert first["status"] == "created"
    assert hlc_to_wall(first["version"]) == pytest.approx(time.time() + SKEW_S, abs=5)

    behind = cluster.client(n2).upsert([_doc("skewed", "second text, through the node behind", 2)], consistency="all")
    second = behind["results"][0]
    assert second["status"] == "updated", second
    assert second["version"] > first["version"], "stamped after the version the coordinator read"
    _wait_for_copies(cluster, "skewed", "second text, through the node behind")

    third = cluster.client(n1).upsert([_doc("skewed", "third text, through the accurate node", 3)])["results"][0]
    assert third["status"] == "updated" and third["version"] > second["version"]
    _wait_for_copies(cluster, "skewed", "third text, through the accurate node")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_delete_through_the_node_behind_is_not_lost_under_an_older_stamp(cluster: LocalCluster) -> None:
    n1, n2, n3 = cluster.nodes
    cluster.client(n3).upsert([_doc("to-delete", "stamped by the node ahead", 4)], consistency="all")
    deleted = cluster.client(n2).delete_document("to-delete", consistency="all")
    assert deleted["status"] == "deleted", deleted
    for node in cluster.running():
        with pytest.raises(MeshClientError) as missing:
            cluster.client(node).get_document("to-delete", local=True)
        assert missing.value.status == 404, node.name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_node_ahead_keeps_a_tombstone_until_grace_has_passed_on_every_clock(cluster: LocalCluster) -> None:
    n1, _, n3 = cluster.nodes
    cluster.client(n1).upsert([_doc("tomb", "deleted at once", 5)], consistency="all")
    cluster.client(n1).delete_document("tomb", consistency="all")
    deleted_at = time.monotonic()
    # n3's clock is 30 s ahead: purging by its own clock alone, grace would have
    # passed at once. It must wait for grace + the drift bound on its clock.
    while time.monotonic() - deleted_at < GRACE_S + 1.5:
        assert "tomb" in cluster.stored_ids(n3, deleted=True), "n3 purged a tombstone others may still need"
        time.sleep(0.5)


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_node_beyond_the_drift_bound_cannot_drag_versions_forward(cluster: LocalCluster) -> None:
    n1, n2, n3 = cluster.nodes
    n3.stop()
    n3.env["MESHRAG_NODE_CLOCK_OFFSET_S"] = "3600"  # an hour ahead, far beyond the 75 s bound
    n3.start().wait_ready()
    cluster.wait_for(lambda: cluster.member_state(n1, "n3") == "alive", 30, "n3 back in n1's view")

    with pytest.raises(MeshClientError) as failure:
        cluster.client(n3).upsert([_doc("future", "stamped an hour ahead", 6)], consistency="quorum")
    assert failure.value.code == "write_outcome_unknown"
    assert re.search(r"n[12] refused: .*ahead of this node's clock", failure.value.message), failure.value.message

    now = cluster.client(n1).upsert([_doc("present", "stamped by an accurate clock", 7)], consistency="quorum")
    assert hlc_to_wall(now["results"][0]["version"]) == pytest.approx(time.time(), abs=SKEW_S + 5), \
        "n1's versions were dragged forward by n3's clock"
    assert "future" not in cluster.stored_ids(n1) | cluster.stored_ids(n2)
    metrics = urllib.request.urlopen(n1.url + "/metrics", timeout=10).read().decode()
    assert _counter(metrics, 'meshrag_clock_drift_rejections_total{source="write"}') >= 1


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")

