"""observability.py: JSON logs carry request ids; aiomonitor listens on loopback only."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

from meshrag.localnode import free_port
from meshrag.observability import JsonFormatter, Metrics, request_id_var, start_monitor


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


async def test_monitor_accepts_connections_on_loopback() -> None:
    port = free_port()
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
