"""A virtual-time asyncio event loop, for testing orchestration (hedging, deadlines) without waiting.

The loop's ``time()`` is virtual. When nothing is ready and the next timer is
``timeout`` seconds away, the selector first polls the real file descriptors
without blocking; if none is ready it moves virtual time forward by
``timeout`` and returns at once, so the loop runs that timer next. This is the
approach of aiotools' VirtualClock and asynctest's ClockedTestCase, done by
giving the loop its own selector rather than patching one.

With no timer at all the selector blocks for real: only another thread (an
executor job, ``call_soon_threadsafe``) can then make progress, and it wakes
the loop through its self-pipe as usual. Real I/O and threads do race virtual
time: a coroutine that waits on a thread and on a virtual timer at once sees
the timer fire first. Use it for code whose waiting is all asyncio timers.

Timers due at the same virtual instant run in the order they were scheduled.
On a real clock two ``call_later(1.0)`` in a row get deadlines a few
nanoseconds apart and so run first-in first-out; on a clock that stands still
while callbacks run they tie, and asyncio's heap breaks ties in no particular
order, so the loop gives its timers a sequence number to keep the real order.

``loop.clock`` is a ``meshrag.clock.Clock`` on the same timeline, so pure
components (breakers, trackers) and asyncio timers agree on what time it is.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import selectors
from typing import Any, Callable, Coroutine, ParamSpec, TypeVar, TypeVarTuple

P = ParamSpec("P")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

WALL_EPOCH = 1_700_000_000.0  # as meshrag.clock.VirtualClock's default wall start


class _Timeline:
    def __init__(self, start: float) -> None:
        self.now = start

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _TimeJumpingSelector(selectors.DefaultSelector):
    """Polls real fds without blocking; when none is ready, jumps the timeline to the next timer."""

    def __init__(self, timeline: _Timeline) -> None:
        super().__init__()
        self._timeline = timeline

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            return super().select(None)
        events = super().select(0)
        if not events and timeout > 0:
            self._timeline.advance(timeout)
        return events


class _FifoTimerHandle(asyncio.TimerHandle):
    """A timer handle that orders equal deadlines by scheduling order."""

    __slots__ = ("_sequence",)

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...],
                 loop: asyncio.AbstractEventLoop, context: contextvars.Context | None, sequence: int) -> None:
        super().__init__(when, callback, args, loop, context)
        self._sequence = sequence

    def __lt__(self, other: asyncio.TimerHandle) -> bool:
        if isinstance(other, _FifoTimerHandle):
            return (self.when(), self._sequence) < (other.when(), other._sequence)
        return super().__lt__(other)


class LoopClock:
    """``meshrag.clock.Clock`` over a loop's time: ``now()`` is ``loop.time()``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wall_epoch: float = WALL_EPOCH) -> None:
        self._loop = loop
        self._wall_epoch = wall_epoch

    def now(self) -> float:
        return self._loop.time()

    def wall(self) -> float:
        return self._wall_epoch + self._loop.time()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose time is virtual and never waits for a timer."""

    def __init__(self, start: float = 0.0) -> None:
        self._timeline = _Timeline(start)
        super().__init__(_TimeJumpingSelector(self._timeline))
        self.clock = LoopClock(self)
        self._timer_sequence = 0

    def time(self) -> float:
        return self._timeline.now

    def call_at(self, when: float, callback: Callable[[*Ts], object], *args: *Ts,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        # BaseEventLoop.call_at (Python 3.11), with a handle that keeps ties first-in first-out.
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        if self.get_debug():
            self._check_thread()  # type: ignore[attr-defined]
            self._check_callback(callback, "call_at")  # type: ignore[attr-defined]
        self._timer_sequence += 1
        timer = _FifoTimerHandle(when, callback, args, self, context, self._timer_sequence)
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer


def run_virtual(coro_fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> tuple[T, float]:
    """Run ``coro_fn(*args, **kwargs)`` on a fresh VirtualTimeLoop; its result and the virtual seconds it took."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        loop = runner.get_loop()
        started = loop.time()
        result = runner.run(coro_fn(*args, **kwargs))
        return result, loop.time() - started
