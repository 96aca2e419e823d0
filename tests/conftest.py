"""Shared fixtures: one real node process for the tests that talk HTTP."""

from __future__ import annotations

from typing import Iterator

import pytest

from meshrag.localnode import LocalNode


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    """A real `meshrag start` on loopback with every role, shared by the HTTP tests.

    Small chunks and a small generation budget keep the tests quick on 2 cores.
    """
    data_dir = tmp_path_factory.mktemp("node")
    env = {"MESHRAG_GENERATION_MAX_TOKENS": "48", "MESHRAG_CLUSTER_PARTITIONS": "8", "MESHRAG_OBSERVABILITY_LOG_FORMAT": "text"}
    local = LocalNode(data_dir, name="test-node", env=env).start()
    try:
        local.wait_ready()
        yield local
    finally:
        local.stop()
