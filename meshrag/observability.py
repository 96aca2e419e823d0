"""Metrics, structured logs, request ids, event-loop lag and the aiomonitor console.

Each node owns its own Prometheus registry (several nodes may run in one
test process), exposed at /metrics. A scrape renders on the event loop, so
nothing here reads SQLite: figures that live in SQLite (pending hints, stored
documents) are read in the storage executor by node.py and handed to the
collectors as a snapshot (StorageSnapshot).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from meshrag.errors import ConfigError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Gossip's probe timeout is 500 ms: lag of tens of milliseconds already eats into it.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LAG_INTERVAL_S = 0.05


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class Metrics:
    """Every metric a node exports; one instance per node."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("meshrag_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.http_latency = Histogram("meshrag_http_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.documents_written = Counter("meshrag_documents_written_total", "Document writes by outcome", ["status"], registry=r)
        self.chunks_embedded = Counter("meshrag_chunks_embedded_total", "Chunks embedded at ingest", registry=r)
        self.embed_batches = Counter("meshrag_embed_batches_total", "Embedder batches run", registry=r)
        self.embed_batch_size = Histogram("meshrag_embed_batch_texts", "Texts per embedder batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.search_latency = Histogram("meshrag_search_seconds", "Search latency by stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.partial_searches = Counter("meshrag_search_partial_total", "Searches answered with coverage < 1", registry=r)
        self.generation_ttft = Histogram("meshrag_generation_first_token_seconds", "Time to first generated token", buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("meshrag_generated_tokens_total", "Generated stream pieces", registry=r)
        self.generations = Counter("meshrag_generations_total", "Generations by outcome", ["outcome"], registry=r)
        self.generation_failovers = Counter(
            "meshrag_generation_failovers_total", "Answers continued on another generator after a mid-stream failure", registry=r)
        self.embed_parts = Counter(
            "meshrag_embed_parts_total",
            "Parts of ingest batches this coordinator sent to embedders, by where (local, remote) and outcome (ok, failed, busy)",
            ["where", "outcome"], registry=r)
        self.generation_retries = Counter(
            "meshrag_generation_retries_total", "Generation attempts that failed before their first piece and were retried", registry=r)
        self.stored_documents = Gauge("meshrag_stored_documents", "Live documents held by this node", registry=r)
        self.stored_chunks = Gauge("meshrag_stored_chunks", "Chunks held by this node", registry=r)
        self.ready = Gauge("meshrag_ready", "1 when the node serves every role it has", registry=r)
        self.loop_lag = Histogram(
            "meshrag_event_loop_lag_seconds", "How late the event loop woke a short sleep (gossip shares the loop)",
            buckets=LAG_BUCKETS, registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LoopLagMonitor:
    """Measures event-loop lag: sleeps ``interval_s`` and records how much later than asked it
    woke up. Anything that holds the loop (a long computation, blocking I/O) shows up here, and
    is time gossip's probes and acks wait, the cause of false suspicions. Clock and sleep are
    injected, so tests drive it with virtual time; node.py runs it on the real loop."""

    def __init__(
        self,
        observe: Callable[[float], None],
        interval_s: float = LAG_INTERVAL_S,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._observe = observe
        self._interval_s = interval_s
        self._now = now
        self._sleep = sleep

    async def tick(self) -> float:
        """One measurement: the lag it observed (never negative: timers may fire a little early)."""
        started = self._now()
        await self._sleep(self._interval_s)
        lag = max(0.0, self._now() - started - self._interval_s)
        self._observe(lag)
        return lag

    async def run(self) -> None:
        while True:
            await self.tick()


@dataclass
class StorageSnapshot:
    """What /metrics exports from SQLite, as last read in the storage executor (node.py
    refreshes it every few seconds), so a scrape never reads SQLite on the event loop."""

    pending_hints: Mapping[str, Any] = field(default_factory=dict)  # target node id -> HintStore pending entry


class GossipCollector:
    """Reads the membership's counters at scrape time (they live in the pure protocol code)."""

    _COUNTERS = ("packets_sent", "bytes_sent", "packets_received", "bytes_received", "push_pulls",
                 "push_pull_failures", "refutations", "internal_errors", "unbound_acks")

    def __init__(self, members: Any) -> None:
        self._members = members

    def collect(self) -> Any:
        stats = self._members.stats
        for name in self._COUNTERS:
            yield CounterMetricFamily(f"meshrag_gossip_{name}", f"Gossip {name.replace('_', ' ')}", value=getattr(stats, name))
        rejected = CounterMetricFamily("meshrag_gossip_rejected_packets", "Gossip packets dropped, by reason", labels=["reason"])
        for reason, count in sorted(stats.rejections.items()):
            rejected.add_metric([reason], count)
        yield rejected
        states = GaugeMetricFamily("meshrag_gossip_members", "Known members by state", labels=["state"])
        counts: dict[str, int] = {}
        for member in self._members.members():
            counts[member.state.value] = counts.get(member.state.value, 0) + 1
        for state, count in sorted(counts.items()):
            states.add_metric([state], count)
        yield states
        yield GaugeMetricFamily("meshrag_gossip_health_score", "Lifeguard local health (0 = healthy)", value=self._members.health_score)


class SecurityCollector:
    """Signed /_mesh/ traffic refused, by reason (security/signing.py REASONS): requests this
    node refused, and answers it refused from others. ``auth()`` is None in dev mode."""

    def __init__(self, auth: Callable[[], Any]) -> None:
        self._auth = auth

    def collect(self) -> Any:
        auth = self._auth()
        requests = CounterMetricFamily("meshrag_mesh_rejected_requests", "Node-to-node requests refused (401), by reason", labels=["reason"])
        responses = CounterMetricFamily("meshrag_mesh_rejected_responses", "Node-to-node answers whose signature failed, by reason", labels=["reason"])
        if auth is not None:
            for family, counts in ((requests, auth.rejected_requests), (responses, auth.rejected_responses)):
                for reason, count in sorted(counts.items()):
                    family.add_metric([reason], count)
        yield requests
        yield responses


class ClusterCollector:
    """Replication and repair state at scrape time: transfers, pending hints (from the storage
    snapshot), ring health."""

    def __init__(self, cluster: Any, storage: StorageSnapshot) -> None:
        self._cluster = cluster
        self._storage = storage

    def collect(self) -> Any:
        progress = self._cluster.repairer.progress
        moved = CounterMetricFamily("meshrag_repair_documents", "Documents moved by anti-entropy and rebalancing", labels=["direction"])
        moved.add_metric(["in"], progress.docs_in)
        moved.add_metric(["out"], progress.docs_out)
        yield moved
        sent = CounterMetricFamily("meshrag_repair_bytes", "Bytes moved by anti-entropy and rebalancing", labels=["direction"])
        sent.add_metric(["in"], progress.bytes_in)
        sent.add_metric(["out"], progress.bytes_out)
        yield sent
        yield CounterMetricFamily("meshrag_repair_passes", "Completed anti-entropy passes", value=progress.passes)
        yield CounterMetricFamily("meshrag_repair_errors", "Failed partition syncs", value=progress.errors)
        yield CounterMetricFamily("meshrag_partitions_dropped", "Partitions handed off and dropped here", value=progress.dropped)
        yield from self._write_path_counters()
        yield from self._search_counters()
        hints = GaugeMetricFamily("meshrag_hints_pending_documents", "Hinted documents waiting for their replica", labels=["target"])
        for target, pending in sorted(self._storage.pending_hints.items()):
            hints.add_metric([self._cluster.name_of(target)], pending.documents)
        yield hints
        view = self._cluster.admin.ring_view()
        yield GaugeMetricFamily("meshrag_partitions_under_replicated", "Partitions with fewer live owners than N, or moving", value=len(view["under_replicated"]))
        yield GaugeMetricFamily("meshrag_partitions_held", "Partitions stored on this node", value=view["local_partitions"])


    def _search_counters(self) -> Any:
        """Scatter-gather: node requests sent, hedges, and each peer's breaker (cluster/scatter.py)."""
        policy = self._cluster.search.scatterer.policy
        budget = policy.budget
        yield CounterMetricFamily("meshrag_search_requests", "Node requests this coordinator's searches sent (hedges not counted)",
                                  value=budget.requests)
        hedges = CounterMetricFamily("meshrag_search_hedges", "Hedged node requests: sent, denied by the budget, won the race",
                                     labels=["outcome"])
        for outcome, count in (("sent", budget.hedges_sent), ("denied", budget.hedges_denied), ("won", budget.hedges_won)):
            hedges.add_metric([outcome], count)
        yield hedges
        breakers = policy.breakers
        states = GaugeMetricFamily("meshrag_peer_breaker_open", "1 while this node's breaker for a peer is open or half-open",
                                   labels=["peer"])
        for peer, state in sorted(breakers.snapshot().items()):
            states.add_metric([self._cluster.name_of(peer)], 0 if state["state"] == "closed" else 1)
        yield states
        events = CounterMetricFamily("meshrag_peer_breaker_events", "Breaker transitions and refusals, over every peer",
                                     labels=["event"])
        for event, count in sorted(breakers.counters().items()):
            events.add_metric([event], count)
        yield events

    def _write_path_counters(self) -> Any:
        """Refusals and drops of the write path (cluster/service.py's stats, the hint store's drops)."""
        stats = self._cluster.stats
        drift = CounterMetricFamily("meshrag_clock_drift_rejections", "Versions refused or not observed: stamped beyond "
                                    "cluster.max_clock_drift_s ahead of this node's clock", labels=["source"])
        for source, count in sorted(stats.drift_rejections.items()):
            drift.add_metric([source], count)
        yield drift
        yield CounterMetricFamily("meshrag_not_owner_refusals", "Applies refused: partition neither owned nor handed off here",
                                  value=stats.not_owner_refusals)
        yield CounterMetricFamily("meshrag_read_repairs", "Replicas brought up to date by a read", value=stats.read_repairs)
        dropped = CounterMetricFamily("meshrag_hints_dropped_documents", "Hinted documents dropped (repair brings them), by reason",
                                      labels=["reason"])
        for reason, count in sorted(self._cluster.hints.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the task that logged."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str, node_name: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {node_name} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries are chatty at info; keep their warnings only.
    for noisy in ("aiohttp.access", "sentence_transformers", "transformers", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Stopwatch:
    """Milliseconds since construction, for the `timings` of responses."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def ms(self) -> float:
        return round((time.perf_counter() - self._start) * 1000, 2)


MONITOR_PORTS = 3  # aiomonitor's terminal UI, web UI and console: port, port + 1, port + 2


def start_monitor(loop: Any, port: int) -> Any:
    """aiomonitor on loopback only: it is a live Python console into the node. Its ports are
    checked first: aiomonitor binds from its own thread, and when a port is taken its start()
    waits forever instead of failing."""
    import aiomonitor  # type: ignore[import-untyped]

    taken = [p for p in range(port, port + MONITOR_PORTS) if not _loopback_port_free(p)]
    if taken:
        raise ConfigError(f"observability.monitor_port = {port}: port {taken[0]} on 127.0.0.1 is in use "
                          f"(the monitor needs {port}..{port + MONITOR_PORTS - 1})", field="observability.monitor_port")
    monitor = aiomonitor.Monitor(loop, host="127.0.0.1", termui_port=port, webui_port=port + 1, console_port=port + 2)
    monitor.start()
    return monitor


def _loopback_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers: TIME_WAIT is no owner
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
