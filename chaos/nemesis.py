"""Faults the chaos suite injects into a loopback cluster, each with its heal.

A nemesis ``inject``s a fault into a running cluster and later ``heal``s it;
the runner records when each was in force, so the report can give
availability and latency during faults. Each choice (which node) comes from
the run's seeded ``random.Random``.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from chaos.launcher import LoopbackCluster
from meshrag.client import MeshClient
from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode

SETTLE_TIMEOUT_S = 180.0  # a join or a decommission moving its share of the data under load


class Nemesis(Protocol):
    name: str

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        """Apply the fault; returns what was done, for the report."""
        ...

    def heal(self, cluster: LoopbackCluster) -> str:
        ...


def _victim(cluster: LoopbackCluster, rng: random.Random) -> LocalNode:
    # Any node, the seed too: a node restarted without seeds rejoins through the peers it knew.
    return rng.choice([node for node in cluster.nodes if node.name not in cluster.down])


@dataclass
class Kill:
    """kill -9 one node; healed by restarting it on the same data directory (or not at all)."""

    restart: bool = True
    name: str = "kill"
    victim: LocalNode | None = None

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        self.victim = _victim(cluster, rng)
        cluster.down.add(self.victim.name)
        self.victim.kill9()
        return f"kill -9 {self.victim.name}"

    def heal(self, cluster: LoopbackCluster) -> str:
        assert self.victim is not None
        if not self.restart:
            return f"{self.victim.name} stays down"
        self.victim.stop()  # reaps the killed process and closes its log
        self.victim.start().wait_ready()
        cluster.down.discard(self.victim.name)
        return f"restarted {self.victim.name}"


@dataclass
class Pause:
    """SIGSTOP one node (alive to the kernel, silent to everyone); healed by SIGCONT."""

    name: str = "pause"
    victim: LocalNode | None = None

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        self.victim = _victim(cluster, rng)
        cluster.down.add(self.victim.name)
        LocalCluster.pause(self.victim)
        return f"SIGSTOP {self.victim.name}"

    def heal(self, cluster: LoopbackCluster) -> str:
        assert self.victim is not None
        LocalCluster.resume(self.victim)
        cluster.down.discard(self.victim.name)
        return f"SIGCONT {self.victim.name}"


@dataclass
class ClockSkew:
    """Restart nodes with their clocks moved (``node.clock_offset_s``): one behind, one ahead.
    Healed by restarting them on the true time."""

    offsets_s: tuple[float, ...] = (-120.0, 120.0)
    name: str = "clock-skew"
    skewed: list[LocalNode] = field(default_factory=list)

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        victims = rng.sample(cluster.nodes, min(len(self.offsets_s), len(cluster.nodes)))
        done = []
        for node, offset in zip(victims, self.offsets_s):
            _restart_with(cluster, node, {"MESHRAG_NODE_CLOCK_OFFSET_S": str(offset)})
            self.skewed.append(node)
            done.append(f"{node.name} {offset:+g} s")
        return "clocks: " + ", ".join(done)

    def heal(self, cluster: LoopbackCluster) -> str:
        for node in self.skewed:
            _restart_with(cluster, node, {"MESHRAG_NODE_CLOCK_OFFSET_S": "0"})
        return "clocks true again: " + ", ".join(node.name for node in self.skewed)


@dataclass
class RollingRestart:
    """Every node in turn: graceful stop, start on the same data, wait until ready."""

    pause_s: float = 2.0
    name: str = "rolling-restart"

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        order = list(cluster.nodes)
        for node in order:
            _restart_with(cluster, node, {})
            time.sleep(self.pause_s)
        return "restarted in turn: " + ", ".join(node.name for node in order)

    def heal(self, cluster: LoopbackCluster) -> str:
        return "nothing to heal"


def _restart_with(cluster: LoopbackCluster, node: LocalNode, env: dict[str, str]) -> None:
    cluster.down.add(node.name)
    node.stop()
    node.env = {**node.env, **env}
    node.start().wait_ready()
    cluster.down.discard(node.name)


@dataclass
class Join:
    """One more node joins under load (it takes its share of the partitions from the owners)."""

    name: str = "join"
    joined: LocalNode | None = None

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        self.joined = cluster.cluster.add(wait=False)
        cluster.down.add(self.joined.name)  # clients use it once it is ready, as a load balancer would
        self.joined.wait_ready()
        cluster.down.discard(self.joined.name)
        return f"{self.joined.name} joined"

    def heal(self, cluster: LoopbackCluster) -> str:
        seconds = cluster.cluster.wait_for(lambda: all(cluster.cluster.ring_settled(n) for n in cluster.cluster.running()),
                                           SETTLE_TIMEOUT_S, "every ring normal after the join")
        return f"rings settled {seconds:.0f} s after the join"


@dataclass
class Decommission:
    """One node hands its data off and leaves the ring under load; then its operator stops it."""

    name: str = "decommission"
    victim: LocalNode | None = None

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        self.victim = _victim(cluster, rng)
        MeshClient(self.victim.url, timeout=30).decommission()
        return f"decommission {self.victim.name}"

    def heal(self, cluster: LoopbackCluster) -> str:
        victim = self.victim
        assert victim is not None
        seconds = cluster.cluster.wait_for(lambda: _ring_status(victim) == "removed", SETTLE_TIMEOUT_S,
                                           f"{victim.name} removed from the ring after handing off")
        cluster.retire(victim)
        return f"{victim.name} handed off and left in {seconds:.0f} s; stopped"


def _ring_status(node: LocalNode) -> str | None:
    try:
        return str(MeshClient(node.url, timeout=5).cluster()["ring"]["status"])
    except Exception:
        return None


@dataclass
class Flurry:
    """Faults in quick succession until healed: every 1–4 s a random node is either killed with -9
    and restarted 0.5–3 s later, or frozen with SIGSTOP for 1–6 s and thawed (the loop of the first
    chaos script, replica_faults.py, now the replica-faults scenario). Its own thread, so writes keep flowing."""

    name: str = "flurry"
    done: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        self._thread = threading.Thread(target=self._loop, args=(cluster, random.Random(rng.random())), daemon=True)
        self._thread.start()
        return "kill -9/restart and SIGSTOP/SIGCONT of random nodes every 1-4 s"

    def heal(self, cluster: LoopbackCluster) -> str:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=SETTLE_TIMEOUT_S)
        return f"{len(self.done)} faults: " + ", ".join(self.done)

    def _loop(self, cluster: LoopbackCluster, rng: random.Random) -> None:
        while not self._stop.wait(rng.uniform(1.0, 4.0)):
            victim = _victim(cluster, rng)
            cluster.down.add(victim.name)
            if rng.random() < 0.5:
                victim.kill9()
                time.sleep(rng.uniform(0.5, 3.0))
                victim.stop()
                victim.start().wait_ready()
                self.done.append(f"kill -9 {victim.name}")
            else:
                LocalCluster.pause(victim)
                time.sleep(rng.uniform(1.0, 6.0))
                LocalCluster.resume(victim)
                self.done.append(f"SIGSTOP {victim.name}")
            cluster.down.discard(victim.name)
