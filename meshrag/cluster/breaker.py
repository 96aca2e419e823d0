"""Circuit breakers, one per peer: stop sending to a peer that keeps failing, probe it back.

Pure logic on an injected clock (no I/O, no sleeps), to be shared by replica
choice (cluster/reads.py) and generator routing:

* closed: calls go through; the breaker opens after ``consecutive_failures``
  failures in a row, or when at least ``min_calls`` of the last ``window``
  outcomes include a failure share of ``failure_ratio`` or more;
* open: calls are refused until ``open_for_s`` has passed;
* half-open: one probe call goes through; its success closes the breaker,
  its failure opens it again for twice as long (up to ``max_open_for_s``).

A board keeps a breaker per peer and never lets more than
``max_open_share`` of the peers be open at once (as Envoy's max ejection
percent): when the failures are everywhere, the cause is more likely on this
side, and refusing every peer would turn a slow cluster into a dead one.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from meshrag.clock import Clock


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    window: int = 20
    min_calls: int = 10
    open_for_s: float = 1.0
    max_open_for_s: float = 30.0
    max_open_share: float = 0.5

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or not 0 < self.failure_ratio <= 1 or self.window < 1:
            raise ValueError("consecutive_failures >= 1, 0 < failure_ratio <= 1 and window >= 1 are required")
        if not 0 < self.open_for_s <= self.max_open_for_s or not 0 <= self.max_open_share <= 1:
            raise ValueError("0 < open_for_s <= max_open_for_s and 0 <= max_open_share <= 1 are required")


class Breaker:
    """One peer's breaker."""

    def __init__(self, settings: BreakerSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=settings.window)  # True = success
        self._failures_in_a_row = 0
        self._opened_at: float | None = None
        self._open_for = settings.open_for_s
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock.now() - self._opened_at < self._open_for:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self) -> bool:
        """Whether a call may go to this peer now (a half-open breaker lets one probe through)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._outcomes.append(True)
        self._failures_in_a_row = 0
        if self._opened_at is not None and self.state is BreakerState.HALF_OPEN:
            self._close()

    def record_failure(self) -> None:
        """Count a failure (a failed probe reopens at once); ``should_open`` then tells
        whether a closed breaker passed a threshold, and the board decides whether to trip."""
        self._outcomes.append(False)
        self._failures_in_a_row += 1
        if self._opened_at is not None and self.state is BreakerState.HALF_OPEN:
            self._reopen()

    def should_open(self) -> bool:
        """Closed and past a threshold: the board decides whether it may open."""
        if self._opened_at is not None:
            return False
        if self._failures_in_a_row >= self._settings.consecutive_failures:
            return True
        calls = len(self._outcomes)
        failures = calls - sum(self._outcomes)
        return calls >= self._settings.min_calls and failures / calls >= self._settings.failure_ratio

    def trip(self) -> None:
        self._opened_at = self._clock.now()
        self._open_for = self._settings.open_for_s
        self._probing = False

    def _reopen(self) -> None:
        self._opened_at = self._clock.now()
        self._open_for = min(self._open_for * 2, self._settings.max_open_for_s)
        self._probing = False

    def _close(self) -> None:
        self._opened_at = None
        self._open_for = self._settings.open_for_s
        self._probing = False
        self._failures_in_a_row = 0
        self._outcomes.clear()  # a fresh start: old failures do not re-trip it at once


class BreakerBoard:
    """A breaker per peer; ``peers`` tells which peers exist now (for the open share)."""

    def __init__(self, settings: BreakerSettings, clock: Clock, peers: Callable[[], Iterable[str]]) -> None:
        self._settings = settings
        self._clock = clock
        self._peers = peers
        self._breakers: dict[str, Breaker] = {}

    def breaker(self, peer: str) -> Breaker:
        if peer not in self._breakers:
            self._breakers[peer] = Breaker(self._settings, self._clock)
        return self._breakers[peer]

    def allow(self, peer: str) -> bool:
        return self.breaker(peer).allow()

    def state(self, peer: str) -> BreakerState:
        return self.breaker(peer).state

    def record(self, peer: str, ok: bool) -> None:
        breaker = self.breaker(peer)
        if ok:
            breaker.record_success()
            return
        breaker.record_failure()
        if breaker.should_open() and self._may_open_one_more():
            breaker.trip()

    def open_peers(self) -> list[str]:
        return sorted(p for p, b in self._breakers.items() if b.state is not BreakerState.CLOSED)

    def _may_open_one_more(self) -> bool:
        known = set(self._peers()) | set(self._breakers)
        limit = int(len(known) * self._settings.max_open_share)
        return len(self.open_peers()) + 1 <= limit
