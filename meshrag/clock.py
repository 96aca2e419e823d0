"""Clocks and hybrid logical clock (HLC) timestamps.

Protocol code takes a :class:`Clock` instead of calling ``time`` so that tests
and the simulator can drive it with :class:`VirtualClock`.

Versions are HLC timestamps packed into one 64-bit integer: milliseconds of
physical time in the high 48 bits, a logical counter in the low 16. They order
like wall time when clocks are close, and still increase monotonically when a
node's clock steps backwards or when it observes a newer remote timestamp.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (for timeouts and intervals)."""

    def wall(self) -> float:
        """Seconds since the epoch (for versions and display)."""


class SystemClock:
    """The host's clocks. ``wall_offset_s`` shifts the wall clock (node.clock_offset_s,
    for tests that reproduce skew between nodes); the monotonic clock is never shifted."""

    def __init__(self, wall_offset_s: float = 0.0) -> None:
        self.wall_offset_s = wall_offset_s

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time() + self.wall_offset_s


class VirtualClock:
    """A clock that only moves when told to; for tests and simulations."""

    def __init__(self, start: float = 0.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("virtual time cannot go backwards")
        self._now += seconds


def pack_hlc(physical_ms: int, logical: int) -> int:
    return (physical_ms << LOGICAL_BITS) | (logical & LOGICAL_MASK)


def unpack_hlc(timestamp: int) -> tuple[int, int]:
    return timestamp >> LOGICAL_BITS, timestamp & LOGICAL_MASK


class ClockDrift(Exception):
    """A timestamp further ahead of this node's wall clock than the drift bound allows."""

    def __init__(self, timestamp: int, ahead_s: float, bound_s: float) -> None:
        super().__init__(
            f"version {timestamp} is {ahead_s:.1f} s ahead of this node's clock "
            f"(cluster.max_clock_drift_s = {bound_s:g}); the clock of the node that stamped it is wrong"
        )
        self.timestamp = timestamp
        self.ahead_s = ahead_s


class HybridLogicalClock:
    """Issues strictly increasing HLC timestamps; thread-safe.

    ``max_drift_s`` bounds trust in other nodes: a remote timestamp further
    ahead of our wall clock than that is refused (``ClockDrift``), so one node
    with a clock hours ahead cannot drag every version in the cluster forward.
    """

    def __init__(self, clock: Clock, max_drift_s: float = float("inf")) -> None:
        self._clock = clock
        self.max_drift_s = max_drift_s
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        """A timestamp greater than every one issued or observed before."""
        with self._lock:
            physical = int(self._clock.wall() * 1000)
            last_physical, last_logical = unpack_hlc(self._last)
            if physical > last_physical:
                self._last = pack_hlc(physical, 0)
            elif last_logical < LOGICAL_MASK:
                self._last = pack_hlc(last_physical, last_logical + 1)
            else:
                # Logical counter exhausted within one millisecond: borrow the next one.
                self._last = pack_hlc(last_physical + 1, 0)
            return self._last

    def ahead_s(self, remote: int) -> float:
        """How far a timestamp is ahead of this node's wall clock (negative: behind)."""
        return hlc_to_wall(remote) - self._clock.wall()

    def check(self, remote: int) -> None:
        """Raise ``ClockDrift`` if ``remote`` is beyond the drift bound."""
        ahead = self.ahead_s(remote)
        if ahead > self.max_drift_s:
            raise ClockDrift(remote, ahead, self.max_drift_s)

    def observe(self, remote: int) -> None:
        """Fold in a timestamp seen from another node so later ones sort after it;
        ``ClockDrift`` (and nothing folded in) if it is beyond the drift bound."""
        self.check(remote)
        with self._lock:
            if remote > self._last:
                self._last = remote


def hlc_to_wall(timestamp: int) -> float:
    """The physical part of an HLC timestamp, in seconds since the epoch."""
    return unpack_hlc(timestamp)[0] / 1000.0
