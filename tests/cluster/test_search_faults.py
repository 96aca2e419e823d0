"""Searches under a steady load while replicas are paused and killed (real processes, loopback).

Three nodes, P=16, N=2, so every query crosses nodes. The load runs through
the nodes that stay up; vector queries keep it cheap (no embedding). The
phases run in order on one cluster: SIGSTOP one node and resume it, kill -9
that node, then kill -9 a second one. Latency goals (p99 against the healthy
baseline) are scripts/bench_search.py's; here: no query fails, coverage is
full while a replica of every partition lives, and reported when none does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from meshrag.client import MeshClient, MeshClientError
from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode
from meshrag.ring import partition_for
from tests.cluster.conftest import running, vector_documents

pytestmark = pytest.mark.slow

DOCS = 200
TIMEOUT_MS = 1500


@dataclass
class Load:
    """Vector searches from a few threads through the given nodes, each outcome recorded."""

    nodes: list[LocalNode]
    queries: list[list[float]]
    outcomes: list[tuple[float, float | None, str]] = field(default_factory=list)  # seconds, coverage (None: failed), error
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Load":
        for i in range(3):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, worker: int) -> None:
        clients = [MeshClient(node.url, timeout=30) for node in self.nodes]
        turn = worker
        while not self._stop.is_set():
            client = clients[turn % len(clients)]
            query = self.queries[turn % len(self.queries)]
            turn += 1
            started = time.perf_counter()
            try:
                reply = client.search(vector=query, k=5, timeout_ms=TIMEOUT_MS)
                self.outcomes.append((time.perf_counter() - started, float(reply["coverage"]), ""))
            except (MeshClientError, OSError) as exc:
                self.outcomes.append((time.perf_counter() - started, None, str(exc)))

    @property
    def failures(self) -> list[str]:
        return [error for _, coverage, error in self.outcomes if coverage is None]

    def full_coverage_share(self) -> float:
        answered = [coverage for _, coverage, _ in self.outcomes if coverage is not None]
        return sum(coverage == 1.0 for coverage in answered) / max(1, len(self.outcomes))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from running(LocalCluster(Path(tmp_path_factory.mktemp("search-faults")), partitions=16, replicas=2), 3)


@pytest.fixture(scope="module")
def queries(cluster: LocalCluster) -> list[list[float]]:
    docs = vector_documents(DOCS, prefix="sf")
    client = cluster.client()
    for start in range(0, DOCS, 50):
        client.upsert(docs[start : start + 50], consistency="all")
    return [doc["vector"] for doc in docs[:50]]


def _wait_alive_everywhere(cluster: LocalCluster, name: str) -> None:
    others = [node for node in cluster.running() if node.name != name]
    cluster.wait_for(lambda: all(cluster.member_state(node, name) == "alive" for node in others), 60, f"{name} alive again")


def test_a_paused_replica_delays_no_query_to_its_deadline_and_none_fails(cluster: LocalCluster, queries: list[list[float]]) -> None:
    n1, n2, n3 = cluster.nodes
    with Load([n1, n2], queries) as load:
        time.sleep(2.0)  # latency history for every peer, so hedges have a p95 to go by
        cluster.pause(n3)
        try:
            time.sleep(6.0)
        finally:
            cluster.resume(n3)
    _wait_alive_everywhere(cluster, "n3")
    assert load.outcomes and not load.failures, load.failures[:3]
    assert load.full_coverage_share() == 1.0, "every partition has a live replica besides n3"
    slowest = max(seconds for seconds, _, _ in load.outcomes)
    assert slowest < TIMEOUT_MS / 1000 + 1.0, f"a query waited {slowest:.2f} s: past its deadline"


def test_kill_one_replica_under_load_queries_answer_with_full_coverage(cluster: LocalCluster, queries: list[list[float]]) -> None:
    n1, n2, n3 = cluster.nodes
    with Load([n1, n2], queries) as load:
        time.sleep(1.0)
        n3.kill9()
        time.sleep(6.0)
    assert len(load.outcomes) > 100 and not load.failures, load.failures[:3]
    assert load.full_coverage_share() >= 0.999


def test_with_two_replicas_dead_queries_answer_and_name_the_missing_partitions(cluster: LocalCluster, queries: list[list[float]]) -> None:
    n1, n2, _ = cluster.nodes
    n2.kill9()
    client = cluster.client(n1)
    ring = cluster.ring_of(n1)
    held = {pid for pid in range(ring.partitions) if cluster.node_id(n1) in ring.read_owners(pid)}
    reply = client.search(vector=queries[0], k=5, timeout_ms=TIMEOUT_MS)
    assert reply["missing_partitions"] == sorted(set(range(ring.partitions)) - held)
    assert reply["coverage"] == pytest.approx(len(held) / ring.partitions, abs=1e-3)
    assert reply["coverage"] < 1.0
    assert reply["hits"] and all(partition_for(hit["doc_id"], ring.partitions) in held for hit in reply["hits"])
    with pytest.raises(MeshClientError) as refused:
        client.search(vector=queries[0], k=5, timeout_ms=TIMEOUT_MS, require_full_coverage=True)
    assert refused.value.status == 503 and refused.value.code == "incomplete_coverage"
    assert str(reply["missing_partitions"][0]) in refused.value.message

