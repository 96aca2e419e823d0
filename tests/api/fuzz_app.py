"""The node's real public aiohttp app (routes, middlewares, validation) over a recording stub
node, for fuzzing in-process: what reaches the stub's pipeline is what a node would have
started to store or run. Used by tests/api/test_fuzz_api.py and scripts/fuzz_api.py.
"""

from __future__ import annotations

import asyncio
import collections
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web

from meshrag.api.api_keys import ApiKeyRoutes
from meshrag.api.auth import api_key_middleware
from meshrag.api.errors import error_middleware, metrics_middleware
from meshrag.api.limits import RequestLimits
from meshrag.api.openai_compat import OpenAICompatApi
from meshrag.api.public import PublicApi
from meshrag.clock import SystemClock
from meshrag.config import Config
from meshrag.observability import Metrics
from meshrag.rag.pipeline import IngestOutcome, SearchOutcome
from meshrag.security.api_keys import ApiKeyStore
from tests.api.fuzz_bodies import Body, Limits


class _Pipeline:
    def __init__(self, reached: collections.Counter[str]) -> None:
        self.reached = reached

    async def ingest(self, documents: Any, consistency: str, session: Any) -> IngestOutcome:
        self.reached["ingest_documents"] += len(documents)
        return IngestOutcome([], "session")

    async def delete(self, doc_id: str, consistency: str, session: Any) -> IngestOutcome:
        self.reached["delete"] += 1
        raise AssertionError("no fuzzed body deletes")

    async def search(self, request: Any) -> SearchOutcome:
        self.reached["search"] += 1
        return SearchOutcome([], 1.0, [])

    async def retrieve_for_ask(self, request: Any) -> tuple[list[Any], SearchOutcome]:
        self.reached["retrieve"] += 1
        return [], SearchOutcome([], 1.0, [])

    async def _answer(self) -> AsyncIterator[str]:
        self.reached["generate"] += 1
        yield "ok"

    def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[str]:
        return self._answer()

    def generate_messages(self, *args: Any, **kwargs: Any) -> AsyncIterator[str]:
        return self._answer()


class _Admin:
    def __init__(self, reached: collections.Counter[str]) -> None:
        self.reached = reached

    def remove(self, node: str) -> dict[str, Any]:
        self.reached["remove"] += 1
        return {}


class _Cluster:
    def __init__(self, reached: collections.Counter[str]) -> None:
        self.admin = _Admin(reached)


class _Generation:
    def models(self) -> dict[str, list[Any]]:
        return {"stub-model": []}


class StubNode:
    """What the public routes need from node.py, recording what valid requests reach."""

    def __init__(self, config: Config, dim: int, data_dir: Path) -> None:
        self.config = config
        self.metrics = Metrics()
        self.reached: collections.Counter[str] = collections.Counter()
        self.pipeline = _Pipeline(self.reached)
        self.cluster = _Cluster(self.reached)
        self.generation = _Generation()
        self.api_keys = ApiKeyStore(data_dir)
        self._dim = dim

    def readiness(self) -> dict[str, bool]:
        return {"storage": True, "embedder": True}

    def embedding_dim(self) -> int:
        return self._dim

    async def cluster_view(self) -> dict[str, Any]:
        return {}

    def stamp(self) -> int:
        return time.time_ns()

    async def api_keys_changed(self) -> None:
        self.reached["api_keys_created"] += 1


def fuzz_config(max_body_bytes: int = 64 * 1024) -> Config:
    """Small limits, so that bodies past them stay cheap to build and send."""
    config = Config()
    config.api.max_body_bytes = max_body_bytes
    config.api.max_documents_per_request = 16
    config.api.max_text_chars = 2000
    config.api.max_k = 100
    config.api.max_concurrent_per_client = 0  # the fuzzer's own concurrency is not under test here
    config.generation.max_tokens = 32
    return config


def limits_of(config: Config, dim: int) -> Limits:
    api = config.api
    return Limits(api.max_documents_per_request, api.max_text_chars, api.max_k, api.max_body_bytes, config.generation.max_tokens, dim)


def build_app(node: StubNode) -> web.Application:
    """The public part of node.py's _start_http: the same middlewares in the same order."""
    app = web.Application(middlewares=[metrics_middleware(node.metrics), error_middleware, api_key_middleware(node.api_keys, lambda: False)],
                          client_max_size=node.config.api.max_body_bytes)
    RequestLimits(node.config.api, SystemClock()).install(app)
    for routes in (PublicApi(node).routes(), OpenAICompatApi(node).routes(), ApiKeyRoutes(node).routes()):  # type: ignore[arg-type]
        app.add_routes(routes)
    return app


@dataclass
class Report:
    bodies: int = 0
    by_status: collections.Counter[int] = field(default_factory=collections.Counter)
    by_code: collections.Counter[str] = field(default_factory=collections.Counter)
    by_family: collections.Counter[str] = field(default_factory=collections.Counter)
    by_field: collections.Counter[str] = field(default_factory=collections.Counter)  # the field a 4xx named
    accepted_must_fail: list[str] = field(default_factory=list)  # a broken body answered 2xx: a finding
    server_errors: list[str] = field(default_factory=list)  # any 5xx: a finding
    crashes: list[str] = field(default_factory=list)  # no answer at all, or not the error shape
    seconds: float = 0.0

    def add(self, body: Body, status: int | None, payload: Any) -> None:
        self.bodies += 1
        self.by_family[body.family] += 1
        what = f"{body.path} {body.content_type} {body.family}: {body.what}"
        if status is None:
            self.crashes.append(f"{what}: {payload}")
            return
        self.by_status[status] += 1
        if status >= 500:
            self.server_errors.append(f"{what}: {status} {str(payload)[:300]}")
        elif 200 <= status < 300:
            if body.must_fail:
                self.accepted_must_fail.append(what)
        elif not (isinstance(payload, dict) and isinstance(payload.get("error"), dict) and "code" in payload["error"]):
            self.crashes.append(f"{what}: {status} without the error shape: {str(payload)[:300]}")
        else:
            self.by_code[f"{status} {payload['error']['code']}"] += 1
            self.by_field[str(payload["error"].get("field"))] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "bodies": self.bodies, "seconds": round(self.seconds, 1), "families": dict(self.by_family),
            "status": {str(k): v for k, v in sorted(self.by_status.items())},
            "4xx_by_code": dict(sorted(self.by_code.items(), key=lambda item: -item[1])),
            "4xx_top_fields": dict(self.by_field.most_common(15)),
            "5xx": len(self.server_errors), "crashes": len(self.crashes), "broken_bodies_accepted": len(self.accepted_must_fail),
            "examples": {"5xx": self.server_errors[:5], "crashes": self.crashes[:5], "broken_bodies_accepted": self.accepted_must_fail[:5]},
        }


async def send_all(session: aiohttp.ClientSession, base_url: str, bodies: Any, report: Report, concurrency: int = 8,
                   headers: dict[str, str] | None = None) -> None:
    """POST every body (``concurrency`` at a time) and add each answer to ``report``."""
    queue: asyncio.Queue[Body | None] = asyncio.Queue(maxsize=concurrency * 4)

    async def worker() -> None:
        while (body := await queue.get()) is not None:
            try:
                async with session.post(base_url + body.path, data=body.data,
                                        headers={"Content-Type": body.content_type, **(headers or {})}) as response:
                    raw = await response.read()
                    try:
                        payload: Any = await response.json(content_type=None) if raw else None
                    except ValueError:
                        payload = raw[:200]
                    report.add(body, response.status, payload)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                report.add(body, None, repr(exc))

    started = time.monotonic()
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    for body in bodies:
        await queue.put(body)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    report.seconds += time.monotonic() - started


async def fuzz_in_process(bodies: Any, config: Config, dim: int, concurrency: int = 8) -> tuple[Report, collections.Counter[str]]:
    """Send ``bodies`` through the real app on a loopback port; the report and what reached the stub."""
    with tempfile.TemporaryDirectory() as data_dir:
        node = StubNode(config, dim, Path(data_dir))
        runner = web.AppRunner(build_app(node), handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        report = Report()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                await send_all(session, f"http://127.0.0.1:{port}", bodies, report, concurrency)
        finally:
            await runner.cleanup()
        return report, node.reached
