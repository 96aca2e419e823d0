"""Which replica of a partition to ask first, and when to hedge.

Replica choice follows C3 (Suri et al., NSDI '15) as Elasticsearch's adaptive
replica selection does: rank nodes by their smoothed response time times their
queue, here the requests this node has outstanding to them, plus one. A fast
node we are already loading loses to an idle slower one, which keeps one fast
replica from becoming everyone's hot spot.

Hedging follows Dean and Barroso, "The Tail at Scale": when the first replica
has not answered by its recent 95th percentile, ask the next one too, and take
whichever answers first. A token bucket bounds hedges to a small share of
requests, so a cluster-wide slowdown (every request past p95) cannot double
the load at the worst moment.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from meshrag.clock import Clock
from meshrag.cluster.breaker import BreakerBoard

P95_MIN_SAMPLES = 10  # fewer say little about a tail; until then hedge_delay_s falls back to the cap

# Latencies under this count as this much when ranking: a zero EWMA (virtual time,
# or none known yet) would cancel the outstanding factor and send every
# concurrent request to the same node.
LATENCY_FLOOR_S = 1e-4


@dataclass(slots=True)
class _NodeLatency:
    outstanding: int = 0
    ewma: float | None = None
    recent: deque[float] = field(default_factory=deque)
    samples: int = 0
    failures: int = 0
    censored: int = 0
    last_sample_at: float | None = None


class LatencyTracker:
    """Per node: requests in flight, an EWMA of successful latencies, and a window of recent ones.

    Failures are not folded in: a refused connection answers in a millisecond,
    and folding that would make a dead node look like the fastest. Nor do they
    penalise the EWMA: failing peers are the circuit breaker's concern (they
    rank last through it), and a penalty constant here would be a second,
    unaligned judgement of the same thing. They are only counted.

    A request cancelled unanswered (a hedge won, the deadline passed) is
    censored: its latency is at least the time it ran. ``end_censored`` folds
    that lower bound in when it exceeds the EWMA, or when nothing is known yet,
    and ignores it otherwise, since it then says nothing the EWMA does not. Without
    this a node that has stopped answering, and so only ever loses races, would
    keep the fast EWMA of its last answers and keep being asked first.
    """

    def __init__(self, clock: Clock, alpha: float = 0.3, window: int = 100) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], not {alpha}")
        if window < 1:
            raise ValueError(f"window must be at least 1 sample, not {window}")
        self.clock = clock  # public: callers time requests on the same clock
        self.alpha = alpha
        self.window = window
        self._nodes: dict[str, _NodeLatency] = {}

    def begin(self, node: str) -> float:
        """Count a request to ``node`` as outstanding; returns its start time, for ``elapsed``."""
        self._node(node).outstanding += 1
        return self.clock.now()

    def elapsed(self, started: float) -> float:
        """Seconds since a ``begin``, on the tracker's clock."""
        return self.clock.now() - started

    def end(self, node: str, seconds: float, ok: bool) -> None:
        """The request finished; a successful one's latency is folded in."""
        entry = self._finish(node)
        if ok:
            self._fold(entry, seconds)
        else:
            entry.failures += 1

    def end_censored(self, node: str, seconds: float) -> None:
        """The request was cancelled unanswered after ``seconds``: a lower bound of its latency."""
        entry = self._finish(node)
        entry.censored += 1
        if entry.ewma is None or seconds > entry.ewma:
            self._fold(entry, seconds)

    def _finish(self, node: str) -> _NodeLatency:
        entry = self._node(node)
        entry.outstanding = max(0, entry.outstanding - 1)  # an unmatched end must not go negative
        return entry

    def _fold(self, entry: _NodeLatency, seconds: float) -> None:
        previous = entry.ewma
        entry.ewma = seconds if previous is None else self.alpha * seconds + (1.0 - self.alpha) * previous
        entry.recent.append(seconds)
        if len(entry.recent) > self.window:
            entry.recent.popleft()
        entry.samples += 1
        entry.last_sample_at = self.clock.now()

    def _node(self, node: str) -> _NodeLatency:
        entry = self._nodes.get(node)
        if entry is None:
            entry = self._nodes[node] = _NodeLatency()
        return entry

    def forget(self, node: str) -> None:
        """Drop what is known of a node (it left; if it returns, it is explored afresh)."""
        self._nodes.pop(node, None)

    def outstanding(self, node: str) -> int:
        entry = self._nodes.get(node)
        return 0 if entry is None else entry.outstanding

    def ewma(self, node: str) -> float | None:
        entry = self._nodes.get(node)
        return None if entry is None else entry.ewma

    def p95(self, node: str) -> float | None:
        """Nearest-rank 95th percentile of the recent window; None below P95_MIN_SAMPLES samples."""
        entry = self._nodes.get(node)
        if entry is None or len(entry.recent) < P95_MIN_SAMPLES:
            return None
        ordered = sorted(entry.recent)
        return ordered[math.ceil(0.95 * len(ordered)) - 1]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = self.clock.now()
        return {node: self._describe(node, entry, now) for node, entry in self._nodes.items()}

    def _describe(self, node: str, entry: _NodeLatency, now: float) -> dict[str, Any]:
        age = None if entry.last_sample_at is None else now - entry.last_sample_at
        return {
            "outstanding": entry.outstanding, "ewma_s": entry.ewma, "p95_s": self.p95(node),
            "samples": entry.samples, "failures": entry.failures, "censored": entry.censored,
            "last_sample_age_s": age,
        }


def rank_replicas(candidates: Sequence[str], local_id: str, tracker: LatencyTracker,
                  breakers: BreakerBoard | None = None) -> list[str]:
    """The order to try the replicas of one partition.

    The local node first (no network hop); then the others by
    ``ewma * (outstanding + 1)`` ascending, with nodes whose breaker would refuse
    them last (still listed: when nothing else is left they are worth a try).
    A node with no EWMA yet is costed at the lowest known one, so new and
    returned nodes get traffic and a latency. Ties keep candidate order.
    """
    unique = list(dict.fromkeys(candidates))
    remote = [node for node in unique if node != local_id]
    local = [local_id] if len(remote) < len(unique) else []
    unknown_cost = _exploration_ewma(remote, tracker)

    def key(node: str) -> tuple[bool, float]:
        refused = breakers is not None and not breakers.would_allow(node)
        return refused, _cost(node, tracker, unknown_cost)

    return local + sorted(remote, key=key)


def _exploration_ewma(nodes: Sequence[str], tracker: LatencyTracker) -> float:
    known = [ewma for ewma in (tracker.ewma(node) for node in nodes) if ewma is not None]
    return min(known, default=0.0)


def _cost(node: str, tracker: LatencyTracker, unknown_ewma: float) -> float:
    ewma = tracker.ewma(node)
    latency = max(unknown_ewma if ewma is None else ewma, LATENCY_FLOOR_S)
    return latency * (tracker.outstanding(node) + 1)


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    floor_ms: float = 20.0  # never hedge sooner: below this a hedge mostly duplicates work
    cap_ms: float = 1000.0  # never wait longer, and the delay for a node we know nothing of
    max_ratio: float = 0.05  # hedges per primary request, in the long run
    burst: float = 5.0  # token bucket capacity: hedges available at once

    def __post_init__(self) -> None:
        if not self.floor_ms >= 0.0:
            raise ValueError(f"floor_ms must not be negative, not {self.floor_ms}")
        if not self.cap_ms >= self.floor_ms:
            raise ValueError(f"cap_ms ({self.cap_ms}) must be at least floor_ms ({self.floor_ms})")
        if not 0.0 <= self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in [0, 1], not {self.max_ratio}")
        if not self.burst >= 1.0:
            raise ValueError(f"burst must be at least 1 (a hedge spends a whole token), not {self.burst}")


def hedge_delay_s(node: str, tracker: LatencyTracker, settings: HedgeSettings) -> float:
    """How long to wait for ``node`` before hedging: its recent p95, clamped to [floor, cap].

    Without enough samples, the cap: a node we know nothing of is not hedged early.
    """
    p95 = tracker.p95(node)
    if p95 is None:
        return settings.cap_ms / 1000.0
    return min(max(p95, settings.floor_ms / 1000.0), settings.cap_ms / 1000.0)


# Tokens are kept in millionths: 0.05 added twenty times in floating point can
# come out a hair under 1.0 and refuse a hedge the budget has earned.
_MICRO = 1_000_000


class HedgeBudget:
    """A token bucket: each primary request deposits ``max_ratio`` tokens, each hedge spends one.

    It starts full, so over any run ``hedges_sent <= max_ratio * requests + burst``.
    """

    def __init__(self, settings: HedgeSettings) -> None:
        self.settings = settings
        self._deposit = round(settings.max_ratio * _MICRO)
        self._capacity = round(settings.burst * _MICRO)
        self._tokens = self._capacity
        self.requests = 0
        self.hedges_sent = 0
        self.hedges_denied = 0
        self.hedges_won = 0

    @property
    def tokens(self) -> float:
        return self._tokens / _MICRO

    def note_request(self) -> None:
        """A primary request was sent."""
        self.requests += 1
        self._tokens = min(self._capacity, self._tokens + self._deposit)

    def try_spend(self) -> bool:
        """Take a token for a hedge; False (and counted) when the budget is spent."""
        if self._tokens < _MICRO:
            self.hedges_denied += 1
            return False
        self._tokens -= _MICRO
        self.hedges_sent += 1
        return True

    def note_hedge_won(self) -> None:
        """The hedge answered before the primary (what hedging bought)."""
        self.hedges_won += 1

    def snapshot(self) -> dict[str, float]:
        return {
            "requests": self.requests, "hedges_sent": self.hedges_sent, "hedges_denied": self.hedges_denied,
            "hedges_won": self.hedges_won, "tokens": self.tokens,
        }
