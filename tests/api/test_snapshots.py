"""api/snapshots.py in-process over a real storage engine: POST starts a snapshot (202) that GET
follows to done; a second one while it runs is 409; an existing name is 409 and a bad name 400,
each naming the field; unknown snapshots 404."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from meshrag.api.errors import error_middleware
from meshrag.api.snapshots import SnapshotRoutes
from meshrag.backup.snapshot import SnapshotSources
from meshrag.cluster.ringstate import ClusterSettings
from meshrag.config import Config
from meshrag.store.engine import StorageEngine
from tests.store.conftest import DIM, make_doc


class GatedNode:
    """A node whose storage work after the first call (the reservation) waits for ``gate``:
    the test decides when a running snapshot may go on."""

    def __init__(self, data: Path, engine: StorageEngine, pool: ThreadPoolExecutor) -> None:
        self.config = Config()
        self.gate = asyncio.Event()
        self._data, self._engine, self._pool = data, engine, pool
        self._calls = 0

    def snapshot_sources(self) -> SnapshotSources:
        settings = ClusterSettings(4, 2, "m", DIM, "a")
        return SnapshotSources(self._engine, self._data, "id1", "n1", 1, settings, self._run)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._calls += 1
        if self._calls > 1:
            await self.gate.wait()
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


@pytest.fixture
async def node_client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, GatedNode]]:
    engine = StorageEngine(tmp_path / "partitions", partitions=4, dim=DIM)
    engine.open()
    engine.upsert([make_doc(f"d{i}") for i in range(40)])
    pool = ThreadPoolExecutor(2)
    node = GatedNode(tmp_path, engine, pool)
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(SnapshotRoutes(node).routes())
    async with TestClient(TestServer(app)) as client:
        yield client, node
    pool.shutdown()
    engine.close()


async def _json(request: Any) -> tuple[int, dict[str, Any]]:
    async with request as response:
        return response.status, await response.json()


async def test_a_snapshot_starts_reports_progress_and_refuses_a_second_one_meanwhile(node_client: tuple[TestClient, GatedNode]) -> None:
    client, node = node_client
    status, job = await _json(client.post("/v1/cluster/snapshots", json={"name": "first"}))
    assert status == 202 and job["state"] == "running" and job["name"] == "first"
    status, body = await _json(client.post("/v1/cluster/snapshots", json={"name": "second"}))
    assert status == 409 and body["error"]["code"] == "snapshot_running" and "'first'" in body["error"]["message"]
    node.gate.set()
    for _ in range(200):
        status, job = await _json(client.get("/v1/cluster/snapshots/first"))
        if job["state"] != "running":
            break
        await asyncio.sleep(0.02)
    assert status == 200 and job["state"] == "done", job
    assert job["partitions_done"] == job["partitions_total"] == 4 and job["documents"] == 40 and job["bytes"] > 0
    assert Path(job["path"], "manifest.json").exists()


async def test_an_existing_name_is_a_conflict_naming_the_field(node_client: tuple[TestClient, GatedNode]) -> None:
    client, node = node_client
    node.gate.set()
    (Path(node.snapshot_sources().data_dir) / "snapshots" / "taken").mkdir(parents=True)
    status, body = await _json(client.post("/v1/cluster/snapshots", json={"name": "taken"}))
    assert status == 409 and body["error"]["code"] == "snapshot_exists" and body["error"]["field"] == "name"


@pytest.mark.parametrize("body", [{"name": "../etc"}, {"name": ""}, {"name": "a/b"}, {"name": "x.partial"}, {"name": 7}])
async def test_a_bad_name_is_400_naming_the_field(node_client: tuple[TestClient, GatedNode], body: dict[str, Any]) -> None:
    client, _ = node_client
    status, answer = await _json(client.post("/v1/cluster/snapshots", json=body))
    assert status == 400 and answer["error"]["field"] == "name"


async def test_unknown_fields_and_snapshots_are_refused(node_client: tuple[TestClient, GatedNode]) -> None:
    client, _ = node_client
    status, answer = await _json(client.post("/v1/cluster/snapshots", json={"nme": "x"}))
    assert status == 400 and answer["error"]["field"] == "nme"
    status, answer = await _json(client.get("/v1/cluster/snapshots/never"))
    assert status == 404 and answer["error"]["field"] == "name"
    status, answer = await _json(client.get("/v1/cluster/snapshots/bad..name%21"))
    assert status == 400 and answer["error"]["field"] == "name"
