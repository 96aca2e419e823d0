"""Hinted handoff on this node: storing the writes a replica missed, replaying them later.

The protocol rules live here; the hint store (store/hints.py) is the durable
queue and the peer client the transport. Bounded as Cassandra's hints are:

* no new hints for a replica down longer than ``cluster.max_hint_window_s``,
  and hints older than that expire before each replay round;
* at most ``cluster.max_hint_bytes`` per target (the store refuses beyond it);
* a hint its replica refuses for good (any 4xx: clock drift, not the owner,
  too large) is dropped, not retried: kept, it would block the queue behind it.

Every drop is counted by reason and logged; anti-entropy repair still brings
the replica its copy. Blocking store calls run through ``blocking`` (the
storage executor), hint bodies are packed there too.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, TypeVar

from meshrag import wire
from meshrag.cluster import messages as msg
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.cluster.writes import NotOwnerReply, Refused
from meshrag.config import ClusterConfig
from meshrag.gossip import Memberlist
from meshrag.gossip.state import MemberState
from meshrag.ring import RingStatus, RingTable
from meshrag.store.hints import HintStore
from meshrag.store.types import DocumentWrite

log = logging.getLogger(__name__)
T = TypeVar("T")

HINTS_PER_ROUND = 16
LIVE_STATES = (MemberState.ALIVE, MemberState.SUSPECT)
Blocking = Callable[..., Awaitable[Any]]


def typed_refusal(exc: PeerError) -> Exception:
    """What a failed apply means for its sender: re-plan (409), give up (other 4xx), or retry/hint."""
    if exc.status == 409:
        return NotOwnerReply(exc.reason)
    if exc.status is not None and 400 <= exc.status < 500:
        return Refused(exc.reason)
    return exc


class HintedHandoff:
    def __init__(
        self, *, hints: HintStore, peers: PeerClient, members: Memberlist, settings: ClusterConfig,
        ring_table: Callable[[], RingTable], address_of: Callable[[str], str], name_of: Callable[[str], str],
        is_alive: Callable[[str], bool], blocking: Blocking, apply_path: str,
    ) -> None:
        self.hints = hints
        self._peers = peers
        self._members = members
        self._settings = settings
        self._ring_table = ring_table
        self._address_of = address_of
        self._name_of = name_of
        self._is_alive = is_alive
        self._blocking = blocking
        self._apply_path = apply_path

    async def store(self, node_id: str, docs: list[DocumentWrite]) -> None:
        """Keep ``docs`` for ``node_id``, in bodies that fit one /_mesh/ message."""
        if self._down_longer_than_window(node_id):
            self.hints.count_dropped("window", len(docs))
            log.info("no hint for %s: down longer than cluster.max_hint_window_s; repair brings its copy", self._name_of(node_id))
            return

        def store(batch: list[DocumentWrite]) -> None:  # packing multi-MiB bodies: off the loop too
            self.hints.add(node_id, wire.pack(msg.apply_body(batch)), len(batch))

        for batch in msg.split_to_fit(docs, self._settings.max_message_bytes):
            await self._blocking(store, batch)

    def _down_longer_than_window(self, node_id: str) -> bool:
        """Cassandra's rule: no new hints for a replica down longer than the hint window."""
        member = self._members.member(node_id)
        if member is None or member.state in LIVE_STATES:
            return False
        return self._members.clock.wall() - member.since > self._settings.max_hint_window_s

    async def replay(self) -> int:
        """Deliver hints to every replica that is alive again; returns documents delivered.
        Hints older than the hint window are dropped first."""
        horizon = self._members.clock.wall() - self._settings.max_hint_window_s
        expired = await self._blocking(self.hints.expire, horizon)
        if expired:
            log.warning("dropped %d hinted documents older than the hint window (%.0f s); repair brings them",
                        expired, self._settings.max_hint_window_s)
        delivered = 0
        for target in await self._blocking(self.hints.pending):
            entry = self._ring_table().get(target)
            if entry is not None and entry.status is RingStatus.REMOVED:
                await self._blocking(self.hints.drop_target, target)
            elif self._is_alive(target):
                delivered += await self._replay_to(target)
        return delivered

    async def _replay_to(self, target: str) -> int:
        delivered = 0
        while hints := await self._blocking(self.hints.next_for, target, HINTS_PER_ROUND):
            for hint in hints:
                try:
                    await self._peers.call_packed(self._address_of(target), self._apply_path, hint.body)
                except PeerError as exc:
                    if typed_refusal(exc) is exc:  # down, slow or failing: try again later
                        log.info("hint replay to %s paused: %s", self._name_of(target), exc)
                        return delivered
                    log.warning("dropped an undeliverable hint of %d documents for %s: %s",
                                hint.documents, self._name_of(target), exc)
                    await self._blocking(self.hints.discard, hint, "undeliverable")
                    continue
                await self._blocking(self.hints.remove, [hint.hint_id])
                delivered += hint.documents
        if delivered:
            log.info("replayed %d hinted documents to %s", delivered, self._name_of(target))
        return delivered
