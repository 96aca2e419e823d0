"""Deliberate bugs that only tests switch on: the chaos checker's proof that it catches them.

The chaos suite's checker (chaos/checker.py) claims to find lost, stale and
resurrected writes. tests/chaos/test_broken_builds.py proves it against real
clusters built wrong on purpose, each with one of these faults:

* ``ack_before_commit``: a replica answers "applied" at once and commits the
  batch ``ACK_BEFORE_COMMIT_DELAY_S`` later, so a kill -9 in between loses
  acknowledged writes;
* ``stamp_without_observing``: the node's hybrid logical clock never folds in
  the versions it reads or applies, so a coordinator whose clock is behind
  stamps a new write older than the one it just read (which then loses);
* ``repair_skips_tombstones``: anti-entropy moves upserts but no deletes, so
  a replica that missed a delete keeps the document.

They come from the environment (``MESHRAG_TEST_FAULTS``, comma-separated),
never from a config file or a flag, and only a node in dev mode (``--dev``:
loopback only, no secret) accepts them: any other node refuses to start.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, fields
from typing import Any, Awaitable, Callable, Mapping

from meshrag.clock import HybridLogicalClock
from meshrag.errors import ConfigError
from meshrag.store.types import DocumentWrite, WriteResult, WriteStatus

log = logging.getLogger(__name__)

ENV = "MESHRAG_TEST_FAULTS"
ACK_BEFORE_COMMIT_DELAY_S = 3.0  # long enough for a test to kill every replica in between


@dataclass(frozen=True)
class InjectedFaults:
    ack_before_commit: bool = False
    stamp_without_observing: bool = False
    repair_skips_tombstones: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], dev: bool) -> "InjectedFaults":
        names = [name.strip() for name in environ.get(ENV, "").split(",") if name.strip()]
        known = {f.name for f in fields(cls)}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ConfigError(f"{ENV}: unknown fault {unknown[0]!r}; known: {', '.join(sorted(known))}", field=ENV)
        if names and not dev:
            raise ConfigError(f"{ENV} is for tests only and needs --dev (loopback, no secret)", field=ENV)
        faults = cls(**{name: True for name in names})
        if names:
            log.warning("TEST BUILD: deliberate faults injected: %s", ", ".join(names))
        return faults

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


NO_FAULTS = InjectedFaults()


class ForgetfulClock(HybridLogicalClock):
    """``stamp_without_observing``: checks the drift bound but folds nothing in."""

    def observe(self, remote: int) -> None:
        self.check(remote)


def acknowledge_then_commit(
    docs: list[DocumentWrite], commit: Callable[[], Awaitable[Any]], spawn: Callable[[Awaitable[Any]], None],
) -> list[WriteResult]:
    """``ack_before_commit``: every document reported applied now, committed later."""

    async def later() -> None:
        await asyncio.sleep(ACK_BEFORE_COMMIT_DELAY_S)
        await commit()

    spawn(later())
    return [WriteResult(doc.doc_id, WriteStatus.DELETED if doc.deleted else WriteStatus.UPDATED, doc.version) for doc in docs]


class SkippingTombstones:
    """``repair_skips_tombstones``: a repair side (LocalStore or PeerStores) that drops the
    tombstones it would apply here or push to a peer; everything else passes through."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def apply(self, docs: list[DocumentWrite]) -> None:
        await self._inner.apply([doc for doc in docs if not doc.deleted])

    async def push(self, node_id: str, docs: list[DocumentWrite]) -> None:
        await self._inner.push(node_id, [doc for doc in docs if not doc.deleted])
