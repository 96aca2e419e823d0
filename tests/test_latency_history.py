"""meshrag/latency_history.py: per-class buckets over a rolling window, p50/p99 per bucket,
bounded memory, on an injected clock."""

from __future__ import annotations

import random

import pytest

from meshrag.clock import VirtualClock
from meshrag.latency_history import LatencyHistory, percentile, route_class


def history(clock: VirtualClock, **kwargs: object) -> LatencyHistory:
    return LatencyHistory(clock.now, rng=random.Random(1), **kwargs)  # type: ignore[arg-type]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_requests_land_in_the_bucket_of_their_time_with_p50_p99_and_count() -> None:
    clock = VirtualClock(start=1000.0)
    latencies = history(clock)
    for ms in range(1, 101):
        latencies.record("search", ms / 1000)
    clock.advance(5.0)
    latencies.record("search", 0.5, error=True)
    [first, second] = latencies.snapshot()["classes"]["search"]
    assert first == {"t": 1000.0, "count": 100, "errors": 0, "p50_ms": 50.0, "p99_ms": 99.0}
    assert second == {"t": 1005.0, "count": 1, "errors": 1, "p50_ms": 500.0, "p99_ms": 500.0}
    assert latencies.snapshot()["classes"]["ingest"] == []


def test_buckets_older_than_the_window_are_dropped() -> None:
    clock = VirtualClock(start=0.0)
    latencies = history(clock, bucket_s=5.0, window_s=20.0)
    for _ in range(10):  # one request per bucket, over 50 s
        latencies.record("ask", 1.0)
        clock.advance(5.0)
    starts = [b["t"] for b in latencies.snapshot()["classes"]["ask"]]
    # now is 50: the window's buckets start at 35, 40, 45 (and 50, still empty)
    assert starts == [35.0, 40.0, 45.0]
    clock.advance(100.0)
    assert latencies.snapshot()["classes"]["ask"] == []


def test_a_busy_bucket_keeps_a_bounded_sample_that_still_tracks_the_percentiles() -> None:
    clock = VirtualClock(start=0.0)
    latencies = history(clock, max_samples=200)
    for i in range(10_000):  # uniform 0..9.999 s
        latencies.record("ingest", (i % 10_000) / 1000)
    [bucket] = latencies.snapshot()["classes"]["ingest"]
    assert bucket["count"] == 10_000
    assert 4_000 < bucket["p50_ms"] < 6_000
    assert bucket["p99_ms"] > 9_000
    assert len(latencies._buckets["ingest"][0].samples) == 200


def test_a_closed_bucket_keeps_its_figures_and_drops_its_samples() -> None:
    clock = VirtualClock(start=0.0)
    latencies = history(clock)
    latencies.record("read", 0.002)
    clock.advance(5.0)
    latencies.record("read", 0.004)
    closed = latencies._buckets["read"][0]
    assert closed.samples == [] and closed.summary == {"t": 0.0, "count": 1, "errors": 0, "p50_ms": 2.0, "p99_ms": 2.0}


def test_only_the_charted_routes_have_a_class() -> None:
    assert route_class("POST", "/v1/search") == "search"
    assert route_class("POST", "/v1/documents") == "ingest"
    assert route_class("POST", "/v1/chat/completions") == "ask"
    assert route_class("GET", "/v1/documents/{doc_id}") == "read"
    assert route_class("GET", "/v1/cluster") is None  # the status page's own polling
    assert route_class("GET", "/health") is None


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError):
        LatencyHistory(VirtualClock().now, bucket_s=10, window_s=5)
