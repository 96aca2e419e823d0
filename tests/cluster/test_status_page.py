"""The status page at / on a real 3-node cluster (n1 generates, n2 and n3 store and coordinate),
rendered by headless Chromium: members, the partition grid, the generator, the latency chart,
and the banner when the node stops answering.

Skipped only when no Chromium binary exists (scripts/setup.sh installs Debian's package where it
can). The screenshot is kept in pytest's tmp dir; with MESHRAG_UPDATE_SCREENSHOT=1, or when
docs/status-page.png is missing, it is also copied there for the docs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Iterator

import pytest

from meshrag.client import MeshClient
from meshrag.localcluster import LocalCluster
from tests.chromium import Chromium, find_chromium
from tests.cluster.conftest import running

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = REPO / "docs" / "status-page.png"
NON_GENERATOR = {"MESHRAG_NODE_ROLES": "storage,coordinator"}
MODEL = "gemma-3-270m-q4_k_m"

# What the rendered page shows, read from its DOM (tables by id, grid cells, chart lines).
READ_PAGE = """(() => {
  const rows = (id) => [...document.querySelectorAll('#' + id + ' tbody tr')].map((tr) => [...tr.cells].map((td) => td.textContent));
  return {
    node: document.getElementById('node-name').textContent,
    connection: document.getElementById('connection').textContent,
    stale: document.body.classList.contains('stale'),
    members: rows('members'),
    generators: rows('generators'),
    latency: rows('latency'),
    partitions: [...document.querySelectorAll('#partitions .cell')].map((cell) => ({
      partition: Number(cell.dataset.partition), health: cell.classList[1],
      replicas: [...cell.querySelectorAll('li')].map((li) => li.textContent)})),
    lines: [...document.querySelectorAll('#latency-chart polyline')].map((line) => line.getAttribute('class')),
  };
})()"""


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or scripts/setup.sh as root; MESHRAG_CHROMIUM=path)")
    return binary


@pytest.fixture(scope="module")
def cluster(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("status-page"), partitions=8, replicas=2, extra_args=())
    yield from running(local, 3, node_env={"n2": NON_GENERATOR, "n3": NON_GENERATOR})


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (asserting it is one)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


def replica_names(cell: dict[str, Any]) -> list[str]:
    return [name.strip("→") for name in cell["replicas"]]


async def test_the_status_page_shows_members_partitions_generator_and_latency(
    cluster: LocalCluster, chromium: str, tmp_path: Path,
) -> None:
    n2 = cluster.node("n2")
    client = MeshClient(n2.url, timeout=60)
    client.upsert([{"id": "dome", "text": "The dome closes when the wind exceeds 15 m/s."},
                   {"id": "mirror", "text": "The primary mirror is 8.2 metres across and made of Zerodur."}])
    for query in ("wind limits of the dome", "mirror diameter", "what is Zerodur", "dome", "mirror"):
        assert client.search(query, k=2)["hits"]
    ring = client.cluster()["ring"]
    expected_cells = {row["partition"]: [r["name"] for r in row["replicas"]] for row in ring["partition_table"]}

    async with Chromium(chromium, width=1280, height=1000) as browser:
        await browser.open(n2.url + "/")
        page = await browser.wait_for(
            f"(() => {{ const p = {READ_PAGE}; return p.members.length === 3 && p.partitions.length === 8 "
            f"&& p.generators.length === 1 && p.generators[0].length > 1 && p.lines.length > 0 ? p : null; }})()", timeout_s=20)

        assert page["node"] == "n2" and page["connection"] == "live" and not page["stale"]
        members = {row[0]: row for row in page["members"]}
        assert set(members) == {"n1", "n2", "n3"}
        assert all(row[3] == "alive" for row in members.values()), page["members"]
        assert "generator" in members["n1"][2] and "generator" not in members["n2"][2]
        # Every partition, with the replicas this node's ring gives it, all alive: full.
        assert {cell["partition"]: replica_names(cell) for cell in page["partitions"]} == expected_cells
        assert all(len(cell["replicas"]) == 2 and cell["health"] == "full" for cell in page["partitions"]), page["partitions"]
        [generator] = page["generators"]
        assert generator[0] == "n1" and generator[1] == "llama.cpp" and generator[2] == MODEL
        assert generator[5] == "closed" and generator[6] == "ready"
        search = next(row for row in page["latency"] if row[0] == "search")
        assert int(search[1]) >= 5 and search[3].endswith(("ms", " s"))
        assert "p50 series-search" in page["lines"] and "p99 series-search" in page["lines"]

        picture = await browser.screenshot()
        (tmp_path / "status-page.png").write_bytes(picture)
        assert png_size(picture) == (1280, 1000) and len(picture) > 40_000  # a blank page is a few kB
        if os.environ.get("MESHRAG_UPDATE_SCREENSHOT") == "1" or not DOCS_SCREENSHOT.exists():
            shutil.copyfile(tmp_path / "status-page.png", DOCS_SCREENSHOT)

        # The node goes away: the page says so and greys out the last data it had.
        await asyncio.to_thread(n2.stop)
        page = await browser.wait_for(f"(() => {{ const p = {READ_PAGE}; return p.stale ? p : null; }})()", timeout_s=15)
        assert page["connection"].startswith("node not answering")
        assert {row[0] for row in page["members"]} == {"n1", "n2", "n3"}  # still showing what it last saw
