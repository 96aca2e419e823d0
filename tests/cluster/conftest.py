"""Helpers for the cluster tests that run real node processes on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode


CRANFIELD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cranfield" / "corpus.jsonl"
DIM = 384  # all-MiniLM-L6-v2, the bundled embedder


def cranfield_documents() -> list[dict[str, Any]]:
    """The Cranfield corpus as API documents (records with no text are skipped)."""
    docs = []
    for line in CRANFIELD.read_text().splitlines():
        record = json.loads(line)
        text = "\n\n".join(part for part in (record.get("title", "").strip(), record.get("text", "").strip()) if part)
        if text:
            docs.append({"id": f"cranfield/{record['_id']}", "text": text})
    return docs


def vector_documents(count: int, prefix: str = "v", seed: int = 7) -> list[dict[str, Any]]:
    """Documents that bring their own unit vectors: moving data is what is tested, not embedding."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [{"id": f"{prefix}{i:05d}", "text": f"document {i} of the rebalancing set", "vector": vectors[i].tolist()} for i in range(count)]


def running_in_order(nodes: Sequence[LocalNode]) -> Iterator[list[LocalNode]]:
    """Nodes a test built with its own flags (the first is the others' seed), each started and
    ready before the next; for a module fixture to ``yield from``; stopped afterwards, also when
    starting fails."""
    started: list[LocalNode] = []
    try:
        for node in nodes:
            started.append(node.start())
            node.wait_ready()
        yield started
    finally:
        for node in started:
            node.stop()


def running(cluster: LocalCluster, size: int, **start: Any) -> Iterator[LocalCluster]:
    """A started cluster for a module fixture to ``yield from``; stopped afterwards, also when starting fails."""
    try:
        yield cluster.start(size, **start)
    finally:
        cluster.stop()
