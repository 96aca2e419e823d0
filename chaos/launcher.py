"""The chaos suite's cluster: K `meshrag start` processes, and how the checker reads them.

Two networks, the same cluster otherwise: ``loopback`` (works anywhere) puts
every node on 127.0.0.1 with its own port; ``netns`` (root only, chaos/netns.py)
runs every node in its own network namespace behind a bridge, where the
network nemeses cut and drop packets (``network`` below). Either way each node
has its own data directory and process group, and everything is removed when
the run ends, also on failure or Ctrl-C.

What the checker needs is read the way an operator would: each node's
partition SQLite files opened read-only (documents, versions, tombstones, by
exact id, also while a node is stopped), the ring each node persisted (the
owners of each key), and every node's gossip view over HTTP.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Sequence

from chaos.checker import DELETED, Stored
from chaos.netns import Network
from meshrag.client import MeshClient
from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode, Placement
from meshrag.ring import partition_for


NETWORKS = ("loopback", "netns")


class LoopbackCluster:
    """The chaos cluster, on loopback or (``network="netns"``) in network namespaces."""

    def __init__(self, nodes: int, *, replicas: int = 3, partitions: int = 16, env: dict[str, str] | None = None,
                 root: Path | None = None, network: str = "loopback") -> None:
        if network not in NETWORKS:
            raise ValueError(f"network {network!r} is not one of {NETWORKS}")
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="meshrag-chaos-")
        self.root = Path(root) if root is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.size = nodes
        # netns: one namespace per node, made as the node is added (a node joining later gets one too).
        self.network = Network() if network == "netns" else None
        place = self._place if self.network is not None else None
        self.cluster = LocalCluster(self.root, partitions=partitions, replicas=min(replicas, nodes), env=env, place=place)
        self.down: set[str] = set()  # names the nemesis has taken down (killed, paused, stopped)
        self.retired: set[str] = set()  # decommissioned and stopped: no longer part of the cluster

    def __enter__(self) -> "LoopbackCluster":
        if self.network is not None:
            self.network.open()
        try:
            self.cluster.start(self.size)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.cluster.stop()
        finally:
            if self.network is not None:
                self.network.close()  # after the nodes: nothing runs in a namespace it deletes
            if self._tmp is not None:
                self._tmp.cleanup()

    def _place(self, name: str) -> Placement:
        assert self.network is not None
        address = self.network.add(name)
        return Placement(address, self.network.prefix(name))

    @property
    def nodes(self) -> list[LocalNode]:
        return self.cluster.nodes

    def retire(self, node: LocalNode) -> None:
        """A node that left the ring for good: stopped, and no longer read by the checker."""
        self.down.add(node.name)
        node.stop()
        self.retired.add(node.name)

    def members(self) -> list[LocalNode]:
        return [node for node in self.nodes if node.name not in self.retired]

    def addresses(self) -> dict[str, str]:
        """node name -> the address it binds (127.0.0.1 for every node on loopback)."""
        return {node.name: node.host for node in self.nodes}

    def targets(self) -> list[str]:
        """URLs of the nodes a client may send to: every node the nemesis has not taken down."""
        return [node.url for node in self.nodes if node.name not in self.down]

    # ------------------------------------------------------------ what the checker reads
    def owners(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """Each key's owners (node names) in the ring the first running node persisted."""
        reference = next(node for node in self.members() if node.is_running())
        ring = LocalCluster.ring_of(reference)
        names = {LocalCluster.node_id(node): node.name for node in self.nodes}
        return {key: sorted(names.get(n, n) for n in ring.target.owners(partition_for(key, ring.partitions))) for key in keys}

    def replica_states(self, keys: Sequence[str]) -> dict[str, dict[str, Stored]]:
        """node name -> key -> what its SQLite files hold (the value token, or DELETED)."""
        return {node.name: _stored(node, set(keys)) for node in self.members()}

    def membership_views(self) -> dict[str, dict[str, str]]:
        """node name -> member name -> state, as each reachable node's gossip sees it."""
        views: dict[str, dict[str, str]] = {}
        for node in self.members():
            if not node.is_running() or node.name in self.down:
                continue
            try:
                members = MeshClient(node.url, timeout=5).cluster()["members"]
            except Exception:
                continue  # counted as disagreeing below: the node does not answer
            views[node.name] = {m["name"]: m["state"] for m in members if m["name"] not in self.retired}
        return views


def _stored(node: LocalNode, keys: set[str]) -> dict[str, Stored]:
    found: dict[str, Stored] = {}
    for db in sorted((node.data_dir / "partitions").glob("p*/store.sqlite")):
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                rows = conn.execute("SELECT doc_id, version, deleted, metadata FROM documents").fetchall()
            finally:
                conn.close()
        except sqlite3.OperationalError:
            continue  # a partition dropped while we looked
        for doc_id, version, deleted, metadata in rows:
            if doc_id in keys:
                value = DELETED if deleted else _token(metadata)
                held = found.get(doc_id)
                if held is None or version > held.version:  # a partition handed off and not dropped yet
                    found[doc_id] = Stored(value, int(version))
    return found


def _token(metadata: str) -> str:
    return str(json.loads(metadata).get("v"))
