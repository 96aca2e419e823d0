"""A fence per partition between writes and the hand-off that drops the partition.

A node hands off a partition it no longer owns: it pushes the documents to
the new owners and then deletes its copy. A write accepted after the last
push but before the delete would be lost with the copy (the coordinator
counted this node's ack). The fence closes that window:

* every apply to a partition runs inside ``writing(pids)``, which refuses at
  once (``Fenced``) when a partition is fenced;
* the hand-off takes ``exclusive(pid)``: new writes are refused from then on,
  and it waits until the writes already admitted have committed, so its final
  push carries them; it then drops the partition and lets go.

A refused writer answers 409 (not the owner) and its coordinator re-plans
with the newer ring. Pure asyncio: no clock, no I/O.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import asynccontextmanager
from typing import AsyncIterator, Iterable


class Fenced(Exception):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(f"partitions {pids} are being handed off by this node")
        self.pids = pids


class PartitionFence:
    def __init__(self) -> None:
        self._fenced: set[int] = set()
        self._writers: Counter[int] = Counter()
        self._changed = asyncio.Condition()

    def is_fenced(self, pid: int) -> bool:
        return pid in self._fenced

    def writers(self, pid: int) -> int:
        return self._writers[pid]

    @asynccontextmanager
    async def writing(self, pids: Iterable[int]) -> AsyncIterator[None]:
        """Admit one write touching ``pids``; ``Fenced`` if any of them is fenced."""
        wanted = sorted(set(pids))
        blocked = [pid for pid in wanted if pid in self._fenced]
        if blocked:
            raise Fenced(blocked)
        self._writers.update(wanted)
        try:
            yield
        finally:
            self._writers.subtract(wanted)
            async with self._changed:
                self._changed.notify_all()

    @asynccontextmanager
    async def exclusive(self, pid: int) -> AsyncIterator[None]:
        """Refuse new writes to ``pid`` and wait for the admitted ones to finish."""
        if pid in self._fenced:
            raise Fenced([pid])
        self._fenced.add(pid)
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self._writers[pid] <= 0)
            yield
        finally:
            self._fenced.discard(pid)
