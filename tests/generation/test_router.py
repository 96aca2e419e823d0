"""generation/router.py on virtual time: choice, retries, breakers, stall timeout, mid-stream failover.

Generators are scripted in-process streams (a "model" that writes a fixed
answer one word at a time, after virtual delays); the loop is
tests/virtual_loop.py, so a 30 s stall costs no real time and the times
asserted are exact.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import AsyncIterator

import pytest

from meshrag.cluster.breaker import BreakerBoard, BreakerSettings, BreakerState
from meshrag.errors import GeneratorBusy, Unavailable
from meshrag.generation.base import GenerationFailed, GenerationRequest, GeneratorInfo, StreamReport
from meshrag.generation.router import GeneratorRouter, RouterSettings
from tests.virtual_loop import LoopClock, run_virtual

ANSWER = "the dome closes when the wind exceeds forty knots [1]".split(" ")
SETTINGS = RouterSettings(max_attempts=3, max_failovers=2, first_piece_timeout_s=60.0, stall_timeout_s=5.0)
REQUEST = GenerationRequest(messages=[{"role": "user", "content": "When does the dome close?"}], max_tokens=len(ANSWER), temperature=0)


@dataclass
class ScriptedGenerator:
    """Writes ANSWER (from where ``continuation`` left off) one word per ``gap`` seconds.

    ``die_after``: pieces written before the connection drops; ``stall_after``: pieces before
    it goes silent forever (a SIGSTOPped process); ``busy``: refuses admission."""

    name: str
    gap: float = 0.05
    first_delay: float = 0.2
    die_after: int | None = None
    stall_after: int | None = None
    busy: bool = False
    fails_at_once: bool = False
    requests: list[GenerationRequest] = field(default_factory=list)
    closed: int = 0

    def info(self, load: int = 0, capacity: int = 8, continues: bool = True, model: str = "gemma") -> GeneratorInfo:
        return GeneratorInfo(self.name, self.name, f"{self.name}:1", "llama.cpp", model, 4096, capacity, load, continues)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        self.requests.append(request)
        if self.busy:
            raise GeneratorBusy(f"{self.name} is busy", retry_after_s=3)
        try:
            await asyncio.sleep(self.first_delay)
            if self.fails_at_once:
                raise GenerationFailed(f"{self.name}: connection refused")
            words = ANSWER[len(request.continuation.split()) :]
            for written, word in enumerate(words):
                if self.die_after is not None and written == self.die_after:
                    raise GenerationFailed(f"{self.name} ended the stream without finishing the answer")
                if self.stall_after is not None and written == self.stall_after:
                    await asyncio.sleep(3600)
                prefix = " " if (written or request.continuation) else ""
                yield prefix + word
                await asyncio.sleep(self.gap)
        finally:
            self.closed += 1


def router(generators: dict[str, ScriptedGenerator], seed: int = 7, breaker: BreakerSettings | None = None,
           settings: RouterSettings = SETTINGS) -> GeneratorRouter:
    clock = LoopClock(asyncio.get_running_loop())
    board = BreakerBoard(breaker or BreakerSettings(consecutive_failures=2, open_s=2.0), clock)

    def open_stream(target: GeneratorInfo, request: GenerationRequest) -> AsyncIterator[str]:
        return generators[target.node_id].stream(request)

    return GeneratorRouter(board, random.Random(seed), open_stream, settings)


async def answer(r: GeneratorRouter, infos: list[GeneratorInfo], request: GenerationRequest = REQUEST) -> tuple[str, StreamReport, list[float]]:
    report = StreamReport()
    pieces, times = [], []
    loop = asyncio.get_running_loop()
    async for piece in r.stream(request, lambda: infos, report):
        pieces.append(piece)
        times.append(loop.time())
    return "".join(pieces), report, times


FULL = " ".join(ANSWER)


# ------------------------------------------------------------------ choice
def test_power_of_two_choices_prefers_the_less_loaded_generator() -> None:
    async def scenario() -> dict[str, int]:
        gens = {name: ScriptedGenerator(name) for name in "abc"}
        r = router(gens)
        infos = [gens["a"].info(load=0), gens["b"].info(load=6), gens["c"].info(load=6)]
        picks = {"a": 0, "b": 0, "c": 0}
        for _ in range(300):
            choice = r.choose(infos)
            assert choice is not None
            picks[choice.node_id] += 1
            r.breakers.record(choice.node_id, True)
        return picks

    picks, _ = run_virtual(scenario)
    # "a" loses only when it is not drawn: a pair of two of three contains it 2/3 of the time.
    assert 170 <= picks["a"] <= 230
    assert picks["b"] + picks["c"] == 300 - picks["a"]


def test_own_in_flight_requests_count_with_the_advertised_load() -> None:
    async def scenario() -> list[int]:
        gens = {name: ScriptedGenerator(name, gap=1.0) for name in "ab"}
        r = router(gens)
        infos = [gens["a"].info(load=0), gens["b"].info(load=1)]
        streams = [r.stream(REQUEST, lambda: infos, StreamReport()) for _ in range(3)]
        for stream in streams:  # all three in flight at once
            await anext(stream)
        for stream in streams:
            await stream.aclose()
        return [len(gens["a"].requests), len(gens["b"].requests)]

    (a, b), _ = run_virtual(scenario)
    # a: 0 advertised, b: 1. First to a (0 < 1), then a has 1 in flight (tie goes to either),
    # then whichever has fewer: the three requests are spread 2/1, never 3/0.
    assert sorted([a, b]) == [1, 2]


def test_capacity_weighs_the_load() -> None:
    async def scenario() -> str | None:
        gens = {name: ScriptedGenerator(name) for name in "ab"}
        r = router(gens)
        big, small = gens["a"].info(load=4, capacity=64), gens["b"].info(load=2, capacity=4)
        choice = r.choose([big, small])
        return choice.node_id if choice else None

    chosen, _ = run_virtual(scenario)
    assert chosen == "a"  # 4/64 of a big GPU generator is less loaded than 2/4 of a small one


def test_only_generators_of_the_requested_model_are_chosen() -> None:
    async def scenario() -> tuple[str, StreamReport]:
        gens = {name: ScriptedGenerator(name) for name in "ab"}
        r = router(gens)
        infos = [gens["a"].info(model="gemma"), gens["b"].info(model="llama")]
        request = GenerationRequest(messages=REQUEST.messages, max_tokens=REQUEST.max_tokens, model="llama")
        text, report, _ = await answer(r, infos, request)
        return text, report

    (text, report), _ = run_virtual(scenario)
    assert text == FULL and report.generator == "b" and report.model == "llama"


# --------------------------------------------------- before the first piece
def test_a_failure_before_the_first_piece_is_retried_on_another_generator() -> None:
    async def scenario() -> tuple[str, StreamReport, dict[str, ScriptedGenerator]]:
        gens = {"a": ScriptedGenerator("a", fails_at_once=True), "b": ScriptedGenerator("b")}
        r = router(gens, seed=1)
        infos = [gens["a"].info(load=0), gens["b"].info(load=5)]  # a is chosen first: less loaded
        text, report, _ = await answer(r, infos)
        return text, report, gens

    (text, report, gens), _ = run_virtual(scenario)
    assert text == FULL
    assert report.generator == "b" and report.attempts == 2 and not report.failovers
    assert len(report.retries) == 1 and "connection refused" in report.retries[0]
    assert len(gens["a"].requests) == 1 and gens["b"].requests[0].continuation == ""


def test_a_busy_generator_is_skipped_without_counting_against_its_breaker() -> None:
    async def scenario() -> tuple[str, BreakerBoard]:
        gens = {"a": ScriptedGenerator("a", busy=True), "b": ScriptedGenerator("b")}
        r = router(gens)
        infos = [gens["a"].info(load=0), gens["b"].info(load=5)]
        for _ in range(5):
            text, _, _ = await answer(r, infos)
        return text, r.breakers

    (text, board), _ = run_virtual(scenario)
    assert text == FULL
    assert board.state("a") is BreakerState.CLOSED


def test_every_generator_busy_is_generator_busy_with_the_shortest_retry_after() -> None:
    async def scenario() -> None:
        gens = {name: ScriptedGenerator(name, busy=True) for name in "ab"}
        r = router(gens)
        await answer(r, [g.info() for g in gens.values()])

    with pytest.raises(GeneratorBusy) as busy:
        run_virtual(scenario)
    assert busy.value.retry_after_s == 3


def test_no_generator_at_all_is_unavailable() -> None:
    async def scenario() -> None:
        await answer(router({}), [])

    with pytest.raises(Unavailable, match="no live generator"):
        run_virtual(scenario)


def test_attempts_before_the_first_piece_are_bounded() -> None:
    async def scenario() -> dict[str, ScriptedGenerator]:
        gens = {name: ScriptedGenerator(name, fails_at_once=True) for name in "abcde"}
        r = router(gens, breaker=BreakerSettings(consecutive_failures=10))
        with pytest.raises(Unavailable, match="failed on every generator tried"):
            await answer(r, [g.info() for g in gens.values()])
        return gens

    gens, _ = run_virtual(scenario)
    assert sum(len(g.requests) for g in gens.values()) == SETTINGS.max_attempts


# ------------------------------------------------------------------ breakers
def test_the_breaker_opens_after_consecutive_failures_then_half_opens_and_closes() -> None:
    async def scenario() -> list[tuple[float, str, int]]:
        gens = {"a": ScriptedGenerator("a", fails_at_once=True, first_delay=0.0), "b": ScriptedGenerator("b")}
        r = router(gens, breaker=BreakerSettings(consecutive_failures=2, open_s=2.0))
        infos = [gens["a"].info(load=0), gens["b"].info(load=5)]
        loop = asyncio.get_running_loop()
        trace = []
        for _ in range(2):
            await answer(r, infos)  # a fails, b answers
        trace.append((loop.time(), r.breakers.state("a").value, len(gens["a"].requests)))
        await answer(r, infos)  # a is open: straight to b
        trace.append((loop.time(), r.breakers.state("a").value, len(gens["a"].requests)))
        await asyncio.sleep(2.0)
        gens["a"].fails_at_once = False  # it came back
        await answer(r, infos)  # the half-open probe goes to a and closes it
        trace.append((loop.time(), r.breakers.state("a").value, len(gens["a"].requests)))
        return trace

    trace, _ = run_virtual(scenario)
    assert trace[0][1] == "open" and trace[0][2] == 2
    assert trace[1][1] == "open" and trace[1][2] == 2  # no request reached the open generator
    assert trace[2][1] == "closed" and trace[2][2] == 3


def test_never_more_than_half_of_the_generators_are_ejected() -> None:
    async def scenario() -> list[str]:
        gens = {name: ScriptedGenerator(name, fails_at_once=True, first_delay=0.0) for name in "ab"}
        r = router(gens, breaker=BreakerSettings(consecutive_failures=1, open_s=2.0))
        infos = [g.info() for g in gens.values()]
        for _ in range(4):
            with pytest.raises(Unavailable):
                await answer(r, infos)
        return [r.breakers.state(n).value for n in "ab"]

    states, _ = run_virtual(scenario)
    assert sorted(states) == ["closed", "open"]


# ---------------------------------------------------------------- mid-stream
def test_a_generator_dying_mid_stream_is_continued_by_another_from_the_text_sent() -> None:
    async def scenario() -> tuple[str, StreamReport, dict[str, ScriptedGenerator]]:
        gens = {"a": ScriptedGenerator("a", die_after=4), "b": ScriptedGenerator("b")}
        r = router(gens)
        text, report, _ = await answer(r, [gens["a"].info(load=0), gens["b"].info(load=5)])
        return text, report, gens

    (text, report, gens), _ = run_virtual(scenario)
    assert text == FULL  # one uninterrupted answer
    [failover] = report.failovers
    assert (failover.from_node, failover.to_node, failover.after_pieces) == ("a", "b", 4)
    continued = gens["b"].requests[0]
    assert continued.continuation == " ".join(ANSWER[:4])
    assert continued.max_tokens == len(ANSWER) - 4
    assert continued.model == "gemma" and continued.messages == REQUEST.messages
    assert report.generator == "b"


def test_a_stall_after_the_first_piece_fails_over_after_the_stall_timeout() -> None:
    async def scenario() -> tuple[str, StreamReport, list[float], int]:
        gens = {"a": ScriptedGenerator("a", stall_after=3), "b": ScriptedGenerator("b")}
        r = router(gens)
        text, report, times = await answer(r, [gens["a"].info(load=0), gens["b"].info(load=5)])
        return text, report, times, gens["a"].closed

    (text, report, times, a_closed), _ = run_virtual(scenario)
    assert text == FULL
    assert "no next token within 5 s" in report.failovers[0].reason
    # piece 3 at 0.2 + 2 * 0.05; the stall is noticed 5 s after it, b's first piece 0.2 s later.
    assert times[3] - times[2] == pytest.approx(5.0 + 0.2, abs=1e-6)
    assert a_closed == 1  # the stalled stream was closed (the generator node cancels the generation)


def test_queue_time_has_its_own_timeout_not_the_stall_timeout() -> None:
    async def scenario() -> tuple[str, StreamReport]:
        gens = {"a": ScriptedGenerator("a", first_delay=30.0), "b": ScriptedGenerator("b")}
        r = router(gens)
        text, report, _ = await answer(r, [gens["a"].info(load=0), gens["b"].info(load=5)])
        return text, report

    (text, report), _ = run_virtual(scenario)
    assert text == FULL and report.generator == "a" and report.attempts == 1  # 30 s in the queue is fine


def test_only_a_generator_of_the_same_model_that_continues_takes_over() -> None:
    async def scenario() -> tuple[dict[str, ScriptedGenerator], StreamReport]:
        gens = {"a": ScriptedGenerator("a", die_after=2), "b": ScriptedGenerator("b"), "c": ScriptedGenerator("c")}
        r = router(gens)
        infos = [gens["a"].info(load=0), gens["b"].info(load=5, model="llama"), gens["c"].info(load=5, continues=False)]
        report = StreamReport()
        with pytest.raises(GenerationFailed) as failed:
            async for _ in r.stream(REQUEST, lambda: infos, report):
                pass
        assert failed.value.retryable is False and "cut after 2 tokens" in failed.value.message
        return gens, report

    (gens, _report), _ = run_virtual(scenario)
    assert not gens["b"].requests and not gens["c"].requests


def test_failovers_are_bounded() -> None:
    async def scenario() -> tuple[int, StreamReport]:
        gens = {name: ScriptedGenerator(name, die_after=1) for name in "abcde"}
        r = router(gens, breaker=BreakerSettings(consecutive_failures=10))
        report = StreamReport()
        with pytest.raises(GenerationFailed):
            async for _ in r.stream(REQUEST, lambda: [g.info() for g in gens.values()], report):
                pass
        return sum(len(g.requests) for g in gens.values()), report

    (requests, report), _ = run_virtual(scenario)
    assert requests == 1 + SETTINGS.max_failovers and len(report.failovers) == 1 + SETTINGS.max_failovers


def test_a_client_that_goes_away_closes_the_generator_stream_and_blames_nobody() -> None:
    async def scenario() -> tuple[int, BreakerState, int]:
        gens = {"a": ScriptedGenerator("a", gap=1.0)}
        r = router(gens, breaker=BreakerSettings(consecutive_failures=1))
        stream = r.stream(REQUEST, lambda: [gens["a"].info()], StreamReport())
        await anext(stream)
        await stream.aclose()
        return gens["a"].closed, r.breakers.state("a"), r.outstanding("a")

    (closed, state, outstanding), _ = run_virtual(scenario)
    assert closed == 1 and state is BreakerState.CLOSED and outstanding == 0


def test_a_request_the_generator_refuses_as_malformed_is_not_retried_elsewhere() -> None:
    class Refusing(ScriptedGenerator):
        async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
            self.requests.append(request)
            raise GenerationFailed("the prompt does not fit the context", retryable=False)
            yield ""  # pragma: no cover  (an async generator)

    async def scenario() -> tuple[dict[str, ScriptedGenerator], BreakerState]:
        gens: dict[str, ScriptedGenerator] = {"a": Refusing("a"), "b": Refusing("b")}
        r = router(gens, breaker=BreakerSettings(consecutive_failures=1))
        with pytest.raises(GenerationFailed, match="does not fit"):
            await answer(r, [g.info() for g in gens.values()])
        return gens, r.breakers.state("a")

    (gens, state), _ = run_virtual(scenario)
    assert sum(len(g.requests) for g in gens.values()) == 1
    assert state is BreakerState.CLOSED
