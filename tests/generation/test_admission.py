"""generation/admission.py on virtual time: bounded queue, FIFO turns, Retry-After, release on every path.

The backend is a scripted stream (pure queueing logic under test); the real
llama.cpp backend behind the same queue is exercised in test_llamacpp.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from meshrag.errors import GeneratorBusy
from meshrag.generation.admission import Admission, LocalGenerator
from meshrag.generation.base import GenerationRequest
from tests.virtual_loop import LoopClock, run_virtual

REQUEST = GenerationRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=3)


class TimedBackend:
    """Three pieces, ``seconds`` apart; records the order in which requests started."""

    name = "scripted"
    model = "m"
    context_tokens = 1024
    supports_continuation = True

    def __init__(self, parallel: int = 1, seconds: float = 1.0) -> None:
        self.parallel = parallel
        self.seconds = seconds
        self.started: list[str] = []
        self.running = 0
        self.most_running = 0

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        self.started.append(request.messages[0]["content"])
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            for i in range(3):
                await asyncio.sleep(self.seconds)
                yield str(i)
        finally:
            self.running -= 1

    def load(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None: ...


def generator(capacity: int, parallel: int = 1, seconds: float = 1.0) -> tuple[LocalGenerator, TimedBackend]:
    backend = TimedBackend(parallel, seconds)
    clock = LoopClock(asyncio.get_running_loop())
    return LocalGenerator(backend, Admission(capacity, parallel, clock)), backend


def ask(text: str) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], max_tokens=3)


async def collect(stream: AsyncIterator[str]) -> list[str]:
    try:
        return [piece async for piece in stream]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def test_beyond_capacity_a_request_is_refused_at_once_before_anything_runs() -> None:
    async def scenario() -> tuple[dict[str, Any], float, list[str]]:
        gen, backend = generator(capacity=2)
        first, second = gen.open(ask("a")), gen.open(ask("b"))  # admitted, not started
        with pytest.raises(GeneratorBusy) as busy:
            gen.open(ask("c"))
        stats = gen.admission.stats()
        await asyncio.gather(collect(first), collect(second))
        return stats, busy.value.retry_after_s, backend.started

    (stats, retry_after, started), _ = run_virtual(scenario)
    assert stats["rejected"] == 1 and stats["waiting"] + stats["active"] == 2
    assert retry_after >= 1
    assert started == ["a", "b"]  # the refused one never reached the backend


def test_requests_take_turns_first_come_first_served_within_parallel() -> None:
    async def scenario() -> tuple[list[str], int, float]:
        gen, backend = generator(capacity=8, parallel=2)
        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(collect(gen.open(ask(name))) for name in "abcde"))
        return backend.started, backend.most_running, asyncio.get_running_loop().time() - started

    (order, most, elapsed), _ = run_virtual(scenario)
    assert order == list("abcde") and most == 2
    assert elapsed == pytest.approx(9.0)  # 5 requests of 3 s, two at a time: 3 rounds


def test_retry_after_follows_the_typical_duration_and_the_queue_ahead() -> None:
    async def scenario() -> float:
        gen, _ = generator(capacity=3, parallel=1, seconds=4.0)
        for _ in range(4):  # the running estimate learns ~12 s per generation
            await collect(gen.open(ask("warm")))
        streams = [gen.open(ask(str(i))) for i in range(3)]
        with pytest.raises(GeneratorBusy) as busy:
            gen.open(ask("late"))
        for stream in streams:
            await stream.aclose()
        return busy.value.retry_after_s

    retry_after, _ = run_virtual(scenario)
    assert 20 <= retry_after <= 40  # three ahead of ~12 s each on one slot, from an estimate still converging


def test_a_stream_closed_before_it_started_releases_its_slot() -> None:
    async def scenario() -> dict[str, Any]:
        gen, _ = generator(capacity=1)
        stream = gen.open(ask("never iterated"))
        await stream.aclose()
        await collect(gen.open(ask("next")))  # would be GeneratorBusy if the slot had leaked
        return gen.admission.stats()

    stats, _ = run_virtual(scenario)
    assert stats["active"] == 0 and stats["waiting"] == 0 and stats["rejected"] == 0


def test_a_waiter_that_gives_up_leaves_the_queue_and_the_next_one_runs() -> None:
    async def scenario() -> tuple[list[str], dict[str, Any]]:
        gen, backend = generator(capacity=3)
        running = asyncio.create_task(collect(gen.open(ask("a"))))
        quitter = asyncio.create_task(collect(gen.open(ask("b"))))
        patient = asyncio.create_task(collect(gen.open(ask("c"))))
        await asyncio.sleep(0.5)
        quitter.cancel()
        await asyncio.gather(running, patient)
        with pytest.raises(asyncio.CancelledError):
            await quitter
        return backend.started, gen.admission.stats()

    (order, stats), _ = run_virtual(scenario)
    assert order == ["a", "c"]
    assert stats["active"] == 0 and stats["waiting"] == 0


def test_metadata_advertises_capacity_load_and_continuation() -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        gen, _ = generator(capacity=4)
        stream = gen.open(ask("a"))
        during = gen.metadata()
        await stream.aclose()
        return during, gen.metadata()

    (during, after), _ = run_virtual(scenario)
    assert during == {"backend": "scripted", "model": "m", "context": 1024, "capacity": 4, "load": 1, "continues": True}
    assert after["load"] == 0
