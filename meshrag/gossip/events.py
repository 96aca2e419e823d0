"""What the membership layer tells the rest of the node: member events and counters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from meshrag.gossip.codec import REJECT_REASONS
from meshrag.gossip.state import Member, MemberState


class EventKind(str, enum.Enum):
    JOINED = "joined"    # first heard of (alive)
    UPDATED = "updated"  # still alive; address, metadata or generation changed
    ALIVE = "alive"      # back to alive from suspect, dead or left
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    member: Member
    previous: MemberState | None


@dataclass
class GossipStats:
    """Counters node.py exports as Prometheus metrics."""

    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    push_pulls: int = 0
    push_pull_failures: int = 0
    push_pull_bytes_sent: int = 0
    push_pull_bytes_received: int = 0
    refutations: int = 0
    notices_sent: int = 0
    misdirected: int = 0
    unbound_acks: int = 0  # acks or nacks of no outstanding probe, or from the wrong member: ignored
    internal_errors: int = 0
    rejections: dict[str, int] = field(default_factory=lambda: {reason: 0 for reason in REJECT_REASONS})

    def reject(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    @property
    def rejected(self) -> int:
        return sum(self.rejections.values())
