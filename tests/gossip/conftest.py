"""Shared helpers: small simulated clusters on virtual time, and a log of member events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest

from meshrag.gossip.events import EventKind, MemberEvent
from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.sim import SimNode, Simulation


@dataclass
class EventLog:
    """Every member event of a simulation as (time, observer, kind, subject name, incarnation)."""

    entries: list[tuple[float, str, EventKind, str, int]] = field(default_factory=list)

    def __call__(self, time: float, node: SimNode, event: MemberEvent) -> None:
        self.entries.append((time, node.name, event.kind, event.member.name, event.member.incarnation))

    def about(self, subject: str, kind: EventKind | None = None) -> list[tuple[float, str, EventKind, str, int]]:
        return [e for e in self.entries if e[3] == subject and (kind is None or e[2] == kind)]


ClusterFactory = Callable[..., tuple[Simulation, list[SimNode], EventLog]]


@pytest.fixture()
def cluster() -> ClusterFactory:
    def build(size: int = 8, seed: int = 1, settings: GossipSettings | None = None, warmup: float = 3.0,
              bootstrap: str = "full", **sim_options: object) -> tuple[Simulation, list[SimNode], EventLog]:
        sim = Simulation(seed, settings, **sim_options)  # type: ignore[arg-type]
        nodes = sim.build(size, bootstrap=bootstrap)
        log = EventLog()
        sim.listeners.append(log)
        sim.run_for(warmup)
        return sim, nodes, log

    return build
