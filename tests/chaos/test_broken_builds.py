"""The checker catches deliberately broken builds (meshrag/faults.py), each on a real cluster.

Every test drives a real 3-node cluster step by step through chaos/workload.py's
recorder, then judges the history and every replica's SQLite files with
chaos/checker.py, as `chaos/run` does. Each runs twice: the broken build must be
caught with the anomaly its bug produces; the same steps on the correct build
must pass (those runs carry the `long` marker: the chaos scenarios already run
the correct build in the default suite).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from chaos.checker import Verdict, check
from chaos.launcher import LoopbackCluster
from chaos.workload import History, Recorder, key_name, unit_vector
from meshrag.client import MeshClient
from meshrag.faults import ENV as FAULTS_ENV
from meshrag.localnode import LocalNode

KEYS = [key_name(i) for i in range(12)]
WITNESSES = [key_name(100 + i) for i in range(12)]  # written while a replica is down: proof that repair ran


def built_with(fault: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A real-cluster test run twice: ``fault`` on (broken), and off (correct, `long`)."""
    builds = [pytest.param(fault, id="broken"), pytest.param("", id="correct", marks=pytest.mark.long)]

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        return pytest.mark.slow(pytest.mark.timeout(240)(pytest.mark.parametrize("fault", builds)(test)))

    return decorate


def _verdict(launched: LoopbackCluster, history: History, keys: list[str], fault: str) -> Verdict:
    """The verdict once the cluster passes, or the last one at the timeout (short for a broken
    build, which never passes; long enough for the correct one to converge)."""
    deadline = time.monotonic() + (10 if fault else 60)
    while True:
        views = launched.membership_views()
        verdict = check(history.ops(), launched.replica_states(keys), launched.owners(keys), views)
        if (verdict.passed and len(views) == len(launched.members())) or time.monotonic() > deadline:
            return verdict
        time.sleep(1.0)


def _assert_caught(fault: str, kind: str, verdict: Verdict, history: History) -> None:
    """Every operation was acknowledged; the broken build shows ``kind`` on every key, the correct one nothing."""
    assert all(op.outcome == "ok" for op in history.ops())
    if fault:
        assert {a.key for a in verdict.of(kind)} == set(KEYS), verdict.counts()
    else:
        assert verdict.passed, verdict.anomalies[:5]


def _upsert_all(record: Recorder, node: LocalNode, keys: list[str], consistency: str, seed: int) -> None:
    client, vectors = MeshClient(node.url, timeout=10), np.random.default_rng(seed)
    for key in keys:
        record.upsert(client, 0, key, consistency, None, unit_vector(vectors))


def _restart(node: LocalNode, env: dict[str, str] | None = None) -> None:
    node.stop()  # reaps a killed process and closes its log
    node.env = {**node.env, **(env or {})}
    node.start().wait_ready()


@built_with("ack_before_commit")
def test_acknowledging_before_the_replicas_commit_is_caught_as_lost_writes(tmp_path: Path, fault: str) -> None:
    """Writes acknowledged at QUORUM, then every node kill -9'd before the delayed commit."""
    history = History()
    with LoopbackCluster(3, partitions=8, env={FAULTS_ENV: fault}, root=tmp_path) as launched:
        _upsert_all(Recorder(history), launched.nodes[0], KEYS, "quorum", seed=1)
        for node in launched.nodes:
            node.kill9()
        for node in launched.nodes:
            _restart(node)
        verdict = _verdict(launched, history, KEYS, fault)
    _assert_caught(fault, "lost", verdict, history)


@built_with("stamp_without_observing")
def test_a_coordinator_behind_that_stamps_without_observing_is_caught_as_stale(tmp_path: Path, fault: str) -> None:
    """Each key written through n1, then again through n3 whose clock is 2 minutes behind."""
    history = History()
    with LoopbackCluster(3, partitions=8, env={"MESHRAG_CLUSTER_MAX_CLOCK_DRIFT_S": "300"}, root=tmp_path) as launched:
        n1, _, n3 = launched.nodes
        _restart(n3, {"MESHRAG_NODE_CLOCK_OFFSET_S": "-120", FAULTS_ENV: fault})
        record = Recorder(history)
        _upsert_all(record, n1, KEYS, "quorum", seed=1)
        _upsert_all(record, n3, KEYS, "quorum", seed=2)  # each starts after the first write ended
        verdict = _verdict(launched, history, KEYS, fault)
    _assert_caught(fault, "stale", verdict, history)


@built_with("repair_skips_tombstones")
def test_repair_that_skips_tombstones_is_caught_as_resurrected_deletes(tmp_path: Path, fault: str) -> None:
    """Deletes while n3 is down, with hints off: only repair can bring n3 the tombstones."""
    history = History()
    env = {FAULTS_ENV: fault, "MESHRAG_CLUSTER_MAX_HINT_WINDOW_S": "0"}
    with LoopbackCluster(3, partitions=8, env=env, root=tmp_path) as launched:
        n1, _, n3 = launched.nodes
        record = Recorder(history)
        _upsert_all(record, n1, KEYS, "all", seed=1)
        n3.kill9()
        client = MeshClient(n1.url, timeout=10)
        for key in KEYS:
            record.delete(client, 0, key, "quorum", None)
        _upsert_all(record, n1, WITNESSES, "quorum", seed=2)
        _restart(n3)
        launched.cluster.wait_for(lambda: set(WITNESSES) <= set(launched.replica_states(WITNESSES)["n3"]), 90,
                                  "repair brought n3 the documents written while it was down")
        verdict = _verdict(launched, history, KEYS + WITNESSES, fault)
    _assert_caught(fault, "resurrected", verdict, history)
    assert {a.node for a in verdict.of("resurrected")} <= {"n3"}
