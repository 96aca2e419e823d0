"""Metrics, structured logs, request ids and the aiomonitor console.

Each node owns its own Prometheus registry (several nodes may run in one
test process), exposed at /metrics.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


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
        self.generation_ttft = Histogram("meshrag_generation_first_token_seconds", "Time to first generated token", buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("meshrag_generated_tokens_total", "Generated stream pieces", registry=r)
        self.generations = Counter("meshrag_generations_total", "Generations by outcome", ["outcome"], registry=r)
        self.stored_documents = Gauge("meshrag_stored_documents", "Live documents held by this node", registry=r)
        self.stored_chunks = Gauge("meshrag_stored_chunks", "Chunks held by this node", registry=r)
        self.ready = Gauge("meshrag_ready", "1 when the node serves every role it has", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class GossipCollector:
    """Reads the membership's counters at scrape time (they live in the pure protocol code)."""

    _COUNTERS = ("packets_sent", "bytes_sent", "packets_received", "bytes_received", "push_pulls",
                 "push_pull_failures", "refutations", "internal_errors")

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


class ClusterCollector:
    """Replication and repair state at scrape time: transfers, pending hints, ring health."""

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster

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
        hints = GaugeMetricFamily("meshrag_hints_pending_documents", "Hinted documents waiting for their replica", labels=["target"])
        for target, pending in sorted(self._cluster.hints.pending().items()):
            hints.add_metric([self._cluster.name_of(target)], pending.documents)
        yield hints
        view = self._cluster.ring_view()
        yield GaugeMetricFamily("meshrag_partitions_under_replicated", "Partitions with fewer live owners than N, or moving", value=len(view["under_replicated"]))
        yield GaugeMetricFamily("meshrag_partitions_held", "Partitions stored on this node", value=view["local_partitions"])


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


def start_monitor(loop: Any, port: int) -> Any:
    """aiomonitor on loopback only: it is a live Python console into the node."""
    import aiomonitor

    monitor = aiomonitor.Monitor(loop, host="127.0.0.1", termui_port=port, webui_port=port + 1, console_port=port + 2)
    monitor.start()
    return monitor
