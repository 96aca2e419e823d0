"""virtual_loop.py: asyncio timers on virtual time, with no wall-clock waiting."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from meshrag.clock import Clock
from tests.virtual_loop import WALL_EPOCH, VirtualTimeLoop, run_virtual


def test_an_hour_of_sleep_takes_no_real_time() -> None:
    async def sleep_an_hour() -> str:
        await asyncio.sleep(3600)
        return "rested"

    real_start = time.monotonic()
    result, elapsed = run_virtual(sleep_an_hour)
    assert result == "rested"
    assert elapsed == pytest.approx(3600.0)
    assert time.monotonic() - real_start < 1.0


def test_wait_for_times_out_at_its_virtual_deadline() -> None:
    async def too_slow() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10.0), timeout=2.5)
        return loop.time()

    timed_out_at, elapsed = run_virtual(too_slow)
    assert timed_out_at == pytest.approx(2.5) and elapsed == pytest.approx(2.5)


def test_wait_for_returns_when_the_work_finishes_first() -> None:
    async def quick_enough() -> str:
        return await asyncio.wait_for(asyncio.sleep(1.0, result="done"), timeout=5.0)

    assert run_virtual(quick_enough) == ("done", pytest.approx(1.0))


def test_concurrent_sleeps_finish_in_order_at_their_times() -> None:
    async def two_sleepers() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        finished: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            finished.append((name, loop.time()))

        await asyncio.gather(sleeper("long", 4.0), sleeper("short", 1.5))
        return finished

    finished, elapsed = run_virtual(two_sleepers)
    assert [name for name, _ in finished] == ["short", "long"]
    assert [at for _, at in finished] == pytest.approx([1.5, 4.0])
    assert elapsed == pytest.approx(4.0)


def test_wait_first_completed_returns_the_first_finisher() -> None:
    async def race() -> tuple[set[str], float]:
        fast = asyncio.create_task(asyncio.sleep(3.0, result="fast"))
        slow = asyncio.create_task(asyncio.sleep(7.0, result="slow"))
        done, pending = await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED, timeout=5.0)
        at = asyncio.get_running_loop().time()
        for task in pending:
            task.cancel()
        return {task.result() for task in done}, at

    (done, at), _ = run_virtual(race)
    assert done == {"fast"} and at == pytest.approx(3.0)


def test_wait_first_completed_times_out_with_nothing_done() -> None:
    async def nobody_finishes() -> tuple[int, int, float]:
        tasks = {asyncio.create_task(asyncio.sleep(s)) for s in (8.0, 9.0)}
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=5.0)
        at = asyncio.get_running_loop().time()
        for task in pending:
            task.cancel()
        return len(done), len(pending), at

    (done, pending, at), _ = run_virtual(nobody_finishes)
    assert (done, pending) == (0, 2) and at == pytest.approx(5.0)


def test_loop_clock_shares_the_loops_timeline() -> None:
    async def read_clock() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        clock: Clock = loop.clock
        before = clock.now()
        await asyncio.sleep(42.0)
        return before, clock.now(), clock.wall()

    (before, after, wall), _ = run_virtual(read_clock)
    assert after - before == pytest.approx(42.0)
    assert wall == pytest.approx(WALL_EPOCH + after)


def test_call_later_callbacks_run_at_their_virtual_times() -> None:
    async def schedule() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []
        done = loop.create_future()
        loop.call_later(2.0, lambda: fired.append(("b", loop.time())))
        loop.call_later(0.5, lambda: fired.append(("a", loop.time())))
        loop.call_later(2.0, lambda: fired.append(("c", loop.time())))  # same time: after b
        loop.call_later(3.0, done.set_result, None)
        await done
        return fired

    fired, _ = run_virtual(schedule)
    assert [name for name, _ in fired] == ["a", "b", "c"]
    assert [at for _, at in fired] == pytest.approx([0.5, 2.0, 2.0])


def test_threads_still_wake_the_loop() -> None:
    async def from_threads() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        from_executor = await loop.run_in_executor(None, lambda: 6 * 7)
        woken = loop.create_future()
        threading.Thread(target=lambda: loop.call_soon_threadsafe(woken.set_result, "woken")).start()
        return from_executor, await woken

    (result, elapsed) = run_virtual(from_threads)
    assert result == (42, "woken") and elapsed == 0.0


def test_run_virtual_passes_arguments() -> None:
    async def add_later(a: int, b: int, delay: float = 0.0) -> int:
        await asyncio.sleep(delay)
        return a + b

    assert run_virtual(add_later, 2, 3, delay=1.25) == (5, pytest.approx(1.25))
