"""cli.py: the commands users type, run as real processes against a real node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from meshrag.cli import render_status
from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode

pytestmark = pytest.mark.slow


def meshrag(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "meshrag.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


def meshrag_get(node: LocalNode, doc_id: str) -> str:
    return urllib.request.urlopen(f"{node.url}/v1/documents/{urllib.parse.quote(doc_id, safe='')}", timeout=10).read().decode()


def write_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "lighthouse.md").write_text("# Lighthouse\n\nThe Brannock lighthouse lamp turns once every nine seconds.\n")
    (corpus / "sub" / "bakery.txt").write_text("The Ostrel bakery opens at five in the morning and sells rye bread.\n")
    (corpus / "page.html").write_text("<html><head><title>Ferry</title><style>p{}</style></head><body><p>The ferry to Holm leaves hourly.</p></body></html>")
    (corpus / "records.jsonl").write_text('{"id": "r1", "text": "Record one mentions copper mining.", "year": 1901}\n{"id": "r2", "text": "Record two mentions tin.", "year": 1950}\n')
    return corpus


def embedded_chunks(node: LocalNode) -> float:
    text = urllib.request.urlopen(node.url + "/metrics", timeout=10).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("meshrag_chunks_embedded_total "))


def test_ingest_is_idempotent_and_search_finds_files(node: LocalNode, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    first = meshrag("ingest", str(corpus), "--node", node.url, "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["documents"] == 5 and summary["by_status"].get("created") == 5
    versions = {doc_id: json.loads(meshrag_get(node, doc_id))["version"] for doc_id in ("lighthouse.md", "records:r2")}
    embedded = embedded_chunks(node)
    second = json.loads(meshrag("ingest", str(corpus), "--node", node.url, "--json").stdout)
    assert second["by_status"] == {"unchanged": 5}
    assert embedded_chunks(node) == embedded, "re-ingesting unchanged files must embed nothing"
    assert {doc_id: json.loads(meshrag_get(node, doc_id))["version"] for doc_id in versions} == versions

    found = meshrag("search", "when does the lighthouse lamp turn", "--node", node.url, "--k", "3", "--json")
    assert json.loads(found.stdout)["hits"][0]["doc_id"] == "lighthouse.md"
    table = meshrag("search", "rye bread", "--node", node.url, "--mode", "bm25")
    assert "sub/bakery.txt" in table.stdout and "SCORE" in table.stdout

    filtered = json.loads(meshrag("search", "mining", "--node", node.url, "--filter", '{"year": {"$lt": 1920}}', "--json").stdout)
    assert {h["doc_id"] for h in filtered["hits"]} == {"records:r1"}


def test_ingest_shows_progress_on_stderr(node: LocalNode, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path)
    result = meshrag("ingest", str(corpus), "--node", node.url)
    assert result.returncode == 0
    assert "ingest" in result.stderr and "5/5" in result.stderr
    assert "ingested 5 documents" in result.stdout


def test_ask_streams_answer_then_sources(node: LocalNode, tmp_path: Path) -> None:
    meshrag("ingest", str(write_corpus(tmp_path)), "--node", node.url)
    result = meshrag("ask", "How often does the Brannock lighthouse lamp turn?", "--node", node.url, "--max-tokens", "24")
    assert result.returncode == 0, result.stderr
    answer, _, sources = result.stdout.partition("Sources:")
    assert answer.strip()
    assert "[1] lighthouse.md" in sources


def test_status_table_and_json(node: LocalNode) -> None:
    table = meshrag("status", "--node", node.url)
    assert table.returncode == 0
    assert "NAME" in table.stdout and "test-node" in table.stdout and "alive" in table.stdout
    assert "\x1b[" not in table.stdout, "no colour when piped"
    balance = next(line for line in table.stdout.splitlines() if line.startswith("test-node ") and "normal" in line)
    assert balance.split()[-4:] == ["8", "8", "1.00", "8"], balance  # copies, target, ratio, planned: alone, it holds all 8
    view = json.loads(meshrag("status", "--node", node.url, "--json").stdout)
    assert view["node"]["name"] == "test-node" and view["ring"]["nodes"][0]["status"] == "normal"  # /v1/cluster's fields kept
    assert [p["reachable"] for p in view["peers"]] == [True] and view["replication"]["under_replicated"] == []
    watched = meshrag("status", "--node", node.url, "--watch", "0.2", "--count", "2", "--json")
    assert [json.loads(line)["node"]["name"] for line in watched.stdout.splitlines()] == ["test-node"] * 2


def test_client_commands_report_unreachable_node() -> None:
    result = meshrag("status", "--node", "http://127.0.0.1:9")
    assert result.returncode == 1 and "meshrag:" in result.stderr


def test_start_with_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    result = meshrag("start", "--data-dir", str(tmp_path), "--partitions", "0", timeout=60)
    assert result.returncode == 2
    assert "cluster.partitions" in result.stderr and "1..4096" in result.stderr


def test_render_status_lists_members() -> None:
    view = {
        "node": {"name": "n1", "id": "abc", "address": "127.0.0.1:7070", "zone": "z", "generation": 3, "ready": True, "components": {"storage": True}},
        "members": [{"name": "n1", "id": "abcdef0123456789", "address": "127.0.0.1:7070", "zone": "z", "roles": ["storage"], "state": "alive", "incarnation": 3, "since": None}],
        "ring": {"partitions": 8, "replicas": 3, "local_partitions": 2},
        "storage": {"documents": 4, "chunks": 5, "tombstones": 0},
    }
    text = render_status(view)
    assert "abcdef012345" in text and "alive" in text and "documents 4" in text



def test_render_status_shows_the_ring_hints_and_repair_progress() -> None:
    ring = {
        "partitions": 16, "replicas": 2, "status": "normal", "local_partitions": 8,
        "nodes": [
            {"name": "n1", "id": "aaaaaaaaaaaaaaaa", "zone": "z1", "status": "normal", "alive": True, "partitions": 11, "target_partitions": 11},
            {"name": "n2", "id": "bbbbbbbbbbbbbbbb", "zone": "z2", "status": "leaving", "alive": False, "partitions": 10, "target_partitions": 0},
        ],
        "under_replicated": [3, 9],
        "pending_hints": {"n2": {"hints": 4, "documents": 37, "bytes": 9000}},
        "repair": {"running": True, "partitions_done": 5, "partitions_total": 11, "passes": 2, "docs_in": 120,
                   "docs_out": 7, "bytes_in": 1_500_000, "bytes_out": 500_000, "dropped": 1, "last_error": "roots from bbbb: timeout"},
    }
    view = {
        "node": {"name": "n1", "id": "aaaa", "address": "127.0.0.1:7070", "zone": "z1", "generation": 1, "ready": True, "components": {}},
        "members": [], "ring": ring, "storage": {},
    }
    lines = render_status(view).splitlines()
    assert "16 partitions, 2 replicas; this node is normal and has data in 8 partitions" in lines[2]
    assert next(line for line in lines if line.startswith("n2 ")).split() == ["n2", "bbbbbbbbbbbb", "z2", "leaving", "NO", "10", "0"]
    assert "Under-replicated partitions: 2 (3, 9)" in lines
    assert "Pending hints: n2 37 docs (4 hints)" in lines
    repair = next(line for line in lines if line.startswith("Repair:"))
    assert repair == ("Repair: running, partitions 5/11, passes 2, docs in/out 120/7, 2.0 MB moved, dropped 1, "
                      "last error: roots from bbbb: timeout")

def test_ingest_reports_bad_jsonl_line_and_skipped_files(node: LocalNode, tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("A perfectly fine document about harbours.")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "broken.jsonl").write_text('{"id": "ok", "text": "fine"}\n{not json\n')
    result = meshrag("ingest", str(tmp_path), "--node", node.url)
    assert result.returncode == 1
    assert "broken.jsonl:2" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two storage+coordinator nodes (no generation model: cheaper than `node`), n2 joined through n1."""
    cluster = LocalCluster(tmp_path_factory.mktemp("pair"), partitions=8, replicas=2)
    try:
        yield cluster.start(2)
    finally:
        cluster.stop()


@pytest.mark.long
def test_ingest_spreads_over_the_discovered_nodes_and_a_rerun_finds_all_unchanged(pair: LocalCluster, tmp_path: Path) -> None:
    corpus = tmp_path / "notes"
    corpus.mkdir()
    ids = [f"pier{i}.txt" for i in range(8)]
    for i, name in enumerate(ids):
        (corpus / name).write_text(f"The tide table for pier {i} lists high water at {i + 1} o'clock.\n")
    # Only n1 is named: n2 comes from n1's /v1/cluster. One document per batch, so both nodes get some.
    first = meshrag("ingest", str(corpus), "--node", pair.nodes[0].url, "--batch-size", "1", "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert sorted(summary["nodes"]) == sorted(node.url for node in pair.nodes)
    assert summary["documents"] == 8 and summary["by_status"] == {"created": 8}, "each document created once"
    assert summary["docs_per_s"] > 0 and isinstance(summary["retries"], int)
    stored = set().union(*(pair.stored_ids(node) for node in pair.nodes))
    assert stored == set(ids)

    second = meshrag("ingest", str(corpus), "--node", pair.nodes[0].url, "--batch-size", "1", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["by_status"] == {"unchanged": 8}
