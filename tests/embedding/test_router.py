"""embedding/router.py on virtual time: shares, load, slow and failing embedders, busy, cancellation.

Embedders are scripted in-process servers: each embeds its parts one after
another at a true rate (texts/s), after whatever backlog it starts with, and
writes a vector that is a function of the text alone, so a row in the wrong
place, lost or duplicated shows. The loop is tests/virtual_loop.py: a batch
that would take minutes of embedding runs in milliseconds, and the times
asserted are exact.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pytest

from meshrag.cluster.breaker import BreakerBoard, BreakerSettings, BreakerState
from meshrag.embedding.base import EmbedderInfo, EmbedFailed, EmbedReply
from meshrag.embedding.router import EmbedRouter, EmbedRouterSettings
from meshrag.errors import EmbedderBusy, Unavailable
from tests.virtual_loop import LoopClock, run_virtual

DIM = 8
MODEL = "minilm@0123456789ab"
SETTINGS = EmbedRouterSettings(part_texts=32, window_s=2.0, max_attempts=3, part_timeout_s=60.0, busy_wait_s=30.0)


def vector_for(text: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    vector = rng.standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def texts(n: int) -> list[str]:
    return [f"chunk {i} of the corpus" for i in range(n)]


@dataclass
class ScriptedEmbedder:
    """Embeds one part after another at ``rate`` texts/s, behind ``backlog`` texts of other work.

    ``advertised``: the rate it claims (default: the true one); ``fails``: every part fails at once
    (connection refused); ``stalls``: never answers (SIGSTOP); ``busy_for``: answers 503 until then;
    ``dies_at``: from that virtual time on it fails every part, those in flight included."""

    name: str
    rate: float = 20.0
    advertised: float | None = None
    backlog: int = 0
    local: bool = False
    fails: bool = False
    stalls: bool = False
    busy_for: float = 0.0
    dies_at: float | None = None
    wrong_shape: bool = False
    leaves_gossip_at: float | None = None  # from then on no longer among the live embedders (suspected)
    free_at: float | None = None
    parts: list[int] = field(default_factory=list)  # sizes of the parts it finished
    started: int = 0
    cancelled: int = 0

    def alive(self) -> bool:
        return self.leaves_gossip_at is None or asyncio.get_running_loop().time() < self.leaves_gossip_at

    def info(self) -> EmbedderInfo:
        rate = self.advertised if self.advertised is not None else self.rate
        return EmbedderInfo(self.name, self.name, f"{self.name}:1", MODEL, DIM, rate, self.backlog, 1024, self.local)

    async def embed(self, part: Sequence[str]) -> EmbedReply:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.started += 1
        if now < self.busy_for:
            raise EmbedderBusy(f"{self.name} is full", retry_after_s=self.busy_for - now)
        if self.fails or (self.dies_at is not None and now >= self.dies_at):
            raise EmbedFailed(f"{self.name}: connection refused")
        if self.free_at is None:
            self.free_at = now + self.backlog / self.rate
        self.free_at = max(now, self.free_at) + len(part) / self.rate
        done_at = float("inf") if self.stalls else self.free_at
        if self.dies_at is not None and self.dies_at < done_at:
            await asyncio.sleep(self.dies_at - now)
            raise EmbedFailed(f"{self.name}: connection reset")
        try:
            await asyncio.sleep(3600 if self.stalls else done_at - now)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.parts.append(len(part))
        rows = np.stack([vector_for(t) for t in part])
        if self.wrong_shape:
            rows = rows[:, :-1].copy()
        queued = int(max(0.0, self.free_at - loop.time()) * self.rate)
        return EmbedReply(rows, queued=queued, rate=self.rate)

    @property
    def texts(self) -> int:
        return sum(self.parts)


def make_router(embedders: dict[str, ScriptedEmbedder], settings: EmbedRouterSettings = SETTINGS,
                breaker: BreakerSettings | None = None,
                on_outcome: Callable[[EmbedderInfo, str], None] | None = None) -> EmbedRouter:
    clock = LoopClock(asyncio.get_running_loop())
    board = BreakerBoard(breaker or BreakerSettings(consecutive_failures=2, open_s=2.0), clock)

    async def send(target: EmbedderInfo, part: Sequence[str]) -> EmbedReply:
        return await embedders[target.node_id].embed(part)

    return EmbedRouter(board, clock, send, settings, on_outcome)


def live(embedders: Sequence[ScriptedEmbedder]) -> Callable[[], list[EmbedderInfo]]:
    """The router's view of the live embedders, as gossip would give it."""
    return lambda: [e.info() for e in embedders if e.alive()]


def assert_complete(rows: np.ndarray, batch: list[str]) -> None:
    """Every text's own vector in its own row: nothing lost, nothing misplaced."""
    assert rows.shape == (len(batch), DIM)
    assert np.array_equal(rows, np.stack([vector_for(t) for t in batch]))


async def embed_with(embedders: list[ScriptedEmbedder], batch: list[str], **kwargs: object) -> tuple[np.ndarray, EmbedRouter]:
    router = make_router({e.name: e for e in embedders}, **kwargs)  # type: ignore[arg-type]
    rows = await router.embed(batch, live(embedders))
    return rows, router


# ------------------------------------------------------------------ shares
@pytest.mark.parametrize("count", range(1, 9))
def test_equal_embedders_share_a_batch_evenly_and_nothing_is_lost_or_duplicated(count: int) -> None:
    embedders = [ScriptedEmbedder(f"e{i}", rate=20.0) for i in range(count)]
    batch = texts(64 * 32)
    (rows, router), elapsed = run_virtual(embed_with, embedders, batch)
    assert_complete(rows, batch)
    assert sum(e.texts for e in embedders) == len(batch)  # each text embedded exactly once
    assert sum(router.stats.texts.values()) == len(batch)
    shares = [e.texts / len(batch) for e in embedders]
    assert max(shares) - min(shares) <= 2 * 32 / len(batch) + 1e-9  # within two parts of even
    ideal = len(batch) / (20.0 * count)
    assert elapsed <= ideal * 1.1 + 32 / 20.0


def test_shares_follow_advertised_capacity() -> None:
    rates = [10.0, 20.0, 40.0, 80.0]
    embedders = [ScriptedEmbedder(f"e{i}", rate=r) for i, r in enumerate(rates)]
    batch = texts(3000)
    (rows, _), elapsed = run_virtual(embed_with, embedders, batch)
    assert_complete(rows, batch)
    for embedder, rate in zip(embedders, rates):
        expected = len(batch) * rate / sum(rates)
        assert abs(embedder.texts - expected) <= 0.15 * expected + 32, (embedder.name, embedder.texts, expected)
    assert elapsed <= len(batch) / sum(rates) * 1.15


def test_an_embedder_with_a_backlog_gets_less() -> None:
    idle, loaded = ScriptedEmbedder("idle", rate=20.0), ScriptedEmbedder("loaded", rate=20.0, backlog=600)
    batch = texts(960)
    (rows, _), _ = run_virtual(embed_with, [idle, loaded], batch)
    assert_complete(rows, batch)
    # Finishing together: idle does (960 + 600) / 2 = 780 texts, loaded 180 after its 600.
    assert loaded.texts <= 0.3 * len(batch)
    assert idle.texts + loaded.texts == len(batch)


def test_an_embedder_slower_than_it_advertises_gets_less() -> None:
    honest = [ScriptedEmbedder(f"e{i}", rate=40.0) for i in range(2)]
    slow = ScriptedEmbedder("slow", rate=5.0, advertised=40.0)  # a CPU that got busy since its last gossip
    batch = texts(2400)
    (rows, _), elapsed = run_virtual(embed_with, honest + [slow], batch)
    assert_complete(rows, batch)
    assert slow.texts <= 0.1 * len(batch)
    assert elapsed <= len(batch) / 85.0 * 1.25  # near what the two honest ones and a bit of slow give


def test_this_node_embeds_a_small_batch_itself_when_it_is_least_loaded() -> None:
    local, remote = ScriptedEmbedder("local", local=True), ScriptedEmbedder("remote")
    (rows, _), _ = run_virtual(embed_with, [remote, local], texts(20))
    assert (local.texts, remote.texts) == (20, 0)


def test_a_small_batch_goes_to_a_remote_embedder_when_this_one_is_busy() -> None:
    local, remote = ScriptedEmbedder("local", local=True, backlog=200), ScriptedEmbedder("remote")
    (rows, _), _ = run_virtual(embed_with, [local, remote], texts(20))
    assert (local.texts, remote.texts) == (0, 20)


def test_windows_are_shared_by_concurrent_batches() -> None:
    embedders = [ScriptedEmbedder(f"e{i}", rate=16.0) for i in range(2)]  # window: one 32-text part each

    async def scenario() -> tuple[list[np.ndarray], int]:
        router = make_router({e.name: e for e in embedders})
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, *(router.in_flight(e.name) for e in embedders))
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch())
        batches = [texts(160)[i::4] for i in range(4)]
        results = await asyncio.gather(*(router.embed(b, live(embedders)) for b in batches))
        watcher.cancel()
        return [r for r in results], most

    (results, most), elapsed = run_virtual(scenario)
    for i, rows in enumerate(results):
        assert_complete(rows, texts(160)[i::4])
    assert most <= 32  # never more than one part in flight per embedder, across four callers
    assert elapsed == pytest.approx(160 / 32.0, rel=0.05)


# ---------------------------------------------------------------- failures
def test_a_failing_embedder_has_its_parts_retried_elsewhere_and_its_breaker_opens() -> None:
    good, bad = ScriptedEmbedder("good", rate=20.0), ScriptedEmbedder("bad", fails=True)
    batch = texts(320)

    async def scenario() -> tuple[np.ndarray, EmbedRouter]:
        router = make_router({"good": good, "bad": bad}, breaker=BreakerSettings(consecutive_failures=2, open_s=30.0, max_open_s=60.0))
        rows = await router.embed(batch, live([good, bad]))
        return rows, router

    (rows, router), _ = run_virtual(scenario)
    assert_complete(rows, batch)
    assert good.texts == len(batch)
    assert router.breakers.state("bad") is BreakerState.OPEN
    assert bad.started == 2  # two failures open it; nothing more is sent while open
    assert router.stats.retries == 2


def test_a_stalled_embedder_loses_its_parts_as_soon_as_gossip_stops_counting_it_alive() -> None:
    good = ScriptedEmbedder("good", rate=20.0)
    stalled = ScriptedEmbedder("stalled", rate=20.0, stalls=True, leaves_gossip_at=5.0)  # SIGSTOP; suspected 5 s later
    batch = texts(320)
    (rows, router), elapsed = run_virtual(embed_with, [good, stalled], batch)
    assert_complete(rows, batch)
    assert good.texts == len(batch)
    assert stalled.cancelled == stalled.started == 2  # its first window, given up when it left, never refilled
    assert router.stats.failures["stalled"] == 2
    assert elapsed <= len(batch) / 20.0 + 0.5 + 1e-9  # good never idled waiting for the stalled parts' deadline


def test_a_hung_embedder_that_still_gossips_costs_its_parts_deadline_not_the_batch() -> None:
    good, hung = ScriptedEmbedder("good", rate=20.0), ScriptedEmbedder("hung", rate=20.0, stalls=True)
    batch = texts(320)
    (rows, router), elapsed = run_virtual(embed_with, [good, hung], batch)
    assert_complete(rows, batch)
    assert good.texts == len(batch)
    assert hung.cancelled == hung.started  # every part it held was given up at its deadline, and re-sent elsewhere
    # The deadline: 60 s plus 4x the part's expected time (at most 2 parts of 32 at 20/s: 3.2 s).
    assert 60.0 <= elapsed <= 60.0 + 4 * 3.2 + len(batch) / 20.0


def test_this_nodes_own_parts_have_no_deadline() -> None:
    slow_local = ScriptedEmbedder("local", rate=0.2, local=True)  # 32 texts take 160 s: far past any remote deadline
    (rows, router), elapsed = run_virtual(embed_with, [slow_local], texts(32))
    assert_complete(rows, texts(32))
    assert router.stats.failures["local"] == 0 and elapsed == pytest.approx(160.0)


def test_an_embedder_killed_mid_batch_loses_nothing() -> None:
    survivor, victim = ScriptedEmbedder("survivor", rate=20.0), ScriptedEmbedder("victim", rate=20.0, dies_at=4.0)
    batch = texts(640)
    (rows, router), elapsed = run_virtual(embed_with, [survivor, victim], batch)
    assert_complete(rows, batch)
    assert survivor.texts + victim.texts == len(batch)
    assert 0 < victim.texts < len(batch) / 2
    assert router.stats.failures["victim"] >= 1


def test_a_part_that_fails_everywhere_fails_the_batch_naming_each_attempt() -> None:
    embedders = [ScriptedEmbedder(f"e{i}", fails=True) for i in range(3)]

    async def scenario() -> None:
        router = make_router({e.name: e for e in embedders}, breaker=BreakerSettings(consecutive_failures=5))
        await router.embed(texts(10), live(embedders))

    with pytest.raises(Unavailable) as caught:
        run_virtual(scenario)
    assert not isinstance(caught.value, EmbedderBusy)
    assert "3 attempts" in caught.value.message and all(e.name in caught.value.message for e in embedders)


def test_a_reply_of_the_wrong_shape_is_a_failure_and_the_part_goes_elsewhere() -> None:
    good, broken = ScriptedEmbedder("good"), ScriptedEmbedder("broken", wrong_shape=True, local=True)
    batch = texts(20)
    (rows, router), _ = run_virtual(embed_with, [broken, good], batch)
    assert_complete(rows, batch)
    assert router.stats.failures["broken"] == 1 and router.stats.texts["good"] == 20


def test_no_embedder_at_all_is_503() -> None:
    async def scenario() -> None:
        await make_router({}).embed(texts(3), lambda: [])

    with pytest.raises(Unavailable, match="no embedder"):
        run_virtual(scenario)


# -------------------------------------------------------------------- busy
def test_a_busy_embedder_is_skipped_until_its_retry_after_without_breaking() -> None:
    busy, free = ScriptedEmbedder("busy", rate=20.0, busy_for=5.0), ScriptedEmbedder("free", rate=20.0)
    batch = texts(640)
    (rows, router), _ = run_virtual(embed_with, [busy, free], batch)
    assert_complete(rows, batch)
    assert router.breakers.state("busy") is BreakerState.CLOSED
    assert router.stats.busy["busy"] == 2  # its first window (two parts sent at once), then left alone for its Retry-After
    assert busy.texts > 0  # and used again after it


def test_when_every_embedder_stays_busy_the_caller_waits_then_gets_503_with_retry_after() -> None:
    embedders = [ScriptedEmbedder(f"e{i}", busy_for=1000.0) for i in range(2)]
    with pytest.raises(EmbedderBusy) as caught:
        run_virtual(embed_with, embedders, texts(40))
    assert caught.value.retry_after_s >= 1.0
    assert sum(e.started for e in embedders) == 2  # each asked once: Retry-After is honoured, not hammered


def test_a_batch_waits_for_an_embedder_that_frees_within_busy_wait() -> None:
    embedders = [ScriptedEmbedder(f"e{i}", busy_for=12.0) for i in range(2)]
    batch = texts(40)
    (rows, _), elapsed = run_virtual(embed_with, embedders, batch)
    assert_complete(rows, batch)
    assert 12.0 <= elapsed <= 12.0 + 40 / 20.0 + 0.1


# ------------------------------------------------------------ cancellation
def test_cancelling_a_batch_cancels_its_parts_and_frees_the_windows() -> None:
    embedders = [ScriptedEmbedder(f"e{i}", rate=10.0) for i in range(2)]

    async def scenario() -> tuple[EmbedRouter, int]:
        router = make_router({e.name: e for e in embedders})
        task = asyncio.ensure_future(router.embed(texts(640), live(embedders)))
        await asyncio.sleep(1.0)
        in_flight = sum(router.in_flight(e.name) for e in embedders)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return router, in_flight

    (router, in_flight), _ = run_virtual(scenario)
    assert in_flight > 0
    assert all(router.in_flight(e.name) == 0 for e in embedders)
    assert sum(e.cancelled for e in embedders) == sum(e.started for e in embedders) - sum(len(e.parts) for e in embedders)


def test_every_part_reports_its_outcome_for_metrics() -> None:
    good, bad = ScriptedEmbedder("good", local=True), ScriptedEmbedder("bad", fails=True)
    busy = ScriptedEmbedder("busy", busy_for=1000.0)
    outcomes: list[tuple[str, str]] = []

    async def scenario() -> np.ndarray:
        router = make_router({e.name: e for e in (good, bad, busy)},
                             on_outcome=lambda target, outcome: outcomes.append((target.name, outcome)))
        return await router.embed(texts(96), live([good, bad, busy]))

    rows, _ = run_virtual(scenario)
    assert_complete(rows, texts(96))
    assert outcomes.count(("good", "ok")) == 3
    assert ("bad", "failed") in outcomes and ("busy", "busy") in outcomes
    assert {name for name, outcome in outcomes if outcome == "ok"} == {"good"}
