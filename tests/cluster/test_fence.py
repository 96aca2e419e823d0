"""cluster/fence.py: writes and the hand-off's final sync + drop exclude each other per partition."""

from __future__ import annotations

import asyncio

import pytest

from meshrag.cluster.fence import Fenced, PartitionFence


async def test_a_write_to_a_fenced_partition_is_refused_at_once_and_others_pass() -> None:
    fence = PartitionFence()
    async with fence.exclusive(3):
        with pytest.raises(Fenced) as failure:
            async with fence.writing([1, 3]):
                pass
        assert failure.value.pids == [3]
        async with fence.writing([1, 2]):  # other partitions are not fenced
            assert fence.writers(1) == 1
    async with fence.writing([3]):  # the fence is gone with the hand-off
        assert fence.writers(3) == 1


async def test_the_fence_waits_for_writes_admitted_before_it() -> None:
    fence = PartitionFence()
    committed = asyncio.Event()
    order: list[str] = []

    async def slow_write() -> None:
        async with fence.writing([5]):
            await committed.wait()
            order.append("write committed")

    async def hand_off() -> None:
        async with fence.exclusive(5):
            order.append("final sync and drop")

    writer = asyncio.create_task(slow_write())
    await asyncio.sleep(0)  # the write is admitted
    handing = asyncio.create_task(hand_off())
    await asyncio.sleep(0.01)
    assert order == [] and fence.is_fenced(5), "the hand-off must wait for the admitted write"
    with pytest.raises(Fenced):
        async with fence.writing([5]):  # a late write is refused meanwhile
            pass
    committed.set()
    await asyncio.gather(writer, handing)
    assert order == ["write committed", "final sync and drop"]
    assert not fence.is_fenced(5) and fence.writers(5) == 0


async def test_a_failed_write_still_leaves_the_fence() -> None:
    fence = PartitionFence()
    with pytest.raises(RuntimeError):
        async with fence.writing([7]):
            raise RuntimeError("disk full")
    assert fence.writers(7) == 0
    async with fence.exclusive(7):
        pass
