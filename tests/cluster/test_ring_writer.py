"""cluster/ringstate.py: cluster.json written off the event loop by OrderedFileWriter
(one write at a time, in order, the latest state winning), and RingState using it."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import pytest

from meshrag.cluster.ringstate import ClusterSettings, OrderedFileWriter, RingState
from meshrag.ring import RingEntry, RingStatus

SETTINGS = ClusterSettings(partitions=8, replicas=3, model="m@1", dim=4)


class ManualExecutor:
    """Blocking steps wait here until the test runs them, so it sees what is in flight."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[[], None], asyncio.Future[None]]] = []

    def run(self, fn: Callable[[], None]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queued.append((fn, future))
        return future

    def finish_one(self) -> None:
        fn, future = self.queued.pop(0)
        try:
            fn()
        except OSError as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)


async def settle() -> None:
    for _ in range(3):  # done callbacks run on the next loop iterations
        await asyncio.sleep(0)


async def test_one_write_at_a_time_and_only_the_latest_waiting_state_is_written(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    executor = ManualExecutor()
    writer = OrderedFileWriter(path, executor.run)
    writer.submit("first")
    writer.submit("second")
    writer.submit("third")
    assert len(executor.queued) == 1 and not path.exists(), "nothing is written on the loop"
    executor.finish_one()
    assert path.read_text() == "first"
    await settle()
    assert len(executor.queued) == 1, "second was replaced by third while first was written"
    executor.finish_one()
    await settle()
    assert path.read_text() == "third" and executor.queued == []
    await asyncio.wait_for(writer.flush(), 1)


async def test_flush_waits_for_the_last_submitted_state(tmp_path: Path) -> None:
    executor = ManualExecutor()
    writer = OrderedFileWriter(tmp_path / "state.json", executor.run)
    writer.submit("a")
    flushed = asyncio.ensure_future(writer.flush())
    await settle()
    assert not flushed.done()
    executor.finish_one()
    await settle()
    assert flushed.done()


async def test_a_failed_write_is_logged_and_the_next_state_still_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "missing-dir" / "state.json"
    executor = ManualExecutor()
    writer = OrderedFileWriter(path, executor.run)
    writer.submit("lost")
    executor.finish_one()
    await settle()
    assert "could not write" in caplog.text
    path.parent.mkdir()
    writer.submit("kept")
    executor.finish_one()
    await settle()
    assert path.read_text() == "kept"
    await asyncio.wait_for(writer.flush(), 1)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(1)
    yield executor
    executor.shutdown()


async def test_a_restart_finds_the_latest_ring_written_off_the_loop(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    state = RingState(tmp_path, "a", lambda fn: loop.run_in_executor(pool, fn))
    state.adopt_settings(SETTINGS)
    state.add_self("node-a", "z1", RingStatus.JOINING, 10)
    for version in range(11, 40):  # a burst of changes, as a ring exchange brings them
        state.merge([RingEntry("b", "node-b", "z2", RingStatus.NORMAL, version)])
    state.set_status("a", RingStatus.NORMAL, 50)
    await asyncio.wait_for(state.flush(), 5)
    again = RingState(tmp_path, "a")
    assert again.load()
    assert again.table.fingerprint() == state.table.fingerprint()
    assert again.self_entry == RingEntry("a", "node-a", "z1", RingStatus.NORMAL, 50)
    assert json.loads(state.path.read_text())["settings"]["partitions"] == 8
    assert not state.path.with_name(state.path.name + ".tmp").exists()
