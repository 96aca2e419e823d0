"""Circuit breakers per peer, for search reads and generation routing.

A breaker watches the outcomes of the attempts it admitted and stops sending
to a peer that keeps failing, so callers fail over at once instead of waiting
out a timeout per request:

* CLOSED: every attempt is admitted. It opens on ``consecutive_failures``
  failures in a row, or when at least ``min_calls`` of the last ``window``
  outcomes are known and the share of failures among them reaches
  ``failure_ratio`` (a peer that fails every other request never fails five
  times in a row, yet is as useless).
* OPEN: nothing is admitted until the open period has passed; then the next
  ``allow`` turns the breaker HALF_OPEN and admits one probe.
* HALF_OPEN: one probe at a time. Its success closes the breaker and resets
  the backoff; its failure re-opens it for twice the previous period, capped
  at ``max_open_s``, so a peer that stays down costs ever fewer probes.

A probe whose outcome is never recorded (the caller was cancelled, or forgot)
must not wedge the breaker: the probe slot is freed ``open_s`` seconds after
it was taken. ``open_s`` is the base period because it is what the operator
chose as "worth waiting before asking again"; a backed-off period would leave
a peer that has recovered shut out for up to ``max_open_s`` because of one
lost callback.

Outcomes recorded while OPEN come from attempts admitted before it opened;
they are ignored, so stale failures do not extend the period and a stale
success does not close a breaker no probe has tested. An outcome recorded
while HALF_OPEN is taken as the probe's: ``record`` carries no token, and
whichever attempt answers, it says whether the peer answers now.

The board also refuses to open more than ``max_open_fraction`` of the peers
it knows (Envoy's ``max_ejection_percent``); see ``BreakerBoard._may_open``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from meshrag.clock import Clock


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    window: int = 20  # the last N outcomes the failure ratio is taken over
    min_calls: int = 10  # the ratio is only judged with at least this many outcomes in the window
    open_s: float = 1.0  # first open period, and how long an unrecorded probe holds its slot
    max_open_s: float = 30.0  # cap of the doubling backoff after failed probes
    max_open_fraction: float = 0.5  # never more than this share of the known peers open

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be at least 1, not {self.consecutive_failures}")
        if not 0.0 < self.failure_ratio <= 1.0:
            raise ValueError(f"failure_ratio must be in (0, 1], not {self.failure_ratio}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1 outcome, not {self.window}")
        if not 1 <= self.min_calls <= self.window:
            raise ValueError(f"min_calls must be between 1 and window ({self.window}), not {self.min_calls}")
        if not self.open_s > 0.0:
            raise ValueError(f"open_s must be positive, not {self.open_s}")
        if not self.max_open_s >= self.open_s:
            raise ValueError(f"max_open_s ({self.max_open_s}) must be at least open_s ({self.open_s})")
        if not 0.0 <= self.max_open_fraction <= 1.0:
            raise ValueError(f"max_open_fraction must be in [0, 1], not {self.max_open_fraction}")


@dataclass(slots=True)
class _Breaker:
    """One peer's breaker; only BreakerBoard changes it."""

    open_period: float
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    outcomes: deque[bool] = field(default_factory=deque)  # True: success; bounded by the board
    open_until: float = 0.0
    probe_taken_at: float | None = None
    opens: int = 0


class BreakerBoard:
    """The breakers of all peers, and the population the open-fraction guard counts."""

    def __init__(self, settings: BreakerSettings, clock: Clock) -> None:
        self.settings = settings
        self._clock = clock
        self._breakers: dict[str, _Breaker] = {}
        self._peers: set[str] = set()
        self.opens = 0
        self.closes = 0
        self.suppressed_opens = 0
        self.rejected = 0

    # Population

    def set_peers(self, peers: Iterable[str]) -> None:
        """The peers the open-fraction guard counts; breakers of peers no longer listed are dropped."""
        self._peers = set(peers)
        for gone in set(self._breakers) - self._peers:
            del self._breakers[gone]

    def forget(self, peer: str) -> None:
        """Drop a peer and its breaker (it left, or came back as a new life)."""
        self._breakers.pop(peer, None)
        self._peers.discard(peer)

    # Admission

    def allow(self, peer: str) -> bool:
        """Whether to send this attempt; a True must be followed by ``record``."""
        admitted = self._admit(peer)
        if not admitted:
            self.rejected += 1
        return admitted

    def would_allow(self, peer: str) -> bool:
        """What ``allow`` would answer now, without taking a probe slot or counting a rejection (for ranking)."""
        breaker = self._breakers.get(peer)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return True
        if breaker.state is BreakerState.OPEN:
            return self._clock.now() >= breaker.open_until
        return not self._probe_in_flight(breaker)

    def _admit(self, peer: str) -> bool:
        breaker = self._breakers.get(peer)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return True
        now = self._clock.now()
        if breaker.state is BreakerState.OPEN:
            if now < breaker.open_until:
                return False
            breaker.state = BreakerState.HALF_OPEN
        elif self._probe_in_flight(breaker):
            return False
        breaker.probe_taken_at = now
        return True

    def _probe_in_flight(self, breaker: _Breaker) -> bool:
        taken = breaker.probe_taken_at
        return taken is not None and self._clock.now() - taken < self.settings.open_s

    # Outcomes

    def record(self, peer: str, ok: bool) -> None:
        """The outcome of an attempt ``allow`` admitted."""
        breaker = self._breaker(peer)
        if breaker.state is BreakerState.HALF_OPEN:
            self._probe_answered(breaker, ok)
        elif breaker.state is BreakerState.CLOSED:
            self._count(breaker, ok)
            if self._tripped(breaker):
                self._trip(breaker)

    def _breaker(self, peer: str) -> _Breaker:
        breaker = self._breakers.get(peer)
        if breaker is None:
            breaker = self._breakers[peer] = _Breaker(open_period=self.settings.open_s)
            self._peers.add(peer)
        return breaker

    def _count(self, breaker: _Breaker, ok: bool) -> None:
        breaker.outcomes.append(ok)
        if len(breaker.outcomes) > self.settings.window:
            breaker.outcomes.popleft()
        breaker.consecutive_failures = 0 if ok else breaker.consecutive_failures + 1

    def _tripped(self, breaker: _Breaker) -> bool:
        if breaker.consecutive_failures >= self.settings.consecutive_failures:
            return True
        seen = len(breaker.outcomes)
        if seen < self.settings.min_calls:
            return False
        failures = seen - sum(breaker.outcomes)
        return failures / seen >= self.settings.failure_ratio

    def _trip(self, breaker: _Breaker) -> None:
        if not self._may_open():
            # Stays closed with its counts intact, so it opens at its next failure once there is room.
            self.suppressed_opens += 1
            return
        self._open(breaker, self.settings.open_s)

    def _may_open(self) -> bool:
        # When most peers fail at once the cause is usually shared (a network blip, a
        # load spike, our own overload). Ejecting them all would route everything to
        # the few left, or to nobody, and turn a slowdown into an outage; Envoy's
        # outlier detection caps ejections with max_ejection_percent for that reason.
        # Half-open breakers count as open: they admit one probe, not traffic.
        open_now = sum(1 for b in self._breakers.values() if b.state is not BreakerState.CLOSED)
        allowed = self.settings.max_open_fraction * len(self._peers) + 1e-9  # 0.29 * 100 is 28.999...
        return open_now + 1 <= allowed

    def _probe_answered(self, breaker: _Breaker, ok: bool) -> None:
        breaker.probe_taken_at = None
        if ok:
            self._close(breaker)
        else:
            breaker.consecutive_failures += 1
            self._open(breaker, min(breaker.open_period * 2, self.settings.max_open_s))

    def _open(self, breaker: _Breaker, period: float) -> None:
        breaker.state = BreakerState.OPEN
        breaker.open_period = period
        breaker.open_until = self._clock.now() + period
        breaker.opens += 1
        self.opens += 1

    def _close(self, breaker: _Breaker) -> None:
        # A fresh start: the failures that opened it must not re-open it at the next blip.
        breaker.state = BreakerState.CLOSED
        breaker.open_period = self.settings.open_s
        breaker.consecutive_failures = 0
        breaker.outcomes.clear()
        self.closes += 1

    # Reporting

    def state(self, peer: str) -> BreakerState:
        """The stored state; an OPEN breaker whose period has passed turns HALF_OPEN at the next ``allow``."""
        breaker = self._breakers.get(peer)
        return BreakerState.CLOSED if breaker is None else breaker.state

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per peer, for status and metrics."""
        now = self._clock.now()
        return {peer: self._describe(breaker, now) for peer, breaker in self._breakers.items()}

    def _describe(self, breaker: _Breaker, now: float) -> dict[str, Any]:
        is_open = breaker.state is BreakerState.OPEN
        return {
            "state": breaker.state.value,
            "consecutive_failures": breaker.consecutive_failures,
            "open_for_s": max(0.0, breaker.open_until - now) if is_open else 0.0,
            "opens": breaker.opens,
        }

    def counters(self) -> dict[str, int]:
        return {
            "opens": self.opens, "closes": self.closes,
            "suppressed_opens": self.suppressed_opens, "rejected": self.rejected,
        }
