"""The storage's periodic work: index saves, tombstone purges, and what /metrics reads from SQLite.

Every step runs in the storage executor, never on the event loop gossip shares.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Callable

from meshrag.clock import Clock, pack_hlc
from meshrag.config import Config
from meshrag.observability import Metrics, StorageSnapshot
from meshrag.store.engine import StorageEngine
from meshrag.store.hints import HintStore

log = logging.getLogger(__name__)

METRICS_REFRESH_S = 5.0  # /metrics shows pending hints and stored counts at most this old


class StorageUpkeep:
    def __init__(self, *, engine: StorageEngine, hints: HintStore, pool: Executor, config: Config, clock: Clock,
                 metrics: Metrics, snapshot: StorageSnapshot, is_ready: Callable[[], bool]) -> None:
        self._engine, self._hints, self._pool = engine, hints, pool
        self._config, self._clock = config, clock
        self._metrics, self._snapshot = metrics, snapshot
        # Read at each scrape, not at the last refresh: a scrape right after /ready turned
        # 200 read 0 until the next refresh, up to METRICS_REFRESH_S later.
        metrics.ready.set_function(lambda: 1 if is_ready() else 0)

    async def _blocking(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def save_indexes_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.storage.index_save_interval_s)
            await self._blocking(self._engine.save_indexes)

    async def purge_tombstones_forever(self) -> None:
        """Forget tombstones older than storage.tombstone_grace_s plus cluster.max_clock_drift_s.
        A replica that was down for longer than the grace period must be removed and rejoin
        empty, or it could bring back what was deleted (Cassandra's gc_grace rule). The drift
        margin keeps a node whose clock runs ahead (by up to the drift bound) from purging a
        tombstone before grace has passed on the others' clocks."""
        grace = self._config.storage.tombstone_grace_s
        margin = grace + self._config.cluster.max_clock_drift_s
        while True:
            horizon = pack_hlc(int((self._clock.wall() - margin) * 1000), 0)
            purged = await self._blocking(self._engine.purge_tombstones, horizon)
            if purged:
                log.info("purged %d tombstones older than %.0f s", purged, grace)
            await asyncio.sleep(min(grace / 4, 3600.0))

    async def refresh_metrics_forever(self) -> None:
        while True:
            await asyncio.sleep(METRICS_REFRESH_S)
            try:
                await self.refresh_metrics()
            except Exception:
                log.exception("could not refresh the storage metrics")

    async def refresh_metrics(self) -> None:
        """Read what /metrics exports from SQLite, in the storage executor: a scrape renders
        on the event loop and must not query SQLite there."""
        stats = await self._blocking(self._engine.stats)
        assert isinstance(stats, dict)
        self._metrics.stored_documents.set(stats.get("documents", 0))
        self._metrics.stored_chunks.set(stats.get("chunks", 0))
        self._snapshot.pending_hints = await self._blocking(self._hints.pending)  # type: ignore[assignment]
