"""Ownership and reads through a replica that lacks the data, with real processes.

3 nodes, P=8, N=2; after a victim (n3, or n2 when placement gives n1 and n3 no
partition of their own) is killed and removed, the other node (the reader,
called n2 below) becomes an owner of partitions it holds nothing of, and repair
is throttled to a standstill (cluster.repair_max_bytes_per_s = 1) so it stays
that way. Through the reader:

* GET (quorum by default, and at one) finds a document only n1 holds, and read
  repair gives n2 its copy afterwards;
* search asks n1 for the partitions n2 does not hold, rather than counting
  n2's empty answer as coverage.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest

from meshrag import wire
from meshrag.clock import pack_hlc
from meshrag.cluster import messages as msg
from meshrag.cluster.messages import APPLY_PATH
from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode
from meshrag.ring import partition_for
from meshrag.store.types import DocumentWrite
from tests.cluster.conftest import vector_documents, running

P = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from running(LocalCluster(tmp_path_factory.mktemp("stale"), partitions=P, replicas=2,
                         env={"MESHRAG_CLUSTER_REPAIR_MAX_BYTES_PER_S": "1"}), 3)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_node_refuses_an_apply_for_a_partition_it_neither_owns_nor_holds(cluster: LocalCluster) -> None:
    """Item 3: before, the apply was taken and the partition recreated on a node that is no owner."""
    n1 = cluster.nodes[0]
    # n1 started alone and held every partition: wait until it handed one off and dropped it.
    cluster.wait_for(lambda: bool(_foreign(cluster, n1)), 60, "n1 dropped a partition it no longer owns")
    foreign = _foreign(cluster, n1)
    doc_id = next(f"foreign{i}" for i in range(1000) if partition_for(f"foreign{i}", P) in foreign)
    doc = DocumentWrite(doc_id, pack_hlc(int(time.time() * 1000), 0), "h", "stray", {}, ())
    request = urllib.request.Request(n1.url + APPLY_PATH, data=wire.pack(msg.apply_body([doc])),
                                     headers={"Content-Type": wire.MSGPACK, "Accept": wire.MSGPACK})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 409
    error = wire.unpack(refused.value.read())["error"]
    assert error["code"] == "not_owner" and "ring version" in error["message"]
    assert doc_id not in cluster.stored_ids(n1)


def _foreign(cluster: LocalCluster, node: LocalNode) -> set[int]:
    """Partitions ``node`` neither owns (in the ring it persisted) nor has on disk."""
    ring, me = cluster.ring_of(node), cluster.node_id(node)
    on_disk = {int(path.name[1:]) for path in (node.data_dir / "partitions").glob("p[0-9]*")}
    return {pid for pid in range(P) if not ring.owns(me, pid) and pid not in on_disk}


@pytest.fixture(scope="module")
def lacking(cluster: LocalCluster) -> tuple[LocalNode, list[dict[str, object]]]:
    """A surviving reader and documents n1 holds and the reader does not, though the reader owns
    their partitions after the victim's removal. Placement follows the random node ids: the
    victim is one that shares a partition with n1 alone (with P=8 one of the pairs may share none)."""
    n1 = cluster.nodes[0]
    docs = vector_documents(60, prefix="stale")
    cluster.client(n1).upsert(docs, consistency="all")
    ring, ids = cluster.ring_of(n1), {cluster.node_id(node): node for node in cluster.nodes}
    pairs = [{ids[o].name for o in ring.current.owners(pid)} for pid in range(P)]
    victim = next(node for node in cluster.nodes[1:] if {"n1", node.name} in pairs)
    reader = next(node for node in cluster.nodes[1:] if node is not victim)
    victim.kill9()
    cluster.wait_for(lambda: cluster.member_state(n1, victim.name) == "dead", 60, f"n1 sees {victim.name} dead")
    cluster.client(n1).remove(victim.name)
    cluster.wait_for(lambda: all(_removed(cluster, node, victim.name) for node in (n1, reader)), 30,
                     f"{victim.name} removed in both rings")
    missing = [doc for doc in docs if doc["id"] in cluster.stored_ids(n1) - cluster.stored_ids(reader)]
    assert missing, f"{reader.name} must lack some documents it now owns"
    return reader, missing


def _removed(cluster: LocalCluster, node: LocalNode, name: str) -> bool:
    statuses = {n["name"]: n["status"] for n in cluster.ring(node)["nodes"]}
    return statuses.get(name) == "removed"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_get_through_a_replica_that_lacks_the_document_finds_it_on_another(
    cluster: LocalCluster, lacking: tuple[LocalNode, list[dict[str, object]]],
) -> None:
    n2, lacking_docs = lacking  # n2: the reader, whichever node that is
    first, second = str(lacking_docs[0]["id"]), str(lacking_docs[-1]["id"])
    assert first not in cluster.stored_ids(n2)
    assert cluster.client(n2).get_document(first)["text"] == lacking_docs[0]["text"]  # quorum, the default
    assert cluster.client(n2).get_document(second, consistency="one")["text"] == lacking_docs[-1]["text"]
    cluster.wait_for(lambda: {first, second} <= cluster.stored_ids(n2), 20, "read repair gave n2 its copies")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_search_through_a_node_without_a_partition_asks_its_other_replica(
    cluster: LocalCluster, lacking: tuple[LocalNode, list[dict[str, object]]],
) -> None:
    n2, lacking_docs = lacking  # n2: the reader, whichever node that is
    held_by_n2 = cluster.stored_ids(n2)
    doc = next(d for d in lacking_docs if d["id"] not in held_by_n2)
    found = cluster.client(n2).search(vector=doc["vector"], k=3)
    assert found["coverage"] == 1.0 and found["missing_partitions"] == []
    pid = partition_for(str(doc["id"]), P)
    assert found["hits"] and found["hits"][0]["doc_id"] == doc["id"], (
        f"partition {pid} was answered by a node that does not hold it: {n2.name} holds "
        f"{(n2.data_dir / 'holdings.json').read_text().strip()}, owners {_owner_names(cluster, n2, pid)}; "
        f"through n1: {[h['doc_id'] for h in cluster.client(cluster.nodes[0]).search(vector=doc['vector'], k=3)['hits']]}")


def _owner_names(cluster: LocalCluster, node: LocalNode, pid: int) -> list[str]:
    names = {cluster.node_id(n): n.name for n in cluster.nodes}
    return [names.get(o, o) for o in cluster.ring_of(node).current.owners(pid)]
