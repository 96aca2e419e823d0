"""observability.py: JSON logs carry request ids; aiomonitor listens on loopback only; the
event-loop lag monitor (virtual time, then a really blocked loop); collectors export SQLite
figures from the storage snapshot, never reading SQLite at scrape time."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest

from meshrag.clock import VirtualClock
from meshrag.cluster.breaker import BreakerBoard, BreakerSettings
from meshrag.cluster.scatter import ScatterPolicy
from meshrag.cluster.selection import HedgeBudget, HedgeSettings, LatencyTracker
from meshrag.cluster.repair import Progress
from meshrag.cluster.service import ClusterStats
from meshrag.errors import ConfigError
from meshrag.localnode import free_port
from meshrag.observability import (
    ClusterCollector, JsonFormatter, LoopLagMonitor, Metrics, StorageSnapshot, request_id_var, start_monitor,
)


def test_json_log_lines_carry_the_request_id() -> None:
    token = request_id_var.set("abc123")
    try:
        record = logging.LogRecord("meshrag.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert entry["msg"] == "hello world" and entry["request_id"] == "abc123" and entry["level"] == "info"


def test_each_node_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.documents_written.labels(status="created").inc()
    assert b'meshrag_documents_written_total{status="created"} 1.0' in first.render()
    assert b'status="created"' not in second.render()


def _free_port_run() -> int:
    """A port with the next two free as well (the monitor takes three)."""
    for _ in range(50):
        port = free_port()
        if port + 2 < 65536 and all(_bindable(p) for p in (port + 1, port + 2)):
            return port
    raise AssertionError("no three free ports in a row")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


async def test_monitor_accepts_connections_on_loopback() -> None:
    port = _free_port_run()
    monitor = start_monitor(asyncio.get_running_loop(), port)
    try:
        for _ in range(50):  # the monitor binds from its own thread
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("aiomonitor did not listen")
    finally:
        monitor.close()


async def test_a_monitor_port_in_use_is_refused_at_once_naming_it() -> None:
    """aiomonitor itself would wait forever on a taken port (the test above once hung 300 s)."""
    port = _free_port_run()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port + 1))
        squatter.listen()
        with pytest.raises(ConfigError, match=f"port {port + 1} on 127.0.0.1 is in use") as refused:
            start_monitor(asyncio.get_running_loop(), port)
    assert refused.value.field == "observability.monitor_port"


# ------------------------------------------------------------------ event-loop lag
class VirtualLoop:
    """A clock that moves only when the monitor sleeps; each sleep oversleeps by the next stall."""

    def __init__(self, stalls: list[float]) -> None:
        self.now = 0.0
        self.stalls = list(stalls)
        self.asked: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.now += seconds + (self.stalls.pop(0) if self.stalls else 0.0)


async def test_lag_is_how_much_later_than_asked_the_sleep_woke() -> None:
    loop = VirtualLoop([0.0, 0.2, 0.003, -0.001])
    seen: list[float] = []
    monitor = LoopLagMonitor(seen.append, interval_s=0.05, now=loop.clock, sleep=loop.sleep)
    for _ in range(4):
        await monitor.tick()
    assert loop.asked == [0.05] * 4
    assert seen == [0.0, pytest.approx(0.2), pytest.approx(0.003), 0.0], "a timer firing early is no lag"


async def test_lag_lands_in_the_event_loop_lag_histogram() -> None:
    metrics = Metrics()
    loop = VirtualLoop([0.3, 0.0005])
    monitor = LoopLagMonitor(metrics.loop_lag.observe, interval_s=0.1, now=loop.clock, sleep=loop.sleep)
    await monitor.tick()
    await monitor.tick()
    text = metrics.render().decode()
    assert 'meshrag_event_loop_lag_seconds_bucket{le="0.25"} 1.0' in text
    assert 'meshrag_event_loop_lag_seconds_bucket{le="0.5"} 2.0' in text
    assert "meshrag_event_loop_lag_seconds_count 2.0" in text


async def test_a_blocked_real_loop_shows_up_as_lag() -> None:
    seen: list[float] = []
    task = asyncio.create_task(LoopLagMonitor(seen.append, interval_s=0.01).run())
    await asyncio.sleep(0.03)
    time.sleep(0.1)  # what a long step on the loop does to everything else on it
    await asyncio.sleep(0.03)
    task.cancel()
    assert max(seen) >= 0.07


# ------------------------------------------------------------------ collectors
class UnreadHints:
    """A hint store whose SQLite a scrape must not read (its in-memory counters it may)."""

    dropped: dict[str, int] = {}

    def pending(self) -> Any:
        raise AssertionError("a scrape read the hint store (SQLite) on the event loop")


class ScrapedCluster:
    """What ClusterCollector reads of the cluster service."""

    repairer = SimpleNamespace(progress=Progress())
    stats = ClusterStats()
    hints = UnreadHints()

    admin = SimpleNamespace(ring_view=lambda: {"under_replicated": [3], "local_partitions": 2})

    def __init__(self) -> None:
        clock = VirtualClock(start=0.0)
        hedging = HedgeSettings()
        self.breakers = BreakerBoard(BreakerSettings(consecutive_failures=1), clock)
        policy = ScatterPolicy("n1", LatencyTracker(clock), self.breakers, hedging, HedgeBudget(hedging))
        self.search = SimpleNamespace(scatterer=SimpleNamespace(policy=policy))

    def name_of(self, node_id: str) -> str:
        return f"name-of-{node_id}"


def test_search_hedges_and_open_breakers_are_exported() -> None:
    cluster = ScrapedCluster()
    metrics = Metrics()
    metrics.registry.register(ClusterCollector(cluster, StorageSnapshot()))
    budget = cluster.search.scatterer.policy.budget
    for _ in range(40):
        budget.note_request()
    assert budget.try_spend()
    cluster.breakers.set_peers(["n2", "n3", "n4"])
    cluster.breakers.record("n2", False)
    text = metrics.render().decode()
    assert "meshrag_search_requests_total 40.0" in text
    assert 'meshrag_search_hedges_total{outcome="sent"} 1.0' in text
    assert 'meshrag_peer_breaker_open{peer="name-of-n2"} 1.0' in text
    assert 'meshrag_peer_breaker_events_total{event="opens"} 1.0' in text


def test_pending_hints_are_exported_from_the_storage_snapshot() -> None:
    metrics = Metrics()
    snapshot = StorageSnapshot()
    metrics.registry.register(ClusterCollector(ScrapedCluster(), snapshot))
    assert "meshrag_hints_pending_documents{" not in metrics.render().decode()
    snapshot.pending_hints = {"n2": SimpleNamespace(documents=7)}
    text = metrics.render().decode()
    assert 'meshrag_hints_pending_documents{target="name-of-n2"} 7.0' in text
    assert "meshrag_partitions_under_replicated 1.0" in text
