"""Replicated storage with real processes: 3 nodes, N=3, Cranfield documents.

The tests share one cluster and run in file order: the corpus ingested
through a kill -9 is then the background for the session and delete tests.
Every check reads each node's own SQLite files (LocalCluster.stored_ids), so
"on 3 replicas" means three stores on disk hold the document.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from meshrag.client import MeshClient, MeshClientError
from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode
from tests.cluster.conftest import cranfield_documents

RESTORE_LIMIT_S = 60.0
# Documents ingested through the kill: 4 batches of 32, so the kill (at the second) lands with a batch
# in flight and half the ingest still to come. The whole corpus (1,398 documents) took 6.5 of the
# default run's minutes embedding on one core, without testing anything more;
# tests/cluster/test_embedding.py kills an embedder mid-ingest on a cluster of the same shape.
INGESTED = 128


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("replication"), partitions=16, replicas=3)
    try:
        local.start(3)
        yield local
    finally:
        local.stop()


def _upsert_with_retry(client: MeshClient, batch: list[dict[str, Any]]) -> list[str]:
    """Writes are idempotent, so an unknown outcome is settled by sending the batch again."""
    for attempt in range(5):
        try:
            return [result["id"] for result in client.upsert(batch, consistency="quorum")["results"]]
        except MeshClientError as exc:
            if exc.status < 500 or attempt == 4:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


@pytest.mark.timeout(600)
def test_cranfield_on_three_replicas_through_a_kill9(cluster: LocalCluster) -> None:
    docs = cranfield_documents()[:INGESTED]
    n1, _, n3 = cluster.nodes
    client = cluster.client(n1, timeout=120)
    batches = [docs[i : i + 32] for i in range(0, len(docs), 32)]
    acknowledged: list[str] = []
    killed = threading.Event()

    def ingest(index_batch: tuple[int, list[dict[str, Any]]]) -> list[str]:
        index, batch = index_batch
        if index == len(batches) // 3 and not killed.is_set():
            killed.set()
            n3.kill9()  # mid-ingest, with batches in flight
        return _upsert_with_retry(client, batch)

    with ThreadPoolExecutor(2) as pool:
        for ids in pool.map(ingest, enumerate(batches)):
            acknowledged.extend(ids)
    assert killed.is_set() and not n3.is_running()
    assert len(acknowledged) == len(docs)

    copies = cluster.copies(acknowledged)
    assert min(copies.values()) >= 2, "an acknowledged document is on fewer than 2 replicas"

    restarted_at = time.monotonic()
    n3.start().wait_ready()
    waited = cluster.wait_for(
        lambda: set(cluster.copies(acknowledged).values()) == {3}, RESTORE_LIMIT_S, "every document on all 3 replicas"
    )
    print(f"\nall {len(acknowledged)} documents on 3 replicas {time.monotonic() - restarted_at:.1f} s after the restart "
          f"({waited:.1f} s after it was ready)")
    for node in cluster.nodes:
        assert cluster.stored_ids(node) >= set(acknowledged)


@pytest.mark.timeout(600)
def test_session_reads_see_a_write_at_one_while_a_replica_lags(cluster: LocalCluster) -> None:
    n1, n2, n3 = cluster.nodes
    cluster.pause(n3)
    try:
        cluster.wait_for(lambda: cluster.member_state(n1, "n3") == "dead", 60, "n1 sees the paused n3 as dead")
        writes = [cluster.client(n1).upsert([{"id": f"session/{i}", "text": f"session write {i}", "vector": _unit(i)}], consistency="one")
                  for i in range(1000)]
    finally:
        cluster.resume(n3)
    reader = cluster.client(n3)
    # Probed first, newest writes first, right after the resume: hint replay (oldest first)
    # starts once gossip sees n3 alive again and must not have caught up on what is probed.
    lagging = sum(_missing_locally(reader, f"session/{i}") for i in range(999, -1, -10))
    seen = 0
    for i, write in enumerate(writes):
        doc = reader.get_document(f"session/{i}", session=write["session"], consistency="one")
        seen += doc["text"] == f"session write {i}"
    print(f"\n{seen}/1000 session reads through the lagging replica saw their write; "
          f"{lagging} of 100 local probes there had not received it yet")
    assert seen == 1000
    assert lagging >= 1, "n3 was never behind: the test did not exercise a lagging replica"


@pytest.mark.timeout(600)
def test_a_replica_that_missed_a_delete_never_brings_it_back(cluster: LocalCluster) -> None:
    n1, n2, n3 = cluster.nodes
    victims = [f"cranfield/{i}" for i in range(1, 21)]
    assert cluster.copies(victims) == {doc_id: 3 for doc_id in victims}
    n3.kill9()
    for doc_id in victims:
        cluster.client(n1).delete_document(doc_id, consistency="quorum")
    assert set(victims) <= cluster.stored_ids(n3)  # the dead n3 still holds them live
    n3.start().wait_ready()
    deadline = time.monotonic() + 30
    tombstoned = False
    while time.monotonic() < deadline:
        for node in (n1, n2):
            assert not set(victims) & cluster.stored_ids(node), f"a deleted document came back on {node.name}"
        tombstoned = set(victims) <= cluster.stored_ids(n3, deleted=True)
        if tombstoned:
            break
        time.sleep(0.5)
    assert tombstoned, "n3 never received the tombstones"
    time.sleep(3)  # another round of hints and repair must not change anything
    for node in cluster.nodes:
        assert not set(victims) & cluster.stored_ids(node)
        with pytest.raises(MeshClientError) as missing:
            cluster.client(node).get_document(victims[0])
        assert missing.value.status == 404
    hits = cluster.client(n3).search("experimental investigation of the aerodynamics of a wing", k=50, mode="bm25")["hits"]
    assert not {hit["doc_id"] for hit in hits} & set(victims)


def _missing_locally(client: MeshClient, doc_id: str) -> int:
    try:
        client.get_document(doc_id, local=True)
        return 0
    except MeshClientError as exc:
        assert exc.status == 404
        return 1


def _unit(i: int) -> list[float]:
    import numpy as np

    vector = np.random.default_rng(10_000 + i).standard_normal(384).astype(np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


@pytest.mark.long
@pytest.mark.timeout(600)
def test_a_node_with_another_embedding_model_refuses_to_join(cluster: LocalCluster, tmp_path: Path) -> None:
    model_dir = _smaller_model(tmp_path / "minilm-128")
    n1 = cluster.nodes[0]
    joiner = LocalNode(tmp_path / "other", name="other-model",
                       extra_args=["--roles", "storage,coordinator", "--join", f"127.0.0.1:{n1.port}"],
                       env={"MESHRAG_EMBEDDER_MODEL": str(model_dir), "MESHRAG_OBSERVABILITY_LOG_FORMAT": "text"}).start()
    try:
        assert joiner.process is not None
        assert joiner.process.wait(timeout=300) != 0
        log = joiner.log_tail(60)
        assert "refusing to join the cluster" in log
        assert "(128 dimensions)" in log and "(384 dimensions)" in log
    finally:
        joiner.stop()
    names = {node["name"] for node in cluster.ring(n1)["nodes"]}
    assert "other-model" not in names


def _smaller_model(path: Path) -> Path:
    """A real, different sentence-transformers model: the bundled one plus a 384->128 projection."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    from meshrag.rag.embedder import default_model_path

    base = SentenceTransformer(default_model_path(), device="cpu")
    projected = SentenceTransformer(modules=[*base, Dense(in_features=384, out_features=128)], device="cpu")
    projected.save(str(path))
    return path


@pytest.mark.timeout(600)
def test_too_few_acks_is_an_unknown_outcome_naming_who_took_it_and_a_retry_reaches_all(cluster: LocalCluster) -> None:
    n1, _, n3 = cluster.nodes
    doc = {"id": "unknown-outcome/1", "text": "written while a replica is down", "vector": _unit(50_000)}
    n3.kill9()
    with pytest.raises(MeshClientError) as failure:
        cluster.client(n1).upsert([doc], consistency="all")
    assert failure.value.status == 503 and failure.value.code == "write_outcome_unknown"
    took = failure.value.message.split("took it: ")[1].split(")")[0]
    assert "2/3 acks" in failure.value.message and sorted(took.split(", ")) == ["n1", "n2"]
    assert cluster.copies([doc["id"]]) == {doc["id"]: 2}

    n3.start().wait_ready()
    # The two replicas that have it must not make the retry a no-op: ALL means all three.
    cluster.client(n1).upsert([doc], consistency="all")
    assert cluster.copies([doc["id"]]) == {doc["id"]: 3}
