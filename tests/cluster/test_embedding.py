"""Embedding as a cluster service with real processes: 3 storage nodes (N=3) and an embedder-only one.

An ingest through one node has its texts embedded on every node, the
embedder-only host included (embedding/router.py), and what lands in the index
is what that node would have computed itself. Then a remote embedder is killed
with -9 while parts are on it: the ingest goes on, no error reaches the
client, and every stored chunk has its vector. Vectors are read from each
node's own SQLite files.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pytest

from meshrag.client import MeshClient, MeshClientError
from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode
from meshrag.rag.embedder import Embedder, default_model_path
from tests.cluster.conftest import DIM, cranfield_documents

pytestmark = pytest.mark.slow
BATCH = 32  # documents per request: about 43 texts, two parts of 32
SAMPLE = 64  # stored chunks whose vectors are recomputed here (each node's parts are 32 texts: all are hit)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, LocalNode]]:
    """n1..n3 (storage) and e1, roles `embedder` alone (a GPU host's shape): in gossip, not in the
    ring, no partitions. All four start at once; e1 waits for the seed by itself."""
    cluster = LocalCluster(tmp_path_factory.mktemp("embedding"), partitions=16, replicas=3)
    seed = cluster.add(wait=False)
    e1 = LocalNode(cluster.root / "e1", name="e1", env=cluster.env,
                   extra_args=["--roles", "embedder", "--join", f"127.0.0.1:{seed.port}"]).start()
    try:
        for _ in range(2):
            cluster.add(wait=False)
        for node in [*cluster.nodes, e1]:
            node.wait_ready()
        cluster.wait_for(lambda: all(cluster.ring_settled(n) for n in cluster.nodes), 120, "every node normal in every ring")
        client = cluster.client(seed, timeout=10)
        cluster.wait_for(lambda: {"n2", "n3", "e1"} <= set(embedded_by(client)), 30, "n1 sees every embedder")
        yield cluster, e1
    finally:
        e1.stop()
        cluster.stop()


@pytest.fixture(scope="module")
def cluster(nodes: tuple[LocalCluster, LocalNode]) -> LocalCluster:
    return nodes[0]


@pytest.fixture(scope="module")
def embedder_only(nodes: tuple[LocalCluster, LocalNode]) -> LocalNode:
    return nodes[1]


def stored_chunks(node: LocalNode) -> dict[str, tuple[str, bytes]]:
    """chunk id -> (text, vector blob), from the node's partition files."""
    chunks: dict[str, tuple[str, bytes]] = {}
    for db in sorted((node.data_dir / "partitions").glob("p*/store.sqlite")):
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            chunks.update((cid, (text, vector)) for cid, text, vector in conn.execute("SELECT chunk_id, text, vector FROM chunks"))
        finally:
            conn.close()
    return chunks


def embedded_by(client: MeshClient) -> dict[str, int]:
    """Texts each embedder has embedded for this node's ingests."""
    return {e["node"]: e["texts"] for e in client.cluster()["embedding"]["embedders"]}


def ingest(client: MeshClient, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for start in range(0, len(docs), BATCH):
        results += client.upsert(docs[start : start + BATCH], consistency="quorum")["results"]
    return results


def test_an_embedder_only_node_holds_no_data_and_refuses_searches_with_421(cluster: LocalCluster, embedder_only: LocalNode) -> None:
    ring_nodes = {n["name"] for n in cluster.ring(cluster.nodes[0])["nodes"]}
    assert ring_nodes == {"n1", "n2", "n3"}
    assert not list((embedder_only.data_dir / "partitions").glob("p*"))
    with pytest.raises(MeshClientError) as refused:
        MeshClient(embedder_only.url, timeout=10).search("shock waves", k=3)
    assert refused.value.status == 421 and refused.value.code == "misdirected_request"
    assert MeshClient(embedder_only.url, timeout=10).ready()


def test_an_ingest_through_one_node_is_embedded_everywhere_survives_a_kill_9_of_an_embedder_and_vectors_agree(
    cluster: LocalCluster, embedder_only: LocalNode,
) -> None:
    n1, n2, n3 = cluster.nodes
    client = cluster.client(n1, timeout=120)
    watcher = cluster.client(n1, timeout=10)
    docs = cranfield_documents()[:96]
    killed = threading.Event()

    def kill_n3_while_it_holds_parts() -> None:
        """As soon as n3 holds parts of n1's ingest (the kill catches them mid-embedding)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed.is_set():
            n3_view = next((e for e in watcher.cluster()["embedding"]["embedders"] if e["node"] == "n3"), None)
            if n3_view is not None and n3_view["in_flight"] > 0:
                n3.kill9()
                killed.set()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_n3_while_it_holds_parts)
    killer.start()
    try:
        with ThreadPoolExecutor(2) as pool:  # two requests in flight, as `meshrag ingest` sends them; none may fail
            results = [r for part in pool.map(lambda d: ingest(client, d), [docs[0::2], docs[1::2]]) for r in part]
    finally:
        killed.set()
        killer.join()
    assert not n3.is_running(), "the ingest ended before n3 held parts: the kill never happened"
    assert sorted(r["status"] for r in results) == ["created"] * len(docs)
    view = client.cluster()["embedding"]
    shares = {e["node"]: e["texts"] for e in view["embedders"]}
    assert all(shares.get(name, 0) > 0 for name in ("n1", "n2", "e1")), shares  # n1 split its texts over the others
    assert view["retries"] > 0  # the parts the kill caught on n3 were embedded elsewhere

    ids = {d["id"] for d in docs}
    for node in (n1, n2):  # N=3: each survivor holds every document
        assert ids <= cluster.stored_ids(node), node.name
        chunks = stored_chunks(node)
        assert ids <= {cid.split("#", 1)[0] for cid in chunks}, node.name  # no document stored without its chunks
        stored = np.stack([np.frombuffer(blob, dtype=np.float32) for _, blob in chunks.values()])
        assert stored.shape == (len(chunks), DIM) and np.isfinite(stored).all()
        assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-3)

    # Whoever embedded a chunk (n1, n2, e1), it is what n1 would have computed.
    chunks = stored_chunks(n1)
    sample = sorted(chunks)[:: max(1, len(chunks) // SAMPLE)]
    model = Embedder(default_model_path())
    model.load()
    own = model.encode([chunks[cid][0] for cid in sample])
    stored = np.stack([np.frombuffer(chunks[cid][1], dtype=np.float32) for cid in sample])
    cosines = np.sum(stored * own, axis=1) / np.linalg.norm(stored, axis=1)
    assert cosines.min() >= 0.99999, float(cosines.min())
