"""The generator node's bounded queue: admit, wait for a turn, or 503 with Retry-After.

A generation holds the model for seconds. Beyond ``capacity`` admitted
requests (running + waiting) a new one is refused at once with GeneratorBusy
(503 + Retry-After) instead of queueing for minutes: the coordinator then
tries another generator, and a client knows when to come back. Admission is
synchronous (``admit`` raises before anything starts), so the /_mesh/generate
route can answer 503 before it sends a single byte of its stream.

``LocalGenerator`` puts a backend behind this queue; it is what the node's
own /_mesh/generate route and an in-process coordinator both call. The
backend runs at most ``backend.parallel`` generations at once; the rest wait
here, first come first served.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator

from meshrag.clock import Clock
from meshrag.errors import GeneratorBusy, Unavailable
from meshrag.generation.base import GenerationRequest, GeneratorBackend, generator_metadata

_TYPICAL_ALPHA = 0.2  # weight of the newest duration in the running estimate


@dataclass
class _Counters:
    admitted: int = 0
    rejected: int = 0


class Ticket:
    """One admitted request: waiting for a turn, then running, then released (once)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._turn: asyncio.Future[None] | None = None
        self.running = False
        self.released = False
        self.started_at = 0.0

    async def turn(self) -> None:
        """Wait until a running slot is ours (FIFO)."""
        await self._admission._take_turn(self)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission._release(self)


class Admission:
    def __init__(self, capacity: int, parallel: int, clock: Clock, typical_s: float = 2.0) -> None:
        if capacity < 1 or parallel < 1:
            raise ValueError("capacity and parallel must be at least 1")
        self.capacity = capacity
        self.parallel = parallel
        self._clock = clock
        self._waiting: deque[Ticket] = deque()
        self._running = 0
        self._admitted = 0  # tickets not yet released
        self._typical_s = typical_s
        self._counters = _Counters()

    @property
    def load(self) -> int:
        """Running + waiting: what gossip advertises."""
        return self._admitted

    def admit(self) -> Ticket:
        """A ticket, or GeneratorBusy at once when ``capacity`` requests are already admitted."""
        if self._admitted >= self.capacity:
            self._counters.rejected += 1
            raise GeneratorBusy(
                f"the generator is busy ({self._running} running, {self._admitted - self._running} waiting)",
                retry_after_s=self.retry_after_s(),
            )
        self._admitted += 1
        self._counters.admitted += 1
        return Ticket(self)

    def retry_after_s(self) -> float:
        """About when a slot frees: the queue ahead divided over the running slots, times a typical run."""
        ahead = max(1, self._admitted - self.parallel + 1)
        return float(min(60.0, max(1.0, round(self._typical_s * ahead / self.parallel))))

    async def _take_turn(self, ticket: Ticket) -> None:
        if ticket.released:
            raise Unavailable("the request was released before its turn", retry_after_s=1)
        if self._running < self.parallel and not self._waiting:
            self._start(ticket)
            return
        turn = asyncio.get_running_loop().create_future()
        ticket._turn = turn
        self._waiting.append(ticket)
        try:
            await turn
        except asyncio.CancelledError:
            ticket.release()  # gave up while waiting
            raise

    def _start(self, ticket: Ticket) -> None:
        self._running += 1
        ticket.running = True
        ticket.started_at = self._clock.now()

    def _release(self, ticket: Ticket) -> None:
        self._admitted -= 1
        if ticket.running:
            self._running -= 1
            elapsed = self._clock.now() - ticket.started_at
            self._typical_s = (1 - _TYPICAL_ALPHA) * self._typical_s + _TYPICAL_ALPHA * elapsed
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
        self._hand_over()

    def _hand_over(self) -> None:
        while self._running < self.parallel and self._waiting:
            ticket = self._waiting.popleft()
            if ticket._turn is not None and not ticket._turn.done():
                self._start(ticket)
                ticket._turn.set_result(None)

    def stats(self) -> dict[str, Any]:
        return {
            "active": self._running,
            "waiting": self._admitted - self._running,
            "capacity": self.capacity,
            "admitted": self._counters.admitted,
            "rejected": self._counters.rejected,
        }


class AdmittedStream:
    """A backend's stream that holds an admission ticket; ``aclose`` releases it even when
    iteration never started (an unstarted async generator would never run its ``finally``)."""

    def __init__(self, ticket: Ticket, backend: GeneratorBackend, request: GenerationRequest) -> None:
        self._ticket = ticket
        self._pieces = self._run(backend, request)

    async def _run(self, backend: GeneratorBackend, request: GenerationRequest) -> AsyncIterator[str]:
        try:
            await self._ticket.turn()
            stream = backend.stream(request)
            try:
                async for piece in stream:
                    yield piece
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
        finally:
            self._ticket.release()

    def __aiter__(self) -> AdmittedStream:
        return self

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        try:
            await self._pieces.aclose()
        finally:
            self._ticket.release()


class LocalGenerator:
    """This node's backend behind its admission queue."""

    def __init__(self, backend: GeneratorBackend, admission: Admission) -> None:
        self.backend = backend
        self.admission = admission

    def open(self, request: GenerationRequest) -> AdmittedStream:
        """Admit now (GeneratorBusy / Unavailable raised here), generate when iterated."""
        return AdmittedStream(self.admission.admit(), self.backend, request)

    def metadata(self) -> dict[str, Any]:
        return generator_metadata(self.backend, self.admission.capacity, self.admission.load)

    def stats(self) -> dict[str, Any]:
        backend = self.backend
        return {"backend": backend.name, "model": backend.model, **self.admission.stats(), **backend.stats()}
