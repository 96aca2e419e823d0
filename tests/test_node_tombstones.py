"""node.py: tombstones are kept for storage.tombstone_grace_s, then purged (a real node process)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from meshrag.localcluster import LocalCluster

GRACE_S = 4.0
DRIFT_S = 1.0  # purge waits grace + the clock drift bound


def _vector(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_tombstone_outlives_the_delete_then_goes_after_the_grace_period(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, partitions=4, replicas=1, env={
        "MESHRAG_STORAGE_TOMBSTONE_GRACE_S": str(GRACE_S), "MESHRAG_CLUSTER_MAX_CLOCK_DRIFT_S": str(DRIFT_S),
        "MESHRAG_CLUSTER_MAX_HINT_WINDOW_S": "1"})
    try:
        node = cluster.start(1).nodes[0]
        client = cluster.client(node)
        client.upsert([{"id": "kept", "text": "a document that stays", "vector": _vector(1)},
                       {"id": "gone", "text": "a document that is deleted", "vector": _vector(2)}])
        deleted_at = time.monotonic()
        client.delete_document("gone")
        assert "gone" in cluster.stored_ids(node, deleted=True), "the delete left no tombstone"
        waited = cluster.wait_for(lambda: "gone" not in cluster.stored_ids(node, deleted=True), 60,
                                  "the tombstone purged after its grace period", poll_s=0.25)
        assert time.monotonic() - deleted_at >= GRACE_S + DRIFT_S - 0.5, "purged before grace + drift ended"
        assert waited < GRACE_S * 3
        assert cluster.stored_ids(node) == {"kept"}
    finally:
        cluster.stop()
