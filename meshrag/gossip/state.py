"""The member table: who we know, in which state, at which version.

A member's version is the pair (generation, incarnation). The generation comes
from the node's persistent identity and grows by one at every process start;
the incarnation grows within one life whenever the node refutes a suspicion or
changes its metadata. Comparing the pairs makes anything a restarted node says
about itself outrank everything said about its previous life, so a restart is
accepted at once, from any address, without waiting for the old life's
suspicion or death to be forgotten.

At equal versions the more final state wins: left > dead > suspect > alive.
Dead and left members stay in the table: the ring needs them, and dead ones
are retried so that partitions heal.
"""

from __future__ import annotations

import bisect
import enum
import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterator, Mapping

Version = tuple[int, int]  # (generation, incarnation)


class MemberState(str, enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


STATE_RANK = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2, MemberState.LEFT: 3}
STATE_CODES = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2, MemberState.LEFT: 3}
STATES_BY_CODE = {code: state for state, code in STATE_CODES.items()}
LIVE_STATES = (MemberState.ALIVE, MemberState.SUSPECT)


@dataclass(frozen=True, slots=True)
class Member:
    """What the rest of MeshRAG sees of one member (immutable snapshot)."""

    node_id: str
    name: str
    address: str
    generation: int
    incarnation: int
    state: MemberState
    meta: Mapping[str, Any]
    since: float  # wall-clock seconds of the last state change, for `meshrag status`

    @property
    def version(self) -> Version:
        return (self.generation, self.incarnation)

    def as_dict(self) -> dict[str, Any]:
        """The shape /v1/cluster and `meshrag status --json` print."""
        return {
            "name": self.name, "id": self.node_id, "address": self.address,
            "zone": self.meta.get("zone"), "roles": _as_list(self.meta.get("roles")),
            "state": self.state.value, "generation": self.generation, "incarnation": self.incarnation,
            "since": self.since, "meta": dict(self.meta),
        }


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


@dataclass(slots=True)
class MemberRecord:
    """Mutable table entry; only the owning Memberlist changes it."""

    node_id: str
    name: str
    address: str
    generation: int
    incarnation: int
    state: MemberState
    meta: dict[str, Any]
    meta_bytes: bytes
    since: float
    state_changed_at: float = 0.0  # monotonic, for gossip-to-the-dead
    last_notice_at: float = field(default=-1e18)  # monotonic, rate-limits stale-view notices

    @property
    def version(self) -> Version:
        return (self.generation, self.incarnation)

    def view(self) -> Member:
        # meta dicts are replaced, never changed in place, so a read-only proxy is a snapshot.
        return Member(self.node_id, self.name, self.address, self.generation, self.incarnation,
                      self.state, MappingProxyType(self.meta), self.since)


def supersedes(version: Version, state: MemberState, record: MemberRecord) -> bool:
    """Does a claim (version, state) replace what the record says? The single ordering rule."""
    if version != record.version:
        return version > record.version
    return STATE_RANK[state] > STATE_RANK[record.state]


class MemberTable:
    """All known members, with O(1) random sampling of the live (alive or suspect) ones.

    Sampling matters: every node picks gossip targets five times a second, and in a
    1000-node simulation building a candidate list each time would dominate the run.
    """

    def __init__(self, local: MemberRecord) -> None:
        self.local = local
        self._records: dict[str, MemberRecord] = {local.node_id: local}
        self._live: list[str] = []  # live members other than the local node
        self._live_pos: dict[str, int] = {}
        self.ring: list[str] = [local.node_id]  # live members and ourselves, sorted by id (slotted probing)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[MemberRecord]:
        return iter(self._records.values())

    def get(self, node_id: str) -> MemberRecord | None:
        return self._records.get(node_id)

    def add(self, record: MemberRecord) -> None:
        self._records[record.node_id] = record
        self._reindex(record)

    def set_state(self, record: MemberRecord, state: MemberState, wall: float, now: float) -> None:
        if record.state != state:
            record.since = wall
            record.state_changed_at = now
        record.state = state
        self._reindex(record)

    def live_count(self) -> int:
        """Live members including ourselves: the N in every log(N) formula."""
        return len(self._live) + 1

    def live_ids(self) -> list[str]:
        return list(self._live)

    def _reindex(self, record: MemberRecord) -> None:
        if record is self.local:
            return
        node_id = record.node_id
        live = record.state in LIVE_STATES
        if live and node_id not in self._live_pos:
            self._live_pos[node_id] = len(self._live)
            self._live.append(node_id)
            bisect.insort(self.ring, node_id)
        elif not live and node_id in self._live_pos:
            del self.ring[bisect.bisect_left(self.ring, node_id)]
            index = self._live_pos.pop(node_id)
            last = self._live.pop()
            if last != node_id:
                self._live[index] = last
                self._live_pos[last] = index

    def sample_live(self, rng: random.Random, count: int, exclude: tuple[str, ...] = ()) -> list[MemberRecord]:
        """Up to `count` distinct random live members, none of them in `exclude`."""
        pool = len(self._live)
        wanted = min(count, pool - sum(1 for node_id in exclude if node_id in self._live_pos))
        if wanted <= 0:
            return []
        if wanted * 3 > pool:  # dense draw: cheaper to sample the list directly
            candidates = [node_id for node_id in self._live if node_id not in exclude]
            return [self._records[node_id] for node_id in rng.sample(candidates, wanted)]
        chosen: list[str] = []
        while len(chosen) < wanted:
            node_id = self._live[rng.randrange(pool)]
            if node_id not in exclude and node_id not in chosen:
                chosen.append(node_id)
        return [self._records[node_id] for node_id in chosen]

    def in_state(self, state: MemberState) -> list[MemberRecord]:
        return [record for record in self._records.values() if record.state == state and record is not self.local]
