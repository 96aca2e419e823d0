"""A rolling history of request latencies by route class, for the status page's chart.

Prometheus histograms (observability.py) are cumulative since start: good for a
scraper, useless for "how did searches behave over the last few minutes" on a
node nobody scrapes. This keeps, per route class (search, ingest, ask, read),
one bucket per ``bucket_s`` seconds over the last ``window_s`` seconds, and
answers p50/p99 and a count per bucket.

Memory is bounded: at most ``window_s / bucket_s`` buckets per class, each
holding at most ``max_samples`` latencies (beyond that a uniform reservoir
sample, so the percentiles stay unbiased under load). A closed bucket's
figures are computed once, when the next bucket opens, so a snapshot sorts at
most the open bucket's samples. Pure: clock and random source injected.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

# (method, canonical route) -> class. Everything else (probes, /metrics, the status page's own
# polling of /v1/cluster) is left out: it would bury the requests an operator cares about.
ROUTE_CLASSES: dict[tuple[str, str], str] = {
    ("POST", "/v1/search"): "search",
    ("POST", "/v1/documents"): "ingest",
    ("DELETE", "/v1/documents/{doc_id}"): "ingest",
    ("GET", "/v1/documents/{doc_id}"): "read",
    ("POST", "/v1/ask"): "ask",
    ("POST", "/v1/chat/completions"): "ask",
}
CLASSES = ("search", "ingest", "ask", "read")
BUCKET_S = 5.0
WINDOW_S = 300.0
MAX_SAMPLES = 512


def route_class(method: str, route: str) -> str | None:
    """The class a request to ``route`` counts under, or None when it is not charted."""
    return ROUTE_CLASSES.get((method, route))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty ascending list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class _Bucket:
    start: float
    count: int = 0
    errors: int = 0
    samples: list[float] = field(default_factory=list)
    summary: dict[str, Any] | None = None  # set once the bucket is closed

    def add(self, seconds: float, error: bool, max_samples: int, rng: random.Random) -> None:
        self.count += 1
        self.errors += error
        if len(self.samples) < max_samples:
            self.samples.append(seconds)
            return
        slot = rng.randrange(self.count)  # reservoir: each of the count latencies kept with equal chance
        if slot < max_samples:
            self.samples[slot] = seconds

    def figures(self) -> dict[str, Any]:
        if self.summary is not None:
            return self.summary
        ordered = sorted(self.samples)
        return {
            "t": self.start, "count": self.count, "errors": self.errors,
            "p50_ms": round(percentile(ordered, 0.50) * 1000, 3), "p99_ms": round(percentile(ordered, 0.99) * 1000, 3),
        }

    def close(self) -> None:
        self.summary = self.figures()
        self.samples = []  # the figures are all that is read from now on


class LatencyHistory:
    """Latencies recorded by the request path, summarised per class and bucket."""

    def __init__(
        self, now: Callable[[], float], *, bucket_s: float = BUCKET_S, window_s: float = WINDOW_S,
        max_samples: int = MAX_SAMPLES, rng: random.Random | None = None,
    ) -> None:
        if bucket_s <= 0 or window_s < bucket_s or max_samples < 1:
            raise ValueError("bucket_s > 0, window_s >= bucket_s and max_samples >= 1 are required")
        self._now = now
        self.bucket_s = bucket_s
        self.window_s = window_s
        self._max_samples = max_samples
        self._rng = rng or random.Random()
        self._buckets: dict[str, deque[_Bucket]] = {name: deque() for name in CLASSES}

    def record(self, route_class: str, seconds: float, error: bool = False) -> None:
        """One finished request of ``route_class`` that took ``seconds`` (``error``: a 5xx)."""
        buckets = self._buckets[route_class]
        start = self._bucket_start(self._now())
        if not buckets or buckets[-1].start < start:
            if buckets:
                buckets[-1].close()
            buckets.append(_Bucket(start))
        buckets[-1].add(max(0.0, seconds), error, self._max_samples, self._rng)
        self._expire(buckets, start)

    def snapshot(self) -> dict[str, Any]:
        """Every class's buckets within the window, oldest first (empty buckets are absent)."""
        now = self._now()
        current = self._bucket_start(now)
        classes = {}
        for name, buckets in self._buckets.items():
            self._expire(buckets, current)
            classes[name] = [bucket.figures() for bucket in buckets]
        return {"now": now, "bucket_s": self.bucket_s, "window_s": self.window_s, "classes": classes}

    def _bucket_start(self, t: float) -> float:
        return math.floor(t / self.bucket_s) * self.bucket_s

    def _expire(self, buckets: deque[_Bucket], current: float) -> None:
        """Drop buckets that started a whole window or more before the current one."""
        oldest = current - self.window_s + self.bucket_s
        while buckets and buckets[0].start < oldest:
            buckets.popleft()
