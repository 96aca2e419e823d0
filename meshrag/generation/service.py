"""Generation as a cluster service: which generators exist, and one answer streamed from them.

Glue between gossip (who advertises a generator, with what model and load),
this node's own generator (called in-process, its load read live), the peers
(/_mesh/generate over HTTP) and the router's protocol logic
(generation/router.py). node.py builds it; the pipeline and the APIs call it.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Callable, Sequence

from meshrag.generation.admission import LocalGenerator
from meshrag.generation.base import GenerationRequest, GeneratorInfo, StreamReport
from meshrag.generation.remote import RemoteGenerators
from meshrag.generation.router import GeneratorRouter
from meshrag.gossip.state import Member, MemberState
from meshrag.observability import Metrics


class GenerationService:
    def __init__(
        self,
        local_id: str,
        members: Callable[[], Sequence[Member]],
        local: Callable[[], LocalGenerator | None],
        remote: RemoteGenerators,
        router_factory: Callable[[Callable[[GeneratorInfo, GenerationRequest], AsyncIterator[str]]], GeneratorRouter],
        metrics: Metrics,
    ) -> None:
        """``local``: this node's generator once loaded (None before, or without the role)."""
        self._local_id = local_id
        self._members = members
        self._local = local
        self._remote = remote
        self._metrics = metrics
        self.router = router_factory(self._open)

    def candidates(self) -> list[GeneratorInfo]:
        """Live generators: this node's own (its load read now), others' from gossip."""
        found: list[GeneratorInfo] = []
        local = self._local()
        for member in self._members():
            if member.node_id == self._local_id:
                if local is not None:
                    meta = {"http": member.address, "generator": local.metadata()}
                    info = GeneratorInfo.from_metadata(member.node_id, member.name, meta, local=True)
                    if info is not None:
                        found.append(info)
            elif member.state is MemberState.ALIVE:
                info = GeneratorInfo.from_metadata(member.node_id, member.name, member.meta)
                if info is not None and info.address:
                    found.append(info)
        return found

    def models(self) -> dict[str, list[GeneratorInfo]]:
        """The models served in the cluster, each with its live generators."""
        served: dict[str, list[GeneratorInfo]] = {}
        for info in self.candidates():
            served.setdefault(info.model, []).append(info)
        return served

    def _open(self, target: GeneratorInfo, request: GenerationRequest) -> AsyncIterator[str]:
        local = self._local()
        if target.local and local is not None:
            return local.open(request)
        return self._remote.open(target, request)

    async def stream(self, request: GenerationRequest, report: StreamReport) -> AsyncIterator[str]:
        """The answer's pieces (the router's failover included); metrics from the report at the end."""
        started = time.perf_counter()
        try:
            async with aclosing(self.router.stream(request, self.candidates, report)) as pieces:
                async for piece in pieces:
                    if "coordinator_first_piece_ms" not in report.timings:
                        report.timings["coordinator_first_piece_ms"] = round((time.perf_counter() - started) * 1000, 3)
                    yield piece
            report.timings["coordinator_total_ms"] = round((time.perf_counter() - started) * 1000, 3)
        finally:
            self._metrics.generation_retries.inc(len(report.retries))
            self._metrics.generation_failovers.inc(len(report.failovers))

    def view(self) -> dict[str, Any]:
        """For /v1/cluster and `meshrag status`: each generator, its load and its breaker."""
        breakers = self.router.breakers.snapshot()
        return {
            "generators": [
                {
                    "node": info.name, "id": info.node_id, "backend": info.backend, "model": info.model,
                    "capacity": info.capacity, "load": info.load, "outstanding": self.router.outstanding(info.node_id),
                    "continues": info.continues, "local": info.local,
                    "breaker": breakers.get(info.node_id, {"state": "closed"})["state"],
                }
                for info in self.candidates()
            ],
            "breaker_events": self.router.breakers.counters(),
        }
