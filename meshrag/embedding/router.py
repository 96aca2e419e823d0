"""The coordinator's split of a batch over the cluster's embedders.

Pure protocol logic: the candidates, the breakers (cluster/breaker.py), the
clock and the way a part is sent (in-process or over HTTP) are handed in, so
tests drive it on virtual time with scripted embedders.

A batch is cut into parts of ``part_texts`` texts. Each part goes to the
embedder expected to finish it first:

    eta = (texts queued there by others + texts this coordinator has in flight there + part) / rate

where ``rate`` (texts/s) and the queue come from the embedder's last reply, or
from gossip before there is one. Ties go to this node's own embedder (no
network hop), which is how "embed locally when it is the least loaded" falls
out. A coordinator keeps at most ``window_s`` seconds of work (at the
embedder's rate) in flight on each embedder; further parts wait for a slot.
That window is what makes the split self-clocking: a fast embedder (a GPU)
gets many parts in flight, and one that turns slow answers late, so it gets
fewer parts than its advertised rate promised, without any timer firing.

Failures: a part that fails (connection refused, a timeout, a malformed
reply) counts against the embedder's breaker and is tried on another embedder,
at most ``max_attempts`` of them; then the whole batch fails with 503 and
nothing is written (ingestion embeds before it writes). A busy embedder (503,
its queue is full) is not broken: it is skipped until its Retry-After, and
when every embedder is busy or full the part waits, for at most
``busy_wait_s``, before the caller gets EmbedderBusy with a Retry-After.
A killed embedder refuses or resets the connection at once. One that hangs
(SIGSTOP, a network cut) is noticed by gossip within seconds: a suspect gets
no new parts, and parts on an embedder that left the candidates altogether
(declared dead; re-read every ``liveness_check_s``) are given up and re-sent. A remote part's deadline,
``part_timeout_s`` plus a multiple of its expected time, is the backstop for
one that hangs while it still gossips; this node's own embedder has none.

Parts are written into the result by position, so vectors come back in the
caller's order whoever computed them, and a part retried after a timeout is
counted once: only the reply that is taken fills its rows.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import numpy as np

from meshrag.clock import Clock
from meshrag.cluster.breaker import BreakerBoard
from meshrag.embedding.base import EmbedderInfo, EmbedFailed, EmbedReply
from meshrag.errors import EmbedderBusy, MeshragError, Unavailable

log = logging.getLogger(__name__)
SendPart = Callable[[EmbedderInfo, Sequence[str]], Awaitable[EmbedReply]]
Candidates = Callable[[], Sequence[EmbedderInfo]]  # the live embedders now (gossip's view), read again while parts run


@dataclass(frozen=True)
class EmbedRouterSettings:
    part_texts: int = 32  # texts per part: a remote call's fixed cost over them stays small
    window_s: float = 2.0  # seconds of work (at its rate) kept in flight on one embedder
    max_window_parts: int = 256
    max_attempts: int = 3  # embedders one part is tried on before the batch fails
    part_timeout_s: float = 60.0  # floor of a remote part's deadline (a hung but gossiping node)
    timeout_factor: float = 4.0  # deadline = floor + factor x the expected time to finish it
    liveness_check_s: float = 0.5  # how often running parts are checked against the live embedders
    busy_wait_s: float = 30.0  # how long a part may wait for room before the caller gets 503

    def __post_init__(self) -> None:
        if self.part_texts < 1 or self.max_window_parts < 1 or self.max_attempts < 1:
            raise ValueError("part_texts, max_window_parts and max_attempts must be >= 1")
        if min(self.window_s, self.part_timeout_s, self.busy_wait_s, self.liveness_check_s) <= 0 or self.timeout_factor < 0:
            raise ValueError("window_s, part_timeout_s and busy_wait_s must be positive")


@dataclass
class _Part:
    start: int
    stop: int
    attempts: int = 0
    tried: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)
    waiting_since: float | None = None  # when it first found no embedder with room

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class _Load:
    """What this coordinator knows of one embedder's load beyond the advertised figures."""

    parts: int = 0  # in flight from here
    texts: int = 0
    others_queued: int | None = None  # from its last reply: its queue less what was ours
    rate: float | None = None  # from its last reply
    busy_until: float = 0.0


@dataclass
class EmbedStats:
    texts: Counter[str] = field(default_factory=Counter)  # embedded, per embedder name
    failures: Counter[str] = field(default_factory=Counter)
    busy: Counter[str] = field(default_factory=Counter)
    retries: int = 0


class EmbedRouter:
    """One per coordinator, shared by every batch it embeds (the windows are per embedder)."""

    def __init__(self, breakers: BreakerBoard, clock: Clock, send: SendPart, settings: EmbedRouterSettings,
                 on_outcome: Callable[[EmbedderInfo, str], None] | None = None) -> None:
        """``on_outcome(target, "ok" | "failed" | "busy")`` after every part (metrics)."""
        self.breakers = breakers
        self._on_outcome = on_outcome or (lambda target, outcome: None)
        self.settings = settings
        self.stats = EmbedStats()
        self._clock = clock
        self._send = send
        self._loads: dict[str, _Load] = {}
        self._room = asyncio.Event()  # set and replaced whenever a window slot frees
        self._departed: set[asyncio.Task[EmbedReply]] = set()  # parts cancelled because their embedder left

    # ------------------------------------------------------------ choosing
    def eta_s(self, target: EmbedderInfo, texts: int) -> float:
        """Expected seconds until ``texts`` more sent to ``target`` would be embedded."""
        load = self._load(target.node_id)
        queued = target.queued if load.others_queued is None else load.others_queued
        return (queued + load.texts + texts) / self.rate(target)

    def rate(self, target: EmbedderInfo) -> float:
        load = self._loads.get(target.node_id)
        return load.rate if load is not None and load.rate else target.rate

    def window_parts(self, target: EmbedderInfo) -> int:
        parts = math.ceil(self.rate(target) * self.settings.window_s / self.settings.part_texts)
        return max(1, min(self.settings.max_window_parts, parts))

    def in_flight(self, node_id: str) -> int:
        load = self._loads.get(node_id)
        return load.texts if load else 0

    def _load(self, node_id: str) -> _Load:
        load = self._loads.get(node_id)
        if load is None:
            load = self._loads[node_id] = _Load()
        return load

    def _choose(self, part: _Part, candidates: Sequence[EmbedderInfo]) -> EmbedderInfo | None:
        now = self._clock.now()
        untried = [c for c in candidates if c.node_id not in part.tried]
        best: tuple[float, bool, str] | None = None
        chosen: EmbedderInfo | None = None
        for target in untried or candidates:  # once all were tried, any may try again
            load = self._load(target.node_id)
            if (target.suspect or load.busy_until > now or load.parts >= self.window_parts(target)
                    or not self.breakers.would_allow(target.node_id)):
                continue
            key = (self.eta_s(target, len(part)), not target.local, target.name)
            if best is None or key < best:
                best, chosen = key, target
        if chosen is None or not self.breakers.allow(chosen.node_id):
            return None
        return chosen

    # ------------------------------------------------------------- running
    async def embed(self, texts: Sequence[str], candidates: Candidates) -> np.ndarray:
        """float32 [len(texts), dim] in the order of ``texts``, embedded wherever it was quickest."""
        live = candidates()
        if not live:
            raise Unavailable("no embedder is alive in the cluster", retry_after_s=2)
        rows = np.empty((len(texts), live[0].dim), dtype=np.float32)
        pending = deque(_Part(start, min(start + self.settings.part_texts, len(texts)))
                        for start in range(0, len(texts), self.settings.part_texts))
        running: dict[asyncio.Task[EmbedReply], tuple[_Part, EmbedderInfo]] = {}
        try:
            while pending or running:
                live = candidates()
                self.breakers.set_peers(c.node_id for c in live)  # the population the open-fraction guard counts
                self._abandon_departed(running, live)
                self._dispatch(pending, running, live, texts)
                await self._wait(pending, running, rows)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return rows

    def _abandon_departed(self, running: dict[asyncio.Task[EmbedReply], tuple[_Part, EmbedderInfo]], live: Sequence[EmbedderInfo]) -> None:
        """Parts on an embedder gossip no longer counts alive (suspected: SIGSTOPped, cut off) are
        given up at once rather than at their deadline; _settle re-sends them elsewhere."""
        alive = {c.node_id for c in live}
        for task, (_, target) in running.items():
            if target.node_id not in alive and not task.done():
                self._departed.add(task)
                task.cancel()

    def _dispatch(self, pending: deque[_Part], running: dict[asyncio.Task[EmbedReply], tuple[_Part, EmbedderInfo]],
                  candidates: Sequence[EmbedderInfo], texts: Sequence[str]) -> None:
        while pending:
            part = pending[0]
            target = self._choose(part, candidates)
            if target is None:
                self._check_waiting(part, candidates)
                return
            pending.popleft()
            part.waiting_since = None
            running[self._start_part(target, texts[part.start : part.stop])] = (part, target)

    def _check_waiting(self, part: _Part, candidates: Sequence[EmbedderInfo]) -> None:
        """A part that found no room: fine for a while, EmbedderBusy after busy_wait_s."""
        now = self._clock.now()
        if part.waiting_since is None:
            part.waiting_since = now
        elif now - part.waiting_since >= self.settings.busy_wait_s:
            loads = [self._loads.get(c.node_id) for c in candidates]
            waits = [load.busy_until - now for load in loads if load is not None and load.busy_until > now]
            raise EmbedderBusy(
                f"every embedder is busy or full ({len(candidates)} known); nothing was written",
                retry_after_s=max(1.0, min(waits, default=self.settings.window_s)),
            )

    def _start_part(self, target: EmbedderInfo, texts: Sequence[str]) -> asyncio.Task[EmbedReply]:
        """The part's task, its slot taken now (the next choice must see it) and freed when it ends,
        however it ends (a task cancelled before it ran never reaches a finally of its own)."""
        load = self._load(target.node_id)
        # This node's own embedder needs no deadline: it cannot hang without this process hanging.
        timeout_s = None if target.local else self.settings.part_timeout_s + self.settings.timeout_factor * self.eta_s(target, len(texts))
        load.parts += 1
        load.texts += len(texts)
        task = asyncio.ensure_future(self._run_part(target, texts, timeout_s))

        def release(_: object) -> None:
            load.parts -= 1
            load.texts -= len(texts)
            self._room.set()
            self._room = asyncio.Event()

        task.add_done_callback(release)
        return task

    async def _run_part(self, target: EmbedderInfo, texts: Sequence[str], timeout_s: float | None) -> EmbedReply:
        try:
            return await asyncio.wait_for(self._send(target, texts), timeout_s)
        except asyncio.TimeoutError:
            raise EmbedFailed(f"{target.name} did not answer within {timeout_s:.1f} s") from None

    async def _wait(self, pending: deque[_Part], running: dict[asyncio.Task[EmbedReply], tuple[_Part, EmbedderInfo]],
                    rows: np.ndarray) -> None:
        """Until a part of ours settles, or (parts waiting) a slot frees or a busy embedder's wait ends."""
        waiters: set[asyncio.Future[object]] = set(running)  # type: ignore[arg-type]
        room: asyncio.Task[bool] | None = None
        if pending:
            room = asyncio.ensure_future(self._room.wait())
            waiters.add(room)  # type: ignore[arg-type]
        try:
            done, _ = await asyncio.wait(waiters, timeout=self._recheck_s(bool(pending)), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if room is not None and not room.done():
                room.cancel()
        for task in [t for t in done if t in running]:
            part, target = running.pop(task)  # type: ignore[arg-type]
            self._settle(task, part, target, pending, rows)  # type: ignore[arg-type]

    def _recheck_s(self, waiting: bool) -> float:
        """When to look again without a part settling: membership (a departed embedder's parts),
        and for waiting parts a busy embedder's Retry-After ending, an open breaker's period
        ending, or busy_wait_s running out."""
        if not waiting:
            return self.settings.liveness_check_s
        now = self._clock.now()
        ends = [load.busy_until - now for load in self._loads.values() if load.busy_until > now]
        return max(0.01, min(ends + [self.breakers.settings.open_s, self.settings.busy_wait_s, self.settings.liveness_check_s]))

    def _settle(self, task: asyncio.Task[EmbedReply], part: _Part, target: EmbedderInfo, pending: deque[_Part], rows: np.ndarray) -> None:
        if task in self._departed:
            self._departed.discard(task)
            self._failed(part, target, f"{target.name} is no longer alive in gossip", pending)
            return
        try:
            reply = task.result()
            _check_reply(reply, len(part), rows.shape[1], target)
        except EmbedderBusy as exc:
            self.breakers.record(target.node_id, True)  # it answered: busy is not broken
            self._load(target.node_id).busy_until = self._clock.now() + exc.retry_after_s
            self.stats.busy[target.name] += 1
            self._on_outcome(target, "busy")
            pending.appendleft(part)
            return
        except (EmbedFailed, Unavailable) as exc:
            self._failed(part, target, str(exc), pending)
            return
        except MeshragError as exc:  # the request itself was refused: another embedder would refuse it too
            self.breakers.record(target.node_id, True)
            raise exc
        self.breakers.record(target.node_id, True)
        rows[part.start : part.stop] = reply.vectors
        self._observe(target, reply)
        self.stats.texts[target.name] += len(part)
        self._on_outcome(target, "ok")

    def _failed(self, part: _Part, target: EmbedderInfo, reason: str, pending: deque[_Part]) -> None:
        log.info("embedding part of %d texts failed on %s: %s", len(part), target.name, reason)
        self.breakers.record(target.node_id, False)
        self.stats.failures[target.name] += 1
        self._on_outcome(target, "failed")
        part.attempts += 1
        part.tried.add(target.node_id)
        part.reasons.append(reason)
        if part.attempts >= self.settings.max_attempts:
            raise Unavailable(f"embedding failed on {part.attempts} attempts ({'; '.join(part.reasons)}); nothing was written",
                              retry_after_s=2)
        self.stats.retries += 1
        pending.appendleft(part)

    def _observe(self, target: EmbedderInfo, reply: EmbedReply) -> None:
        load = self._load(target.node_id)
        if reply.rate:
            load.rate = reply.rate
        if reply.queued is not None:
            load.others_queued = max(0, reply.queued - load.texts)


def _check_reply(reply: EmbedReply, texts: int, dim: int, target: EmbedderInfo) -> None:
    vectors = reply.vectors
    if not isinstance(vectors, np.ndarray) or vectors.shape != (texts, dim) or vectors.dtype != np.float32:
        shape = getattr(vectors, "shape", None)
        raise EmbedFailed(f"{target.name} answered vectors of shape {shape}, expected ({texts}, {dim}) float32")
    if not np.isfinite(vectors).all():
        raise EmbedFailed(f"{target.name} answered vectors that are not finite")
