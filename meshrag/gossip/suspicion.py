"""Lifeguard's dynamic suspicion timeout (LHA-Suspicion).

A suspicion starts with the longest timeout and shrinks as other members
independently confirm it: a member that only one slow node accuses gets a long
time to refute, while one that many cannot reach is declared dead quickly.
memberlist's formula, with k the expected confirmations and c those seen:

    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))

The timer is re-armed relative to the start of the suspicion at each new
confirmation, so a late confirmation can fire it at once.
"""

from __future__ import annotations

import math
from typing import Callable

from meshrag.gossip.transport import Scheduler


def suspicion_timeout(confirmations: int, expected: int, minimum: float, maximum: float) -> float:
    if expected < 1 or maximum <= minimum:
        return minimum
    fraction = math.log(confirmations + 1) / math.log(expected + 1)
    return max(minimum, maximum - (maximum - minimum) * fraction)


class Suspicion:
    """One running suspicion of one member at one version."""

    def __init__(self, accuser: str, expected: int, minimum: float, maximum: float, started_at: float,
                 scheduler: Scheduler, on_timeout: Callable[[], None]) -> None:
        self._accusers = {accuser}  # the first accuser does not count as a confirmation
        self._expected = expected
        self._minimum = minimum
        self._maximum = maximum
        self.started_at = started_at
        self._scheduler = scheduler
        self._on_timeout = on_timeout
        self._handle = scheduler.call_later(self.timeout(), self._fire)
        self._done = False

    @property
    def confirmations(self) -> int:
        return len(self._accusers) - 1

    def timeout(self) -> float:
        return suspicion_timeout(self.confirmations, self._expected, self._minimum, self._maximum)

    def confirm(self, accuser: str, now: float) -> bool:
        """Count an independent accuser; True when it was new (and worth re-gossiping)."""
        if self._done or accuser in self._accusers or self.confirmations >= self._expected:
            return False
        self._accusers.add(accuser)
        self._handle.cancel()
        remaining = self.started_at + self.timeout() - now
        self._handle = self._scheduler.call_later(max(0.0, remaining), self._fire)
        return True

    def cancel(self) -> None:
        self._done = True
        self._handle.cancel()

    def _fire(self) -> None:
        if not self._done:
            self._done = True
            self._on_timeout()
