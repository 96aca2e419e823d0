"""A bounded cache of seen nonces: a captured request or datagram is accepted once.

Pure: time comes in as an argument. A nonce is remembered until its timestamp
leaves the clock window (after that the timestamp alone rejects it as stale).
The cache is bounded: when it is full, the entry with the oldest timestamp is
evicted and the acceptance floor rises to that timestamp, so anything as old
as an evicted entry is refused as stale. Eviction therefore narrows the window
(under a flood) instead of opening a replay hole.
"""

from __future__ import annotations

import heapq
from typing import Hashable

STALE = "stale"
REPLAYED = "replayed"


class ReplayCache:
    def __init__(self, window_s: float, capacity: int = 200_000) -> None:
        if window_s <= 0 or capacity < 1:
            raise ValueError("window_s must be > 0 and capacity >= 1")
        self.window_s = window_s
        self.capacity = capacity
        self._seen: set[Hashable] = set()
        self._by_time: list[tuple[float, Hashable]] = []
        self._floor = float("-inf")  # timestamps at or below it were evicted: refused as stale

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, nonce: Hashable, timestamp: float, now: float) -> str | None:
        """None if (nonce, timestamp) is fresh and new (it is remembered), else STALE or REPLAYED."""
        if abs(timestamp - now) > self.window_s or timestamp <= self._floor:
            return STALE
        self._expire(now)
        if nonce in self._seen:
            return REPLAYED
        if len(self._seen) >= self.capacity:
            oldest, evicted = heapq.heappop(self._by_time)
            self._seen.discard(evicted)
            self._floor = max(self._floor, oldest)
            if timestamp <= self._floor:
                return STALE
        self._seen.add(nonce)
        heapq.heappush(self._by_time, (timestamp, nonce))
        return None

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        by_time = self._by_time
        while by_time and by_time[0][0] < horizon:
            self._seen.discard(heapq.heappop(by_time)[1])
