"""Network faults for a cluster in network namespaces: partitions and packet loss.

Every cut is applied on the receiving side (chaos/netns.py: a node's nft input
chain drops what comes from the addresses it must not hear), so a one-way cut
is just a cut that only one side applies. The runner's own traffic (clients,
checker) is never cut or dropped: the faults are between nodes, and the
workload measures how the cluster copes. Victims come from the run's seeded
``random.Random``; each heal removes every rule its inject made.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, Sequence

from chaos.launcher import LoopbackCluster
from chaos.netns import Network

Shape = Literal["isolate", "minority", "bridge", "one-way"]
SHAPES: tuple[Shape, ...] = ("isolate", "minority", "bridge", "one-way")


@dataclass(frozen=True)
class Cut:
    """Who drops whom: receiver name -> the sender names it does not hear; and a line for the report."""

    drops: dict[str, frozenset[str]]
    summary: str


def plan_cut(shape: Shape, names: Sequence[str], rng: random.Random) -> Cut:
    """The partition of ``shape`` over these nodes, its victims chosen with ``rng``."""
    if shape not in SHAPES:
        raise ValueError(f"no partition shape {shape!r}; one of {SHAPES}")
    if len(names) < 2 or (shape == "bridge" and len(names) < 3):
        raise ValueError(f"a {shape} partition needs at least {3 if shape == 'bridge' else 2} nodes, not {len(names)}")
    order = list(names)
    rng.shuffle(order)
    victim, rest = order[0], order[1:]
    if shape == "isolate":
        drops = {victim: frozenset(rest), **{name: frozenset({victim}) for name in rest}}
        return Cut(drops, f"isolate: {victim} | {_names(rest)}")
    if shape == "one-way":
        return Cut({victim: frozenset(rest)}, f"one-way: {victim} hears nobody; {_names(rest)} still hear it")
    if shape == "minority":
        size = max(1, (len(order) - 1) // 2)  # strictly fewer than half: 1 of 3, 1 of 4, 2 of 5
        return Cut(_halves(order[:size], order[size:]), f"minority: {_names(order[:size])} | {_names(order[size:])}")
    left, right = rest[: len(rest) // 2], rest[len(rest) // 2:]  # victim is the bridge: it hears both sides
    return Cut(_halves(left, right), f"bridge: {_names(left)} | {_names(right)}; {victim} sees both")


def _names(names: Sequence[str]) -> str:
    return " ".join(sorted(names))


def _halves(a: Sequence[str], b: Sequence[str]) -> dict[str, frozenset[str]]:
    """Each side drops everything from the other."""
    return {**{name: frozenset(b) for name in a}, **{name: frozenset(a) for name in b}}


def _network(cluster: LoopbackCluster) -> Network:
    if cluster.network is None:
        raise RuntimeError("network faults need the netns network (Scenario.network = 'netns')")
    return cluster.network


def _live(cluster: LoopbackCluster) -> list[str]:
    return [node.name for node in cluster.members() if node.name not in cluster.down]


@dataclass
class Partition:
    """Cut the nodes into sides that cannot hear each other (see plan_cut); healed by removing the rules."""

    shape: Shape = "isolate"
    name: str = "partition"
    cut: Cut | None = None

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        network = _network(cluster)
        self.cut = plan_cut(self.shape, _live(cluster), rng)
        for receiver, senders in self.cut.drops.items():
            network.block(receiver, senders)
        return f"partition {self.cut.summary}"

    def heal(self, cluster: LoopbackCluster) -> str:
        assert self.cut is not None
        for receiver in self.cut.drops:
            _network(cluster).heal(receiver)
        return "partition healed"


@dataclass
class PacketLoss:
    """Every node drops ``percent`` % of the packets other nodes send it, at random (nft numgen:
    these hosts have no tc netem). Clients are spared like under a partition, so availability
    measures what the loss between nodes costs them."""

    percent: int = 25
    name: str = "packet-loss"
    nodes: list[str] = field(default_factory=list)

    def inject(self, cluster: LoopbackCluster, rng: random.Random) -> str:
        network = _network(cluster)
        self.nodes = _live(cluster)
        for name in self.nodes:
            network.lose(name, self.percent)
        return f"packet loss {self.percent}% between {' '.join(self.nodes)}"

    def heal(self, cluster: LoopbackCluster) -> str:
        for name in self.nodes:
            _network(cluster).heal(name)
        return "packet loss healed"
