"""A cluster of real `meshrag start` processes on loopback (tests, benchmarks, chaos).

The first node creates the cluster; the others join through it. Storage is
inspected the way an operator would: each node's partition SQLite files are
opened read-only, so a check can see exactly which documents a node holds,
even while that node is stopped or dead.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from meshrag.client import MeshClient
from meshrag.config import is_loopback
from meshrag.cluster.ringstate import RingState
from meshrag.localnode import LocalNode, Placement
from meshrag.ring import Ring
from meshrag.ring import partition_for
from meshrag.security.secret import new_secret, write_secret_file

# Cluster tests run storage + coordinator only: no llama.cpp model per node.
STORAGE_ROLES = ("--roles", "storage,coordinator")


class LocalCluster:
    def __init__(self, root: Path, *, partitions: int = 16, replicas: int = 3, env: dict[str, str] | None = None,
                 extra_args: Sequence[str] = STORAGE_ROLES, place: Callable[[str], Placement] | None = None) -> None:
        self.root = Path(root)
        self.place = place  # node name -> where it runs (default: 127.0.0.1, this network namespace)
        self.partitions = partitions
        self.replicas = replicas
        self.env = {"MESHRAG_OBSERVABILITY_LOG_FORMAT": "text", **(env or {})}
        self.extra_args = list(extra_args)
        self.nodes: list[LocalNode] = []

    def add(self, name: str | None = None, wait: bool = True, env: dict[str, str] | None = None) -> LocalNode:
        """Start one more node; ``env`` adds to the cluster's environment for this node only."""
        name = name or f"n{len(self.nodes) + 1}"
        args = [*self.extra_args, "--partitions", str(self.partitions), "--replicas", str(self.replicas)]
        if self.nodes:
            args += ["--join", f"{self.nodes[0].host}:{self.nodes[0].port}"]
        host, prefix = self.place(name) if self.place is not None else Placement()
        dev = is_loopback(host)  # --dev is refused beyond loopback: there the nodes share a secret file
        if not dev:
            args += ["--secret-file", str(self._secret_file())]
        node = LocalNode(self.root / name, name=name, extra_args=args, env={**self.env, **(env or {})}, host=host, prefix=prefix,
                         dev=dev).start()
        self.nodes.append(node)
        if wait:
            node.wait_ready()
        return node

    def _secret_file(self) -> Path:
        path = self.root / "cluster.secret"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            write_secret_file(path, new_secret())
        return path

    def start(self, size: int, node_env: dict[str, dict[str, str]] | None = None) -> "LocalCluster":
        """``size`` nodes n1..nK; ``node_env`` gives some of them extra environment by name."""
        extra = node_env or {}
        # All at once: loading the models takes most of a start, and joiners wait for the
        # seed's cluster settings by themselves (node.py retries the seeds every second).
        for i in range(1, size + 1):
            self.add(wait=False, env=extra.get(f"n{i}"))
        for node in self.nodes:
            node.wait_ready()
        self.wait_for(lambda: all(self.ring_settled(n) for n in self.running()), 120, "every node normal in every ring")
        return self

    def running(self) -> list[LocalNode]:
        return [node for node in self.nodes if node.is_running()]

    def node(self, name: str) -> LocalNode:
        return next(node for node in self.nodes if node.name == name)

    def client(self, node: LocalNode | None = None, timeout: float = 60.0) -> MeshClient:
        return MeshClient((node or self.nodes[0]).url, timeout=timeout)

    def ring(self, node: LocalNode) -> dict[str, Any]:
        return self.client(node, timeout=10).cluster()["ring"]

    def ring_settled(self, node: LocalNode) -> bool:
        """Every ring member this node knows is normal or removed, and it knows all live nodes."""
        try:
            ring = self.ring(node)
        except Exception:
            return False
        statuses = {n["name"]: n["status"] for n in ring.get("nodes", [])}
        live = {n.name for n in self.running()}
        return live <= set(statuses) and all(s in ("normal", "removed") for s in statuses.values())

    def member_state(self, observer: LocalNode, name: str) -> str | None:
        """How ``observer``'s gossip sees member ``name`` (alive, suspect, dead, left), None if unknown."""
        try:
            members = self.client(observer, timeout=5).cluster()["members"]
        except Exception:
            return None
        return next((m["state"] for m in members if m["name"] == name), None)

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> float:
        """Seconds until ``predicate`` held; TimeoutError naming ``what`` otherwise."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if predicate():
                return time.monotonic() - started
            time.sleep(poll_s)
        raise TimeoutError(f"not within {timeout_s:.0f} s: {what}")

    # ------------------------------------------------------------ storage, as on disk
    def stored_ids(self, node: LocalNode, deleted: bool = False) -> set[str]:
        """Ids of the documents (or tombstones) in this node's partitions, read from its SQLite files."""
        ids: set[str] = set()
        for db in sorted((node.data_dir / "partitions").glob("p*/store.sqlite")):
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
                try:
                    ids.update(row[0] for row in conn.execute("SELECT doc_id FROM documents WHERE deleted = ?", (int(deleted),)))
                finally:
                    conn.close()
            except sqlite3.OperationalError:
                continue  # a partition dropped while we looked
        return ids

    @staticmethod
    def ring_of(node: LocalNode) -> Ring:
        """The ring as the node persisted it (cluster.json in its data directory)."""
        state = RingState(node.data_dir, "reader")
        if not state.load():
            raise FileNotFoundError(f"{node.name} has no cluster.json yet")
        return state.ring

    @staticmethod
    def node_id(node: LocalNode) -> str:
        return str(json.loads((node.data_dir / "node.json").read_text())["node_id"])

    def holds_ring_share(self, doc_ids: Sequence[str]) -> bool:
        """Every running node's ring is settled and it holds exactly the documents its ring assigns it."""
        live = self.running()
        if not all(self.ring_settled(node) for node in live):
            return False
        ring = self.ring_of(live[0])
        return all(self.stored_ids(node) == _assigned(ring, doc_ids, self.node_id(node)) for node in live)

    def copies(self, doc_ids: Sequence[str], nodes: Sequence[LocalNode] | None = None) -> dict[str, int]:
        """How many nodes hold each document."""
        held = [self.stored_ids(node) for node in (nodes or self.nodes)]
        return {doc_id: sum(doc_id in ids for ids in held) for doc_id in doc_ids}

    # ------------------------------------------------------------ faults
    @staticmethod
    def pause(node: LocalNode) -> None:
        assert node.process is not None
        os.killpg(node.process.pid, signal.SIGSTOP)

    @staticmethod
    def resume(node: LocalNode) -> None:
        assert node.process is not None
        os.killpg(node.process.pid, signal.SIGCONT)

    def restart(self, node: LocalNode) -> LocalNode:
        node.stop()
        node.start()
        return node.wait_ready()

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                try:
                    self.resume(node)
                except ProcessLookupError:
                    pass
            node.stop()


def _assigned(ring: Ring, doc_ids: Sequence[str], owner: str) -> set[str]:
    return {doc_id for doc_id in doc_ids if owner in ring.target.owners(partition_for(doc_id, ring.partitions))}
