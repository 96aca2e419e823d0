"""The /_mesh/ body limit and undeliverable hints, with real processes (3 nodes, P=4, N=3).

* Replication carries each document's text twice (document and chunk) plus its
  vectors, so a public body within api.max_body_bytes can exceed the node-to-node
  limit: the coordinator splits it into messages that fit cluster.max_message_bytes.
* A hint its replica refuses for good (here: n3 restarted with a smaller message
  limit answers 413) is dropped and counted, and the hints queued behind it are
  still delivered: before, it blocked n3's queue forever.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any, Iterator

import numpy as np
import pytest

from meshrag.localcluster import LocalCluster
from tests.cluster.conftest import running

MIB = 1024 * 1024
TEXT_CHARS = 40_000


def _documents(prefix: str, count: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(count):
        vector = rng.standard_normal(384).astype(np.float32)
        words = " ".join(f"w{j}" for j in rng.integers(0, 5000, TEXT_CHARS // 6))
        docs.append({"id": f"{prefix}{i}", "text": words[:TEXT_CHARS], "vector": (vector / np.linalg.norm(vector)).tolist()})
    return docs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {"MESHRAG_API_MAX_BODY_BYTES": str(2 * MIB), "MESHRAG_API_MAX_TEXT_CHARS": "50000",
           "MESHRAG_CLUSTER_MAX_MESSAGE_BYTES": str(2 * MIB)}
    yield from running(LocalCluster(tmp_path_factory.mktemp("limits"), partitions=4, replicas=3, env=env), 3)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_write_larger_than_one_mesh_message_reaches_every_replica_in_several(cluster: LocalCluster) -> None:
    docs = _documents("big", 36, seed=1)
    assert len(json.dumps({"documents": docs})) < 2 * MIB, "the public body is within its limit"
    n1 = cluster.nodes[0]
    results = cluster.client(n1).upsert(docs, consistency="all")["results"]
    assert [r["status"] for r in results] == ["created"] * len(docs)
    ids = {d["id"] for d in docs}
    assert all(ids <= cluster.stored_ids(node) for node in cluster.nodes)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_extreme_values_the_api_accepts_reach_every_replica_exactly(cluster: LocalCluster) -> None:
    """What one node accepts, every replica stores and serves unchanged: the int64 bounds,
    the largest doubles, astral and combining characters, metadata nested to its limit."""
    deep: Any = "bottom"
    for level in range(7):  # metadata.deep + 7 levels: the deepest metadata accepts
        deep = {f"l{level}": deep}
    metadata = {"min": -(2**63), "max": 2**63 - 1, "big": 1.7976931348623157e308, "tiny": 5e-324,
                "text": "naïve café 日本語 \U0001d11e e\u0301", "list": [0, -1, True, None, "x"], "deep": deep}
    doc = {"id": "extrêmes/\U0001f600", "text": "Ünïcödé text \U0001d11e with e\u0301 combining", "metadata": metadata,
           "vector": _documents("v", 1, seed=4)[0]["vector"]}
    n1 = cluster.nodes[0]
    [result] = cluster.client(n1).upsert([doc], consistency="all")["results"]
    assert result["status"] == "created"
    for node in cluster.nodes:
        stored = cluster.client(node).get_document(str(doc["id"]), local=True)
        assert (stored["id"], stored["text"], stored["metadata"]) == (doc["id"], doc["text"], metadata), node.name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_undeliverable_hint_is_dropped_and_the_queue_behind_it_delivered(cluster: LocalCluster) -> None:
    n1, _, n3 = cluster.nodes
    n3.kill9()
    client = cluster.client(n1)
    client.upsert(_documents("hinted-big", 16, seed=2), consistency="quorum")  # one hint of ~1.3 MB
    client.upsert([{"id": "hinted-small", "text": "a small write queued behind the big one",
                    "vector": _documents("v", 1, seed=3)[0]["vector"]}], consistency="quorum")
    cluster.wait_for(lambda: _pending_hints(cluster, "n3") == 2, 30, "two hints for n3 on n1")
    # n3 comes back accepting only 1 MiB per message: the big hint can never be delivered to it.
    n3.env.update(MESHRAG_CLUSTER_MAX_MESSAGE_BYTES=str(MIB))
    n3.start().wait_ready()
    cluster.wait_for(lambda: _pending_hints(cluster, "n3") == 0, 60, "n1's queue for n3 drained")
    assert _dropped(cluster, "undeliverable") >= 16
    assert "hinted-small" in cluster.stored_ids(n3)


def _pending_hints(cluster: LocalCluster, target: str) -> int:
    pending = cluster.client(cluster.nodes[0], timeout=10).cluster()["ring"].get("pending_hints", {})
    return int(pending.get(target, {}).get("hints", 0))


def _dropped(cluster: LocalCluster, reason: str) -> float:
    text = urllib.request.urlopen(cluster.nodes[0].url + "/metrics", timeout=10).read().decode()
    name = f'meshrag_hints_dropped_documents_total{{reason="{reason}"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
