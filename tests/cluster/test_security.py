"""Cluster security on real processes (loopback): secure by default, a node with the wrong secret
refused with the cause on both sides, and (long) key rotation on a live 3-node cluster under read
and write load with no false deaths and no failed requests."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from meshrag.client import MeshClient, MeshClientError
from meshrag.localcluster import STORAGE_ROLES
from meshrag.localnode import LocalNode
from tests.cluster.conftest import vector_documents

pytestmark = pytest.mark.slow
CLUSTER = ("--partitions", "8", "--replicas", "3")


def _node(root: Path, name: str, *args: str) -> LocalNode:
    env = {"MESHRAG_OBSERVABILITY_LOG_FORMAT": "text"}
    return LocalNode(root / name, name=name, dev=False, extra_args=[*STORAGE_ROLES, *CLUSTER, *args], env=env)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    """A node started with no security flag at all: it makes the cluster secret."""
    node = _node(tmp_path_factory.mktemp("secure"), "n1").start()
    try:
        yield node.wait_ready()
    finally:
        node.stop()


def _post_unsigned(node: LocalNode, path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(node.url + path, data=b"\x80", method="POST",
                                     headers={"Content-Type": "application/msgpack"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_node_with_no_flags_creates_the_secret_0600_and_refuses_unsigned_calls(first: LocalNode) -> None:
    secret = first.data_dir / "cluster.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_text().strip()) == 64
    assert f"--join {first.host}:{first.port} --secret-file" in first.log_path.read_text()
    status, body = _post_unsigned(first, "/_mesh/ring")
    assert status == 401 and body["error"]["code"] == "missing"
    metrics = urllib.request.urlopen(first.url + "/metrics", timeout=5).read().decode()
    assert 'meshrag_mesh_rejected_requests_total{reason="missing"} 1.0' in metrics


def test_a_node_with_another_secret_is_refused_and_both_sides_say_why(first: LocalNode, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("w" * 64)
    wrong.chmod(0o600)
    intruder = _node(tmp_path, "intruder", "--join", f"{first.host}:{first.port}", "--secret-file", str(wrong)).start()
    try:
        assert intruder.process is not None
        intruder.process.wait(timeout=180)
        assert intruder.process.returncode != 0
    finally:
        intruder.stop()
    assert f"the cluster at {first.host}:{first.port} refused this node's signature (unknown_key" in intruder.log_path.read_text()
    assert "is --secret-file the cluster's?" in intruder.log_path.read_text()
    seed_log = first.log_path.read_text()
    assert "unknown_key" in seed_log and "is that node started with this cluster's --secret-file?" in seed_log
    assert MeshClient(first.url).cluster()["members"].__len__() == 1  # never admitted to gossip either


class _Load:
    """Writes and reads round-robin over the nodes, and a watcher of every node's member view."""

    def __init__(self, nodes: list[LocalNode]) -> None:
        self.clients = [MeshClient(node.url, timeout=20) for node in nodes]
        self.ok = {"write": 0, "read": 0}
        self.failed: list[str] = []
        self.not_alive: list[tuple[str, str, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write_read), threading.Thread(target=self._watch)]

    def __enter__(self) -> "_Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _write_read(self) -> None:
        docs = vector_documents(100_000, prefix="rot")
        i = 0
        while not self._stop.is_set():
            client = self.clients[i % len(self.clients)]
            try:
                client.upsert([docs[i]], consistency="quorum")
                self.ok["write"] += 1
                self.clients[(i + 1) % len(self.clients)].get_document(docs[i]["id"], consistency="quorum")
                self.ok["read"] += 1
            except MeshClientError as exc:
                self.failed.append(f"{client.base_url if hasattr(client, 'base_url') else i}: {exc}")
            i += 1

    def _watch(self) -> None:
        while not self._stop.is_set():
            for client in self.clients:
                try:
                    for member in client.cluster()["members"]:
                        if member["state"] != "alive":
                            self.not_alive.append((member["name"], member["state"], time.strftime("%X")))
                except MeshClientError as exc:
                    self.failed.append(f"cluster view: {exc}")
            time.sleep(0.5)


def _keys(node: LocalNode, secret_file: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "meshrag.cli", "keys", *args, "--node", node.url, "--secret-file", str(secret_file)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.long
def test_key_rotation_under_load_loses_no_request_and_kills_nobody(first: LocalNode, tmp_path: Path) -> None:
    secret = tmp_path / "cluster.secret"
    shutil.copy(first.data_dir / "cluster.secret", secret)
    secret.chmod(0o600)
    others = [_node(tmp_path, name, "--join", f"{first.host}:{first.port}", "--secret-file", str(secret)).start() for name in ("n2", "n3")]
    try:
        for node in others:
            node.wait_ready()
        nodes = [first, *others]
        new = tmp_path / "new.secret"
        with _Load(nodes) as load:
            time.sleep(5)
            installed = _keys(first, secret, "install", str(new), "--generate")
            new_id = installed.split()[2]
            time.sleep(3)
            _keys(others[0], secret, "use", new_id)
            time.sleep(3)
            old_id = [line for line in _keys(first, new, "list").splitlines() if "keys=" in line][0].split("keys=")[1].split(",")
            old_id = [k for k in old_id if k != new_id][0]
            _keys(others[1], new, "remove", old_id)
            time.sleep(5)
        listing = _keys(first, new, "list")
        print(f"\nrotation under load: writes ok {load.ok['write']}, reads ok {load.ok['read']}, failed {len(load.failed)}, "
              f"member views not alive {len(load.not_alive)}")
        assert not load.failed, load.failed[:5]
        assert not load.not_alive, load.not_alive[:5]
        assert load.ok["write"] > 20 and load.ok["read"] > 20
        assert listing.count(f"primary={new_id} keys={new_id}") == 3  # every node: the new key only
    finally:
        for node in others:
            node.stop()
