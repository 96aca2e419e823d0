"""TLS on real nodes: HTTPS listeners, node-to-node calls over HTTPS trusting the cluster CA."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from meshrag.client import MeshClient, MeshClientError
from meshrag.localcluster import STORAGE_ROLES, LocalCluster
from meshrag.localnode import LocalNode
from tests.cluster.conftest import running_in_order, vector_documents
from tests.security.certs import make_ca, make_node_cert

pytestmark = pytest.mark.slow

SECRET = "tls-test-cluster-secret-0123"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[LocalNode], Path]]:
    root = tmp_path_factory.mktemp("tls")
    ca, ca_key, ca_cert = make_ca(root)
    nodes: list[LocalNode] = []
    for name in ("n1", "n2"):
        cert, key = make_node_cert(root, name, ca_key, ca_cert)
        args = [*STORAGE_ROLES, "--partitions", "8", "--replicas", "2", "--secret", SECRET,
                "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)]
        if nodes:
            args += ["--join", f"127.0.0.1:{nodes[0].port}"]
        nodes.append(LocalNode(root / name, name=name, extra_args=args, dev=False, scheme="https", ca_file=ca))
    for started in running_in_order(nodes):
        yield started, ca


def test_nodes_join_and_replicate_over_https(cluster: tuple[list[LocalNode], Path]) -> None:
    (n1, n2), ca = cluster
    client = MeshClient(n1.url, ca_file=str(ca))
    LocalCluster.wait_for(lambda: {m["name"]: m["state"] for m in client.cluster()["members"]}.get("n2") == "alive", 30,
                          "n1 sees n2 alive (gossip push-pull over HTTPS)")
    docs = vector_documents(8, prefix="tls")
    results = client.upsert(docs, consistency="all")["results"]  # both replicas, over node-to-node HTTPS
    assert [r["status"] for r in results] == ["created"] * 8
    assert MeshClient(n2.url, ca_file=str(ca)).get_document("tls00003", consistency="all")["id"] == "tls00003"


def test_plain_http_and_an_untrusting_client_are_refused(cluster: tuple[list[LocalNode], Path]) -> None:
    (n1, _), _ = cluster
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{n1.port}/health", timeout=5).read()
    with pytest.raises(MeshClientError):
        MeshClient(n1.url, ca_file=None, timeout=5).health()  # the system store does not know the cluster CA
