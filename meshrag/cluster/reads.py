"""Reads across replicas: document lookups and doc states (search: scatter.py and search.py).

For each partition the reader tries replicas in order: those named by the
request's session token first (they hold the session's writes), then the
current owners; alive ones only, this node first (no network hop). A read
with a session token must hear from one of the replicas the token names for
the partition (and that still own it): when none answers (dead, cut off, or
beaten by a hedge), the read is 503 rather than an answer that may miss the
session's own writes.

A document lookup reads as many replicas as its consistency asks (one,
quorum, all of the partition's owners) and returns the newest copy by the
stores' write order; the replicas that answered with an older copy, or none,
are named so the caller repairs them (read repair). Absence is not evidence:
when none of those replicas holds the document, the remaining ones are asked
before the answer is "not found".

The local store and the peer calls are injected (node.py wires them).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Sequence

from meshrag.cluster.writes import required_acks
from meshrag.errors import Unavailable
from meshrag.ring import Ring
from meshrag.ring import partition_for
from meshrag.store.types import DocState, StoredDocument, write_order

log = logging.getLogger(__name__)


# How long the ingest's pre-read waits for the rest of the replicas once a majority of each
# document's owners answered: healthy replicas on a busy host answer within milliseconds.
STATES_GRACE_S = 0.1

# A document read asks one more replica each time this passes without enough answers:
# healthy replicas answer in milliseconds, a frozen one not before the 5 s peer timeout.
READ_HEDGE_S = 0.25

GetCall = Callable[[str, str], Awaitable[StoredDocument | None]]
StatesCall = Callable[[str, list[str]], Awaitable[dict[str, DocState]]]


@dataclass
class ReadOutcome:
    """The newest copy among the replicas read (None: none holds it) and who lags behind it."""

    doc: StoredDocument | None
    holder: str | None          # a replica that holds ``doc``
    stale: list[str]            # replicas that answered with an older copy or none


class ReadUnavailable(Unavailable):
    code = "read_unavailable"


def _order(doc: StoredDocument | None) -> tuple[int, bool, str]:
    return (-1, False, "") if doc is None else write_order(doc.version, doc.deleted, doc.content_hash)


class ReplicaReader:
    def __init__(self, local_id: str, ring: Callable[[], Ring], is_alive: Callable[[str], bool]) -> None:
        self._local_id = local_id
        self._ring = ring
        self._is_alive = is_alive

    def replicas_for(self, pid: int, session: Mapping[int, list[str]] | None = None) -> list[str]:
        """Replicas to try for one partition, best first."""
        ring = self._ring()
        owners = ring.read_owners(pid)
        preferred = [node for node in (session or {}).get(pid, []) if node in ring.entries]
        ordered: list[str] = []
        for group in (preferred, owners):
            alive = [node for node in group if node == self._local_id or self._is_alive(node)]
            alive.sort(key=lambda node: node != self._local_id)  # stable: local first
            ordered.extend(node for node in alive if node not in ordered)
        return ordered

    async def get(
        self, doc_id: str, session: Mapping[int, list[str]] | None, get: GetCall, consistency: str = "quorum",
        hedge_s: float = READ_HEDGE_S,
    ) -> ReadOutcome:
        """Read ``consistency`` replicas (failing over, and asking one more replica each
        ``hedge_s`` that too few have answered), the rest too if none holds it."""
        ring = self._ring()
        pid = partition_for(doc_id, ring.partitions)
        candidates = self.replicas_for(pid, session)
        needed = min(required_acks(consistency, len(ring.read_owners(pid)) or 1), max(1, len(candidates)))
        remaining = list(candidates)
        answers = await _first_answers(doc_id, remaining, needed, get, hedge_s)

        async def ask(node: str) -> None:
            try:
                answers[node] = await get(node, doc_id)
            except Exception as exc:
                log.info("replica %s of partition %d failed: %s", node[:12], pid, exc)

        if len(answers) < needed:
            raise ReadUnavailable(
                f"read of {doc_id!r} at {consistency}: {len(answers)} of the {needed} replicas needed answered "
                f"(partition {pid}, {len(candidates)} alive)", field="consistency", retry_after_s=1,
            )
        holders = self._session_holders(pid, session, ring)
        while holders and answers.keys().isdisjoint(holders) and holders.intersection(remaining):
            node = next(n for n in remaining if n in holders)
            remaining.remove(node)
            await ask(node)  # the others answered first (a hedge): the session's writes are there
        if holders and answers.keys().isdisjoint(holders):
            # Only these replicas surely hold the session's writes; any other answer may be older.
            raise ReadUnavailable(
                f"read of {doc_id!r}: none of the replicas holding this session's writes answered "
                f"(partition {pid})", field="session", retry_after_s=1,
            )
        while all(doc is None for doc in answers.values()) and remaining:
            await ask(remaining.pop(0))  # absence is not evidence: ask the others one by one
        return _newest(answers)

    @staticmethod
    def _session_holders(pid: int, session: Mapping[int, list[str]] | None, ring: Ring) -> set[str]:
        """The replicas that acknowledged the session's writes to this partition and still own
        it (a replica the ring moved the partition away from handed its data to the new owner)."""
        return set((session or {}).get(pid, [])) & set(ring.read_owners(pid))

    async def states_on_replicas(
        self, doc_ids: Sequence[str], states: StatesCall, grace_s: float = STATES_GRACE_S,
    ) -> dict[str, list[DocState]]:
        """Each document's state on the live write owners of its partition that answer (a
        replica that fails, or does not hold the document, contributes nothing).

        Every owner is asked; the answer waits for all of them, or, once a majority of
        each document's write owners has answered, ``grace_s`` more for the rest. A
        frozen replica (SIGSTOP, a VM stall) counts as alive until gossip suspects it:
        waiting for it held every write for the peer timeout. Not hearing from it is
        what a dead replica costs anyway, and a majority still sees every version
        acknowledged at QUORUM."""
        ring = self._ring()
        groups: dict[str, list[str]] = defaultdict(list)
        majority: dict[str, int] = {}
        for doc_id in doc_ids:
            owners = ring.write_owners(partition_for(doc_id, ring.partitions))
            asked = [node for node in owners if node == self._local_id or self._is_alive(node)]
            for node in asked:
                groups[node].append(doc_id)
            majority[doc_id] = min(len(asked), len(owners) // 2 + 1)
        answers = await _answers_within_grace(groups, states, majority, grace_s)
        found: dict[str, list[DocState]] = defaultdict(list)
        for part in answers.values():
            for doc_id, state in part.items():
                found[doc_id].append(state)
        return dict(found)


async def _answers_within_grace(
    groups: Mapping[str, list[str]], states: StatesCall, majority: Mapping[str, int], grace_s: float,
) -> dict[str, dict[str, DocState]]:
    """node -> its states, for the nodes that answered: all of them, or those in by ``grace_s``
    after every document had a majority of answers. The others are cancelled."""
    loop = asyncio.get_running_loop()
    tasks = {asyncio.ensure_future(states(node, ids)): node for node, ids in groups.items()}
    answers: dict[str, dict[str, DocState]] = {}
    heard: dict[str, int] = defaultdict(int)
    pending: set[asyncio.Future[dict[str, DocState]]] = set(tasks)
    deadline: float | None = None
    try:
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break  # the grace is over
            for task in done:
                node = tasks[task]
                if task.exception() is not None:
                    log.info("states from %s failed: %s", node[:12], task.exception())
                    continue
                answers[node] = task.result()
                for doc_id in groups[node]:
                    heard[doc_id] += 1
            if deadline is None and all(heard[doc_id] >= needed for doc_id, needed in majority.items()):
                deadline = loop.time() + grace_s
    finally:
        for task in pending:
            task.cancel()
    if pending:
        log.info("states: going on without %s after the grace", sorted(tasks[t][:12] for t in pending))
    return answers


async def _first_answers(
    doc_id: str, remaining: list[str], needed: int, get: GetCall, hedge_s: float,
) -> dict[str, StoredDocument | None]:
    """Answers of the first ``needed`` replicas to answer, asked in order from ``remaining``
    (consumed): ``needed`` at first, a replacement for each failure, and one more each
    ``hedge_s`` that passes without enough answers. A frozen replica (alive to gossip for
    seconds) held such a read for the peer timeout; the slower answers are cancelled."""
    loop = asyncio.get_running_loop()
    answers: dict[str, StoredDocument | None] = {}
    pending: dict[asyncio.Future[StoredDocument | None], str] = {}
    last_asked = loop.time()

    def ask_next() -> None:
        nonlocal last_asked
        node = remaining.pop(0)
        pending[asyncio.ensure_future(get(node, doc_id))] = node
        last_asked = loop.time()

    try:
        while remaining and len(pending) < needed:
            ask_next()
        while pending and len(answers) < needed:
            timeout = max(0.0, last_asked + hedge_s - loop.time()) if remaining else None
            done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                ask_next()  # too slow: hedge on the next replica, the first asked may still win
                continue
            for task in done:
                node = pending.pop(task)
                if task.exception() is not None:
                    log.info("replica %s failed reading %r: %s", node[:12], doc_id, task.exception())
                else:
                    answers[node] = task.result()
            while remaining and len(pending) < needed - len(answers):
                ask_next()
    finally:
        for task in pending:
            task.cancel()
    return answers


def _newest(answers: Mapping[str, StoredDocument | None]) -> ReadOutcome:
    holder = max(answers, key=lambda node: _order(answers[node]), default=None)
    newest = None if holder is None else answers[holder]
    if newest is None:
        return ReadOutcome(None, None, [])
    return ReadOutcome(newest, holder, [node for node, doc in answers.items() if _order(doc) < _order(newest)])
