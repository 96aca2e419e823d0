"""Local health awareness (Lifeguard's LHA-Probe).

A node that is itself slow (overloaded CPU, paused loop, lossy NIC) misses acks
and wrongly accuses healthy peers. It can notice: its probes fail while the
peers it asked for help stay silent too (missed nacks), or it hears that others
suspect it. The score counts such evidence, from 0 (healthy) to max-1, and
stretches this node's probe interval and timeouts by (score + 1), so a sick
node probes less and waits longer instead of spreading false suspicions.
"""

from __future__ import annotations


class Awareness:
    def __init__(self, max_multiplier: int, enabled: bool = True) -> None:
        self._max_score = max(0, max_multiplier - 1)
        self._enabled = enabled
        self._score = 0

    @property
    def score(self) -> int:
        """0 is healthy; reported as the node's health score in status and metrics."""
        return self._score

    def apply(self, delta: int) -> None:
        """+1 for each piece of evidence of our own trouble, -1 for a successful probe."""
        if self._enabled:
            self._score = min(self._max_score, max(0, self._score + delta))

    def scale(self, seconds: float) -> float:
        return seconds * (self._score + 1)
