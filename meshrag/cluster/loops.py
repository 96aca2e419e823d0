"""The cluster service's background work: its three loops and every task it spawns.

* ring exchange: the ring table is pushed to every member on a local change
  and pulled from a random member every ``ring_sync_interval_s``; the same
  loop removes members dead longer than ``auto_remove_after_s`` (0 = never);
* hint replay: hints for replicas gossip sees alive are delivered, oldest first,
  at once when a member comes back, joins or updates its metadata, and every
  ``hint_replay_interval_s``;
* repair: an anti-entropy pass every ``repair_interval_s``, and at once when
  the ring changes or a member comes back or joins (members back from suspect
  or dead are named to the pass, which pushes them what they missed).

Gossip events and ring changes only set triggers here; the loops do the work.
Every background task of the service (these loops, ring pushes, read repairs,
hint drops) is started through ``spawn``, so ``stop`` ends them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Awaitable, Callable, Mapping

from meshrag.clock import HybridLogicalClock
from meshrag.cluster.handoff import LIVE_STATES, HintedHandoff
from meshrag.cluster.messages import RING_PATH
from meshrag.cluster.repair import Repairer
from meshrag.cluster.ringstate import RingState
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.config import ClusterConfig
from meshrag.gossip import EventKind, MemberEvent, Memberlist
from meshrag.gossip.state import MemberState
from meshrag.ring import Ring, RingEntry, RingStatus

log = logging.getLogger(__name__)

RING_EXCHANGE_TIMEOUT_S = 5.0


class ClusterLoops:
    def __init__(
        self, *, node_id: str, settings: ClusterConfig, ring_state: RingState, members: Memberlist, peers: PeerClient,
        hlc: HybridLogicalClock, address_of: Callable[[str], str], is_alive: Callable[[str], bool],
        handoff: HintedHandoff, repairer: Repairer, rng: random.Random,
        shared_out: Callable[[], dict[str, Any]] = dict, shared_in: Callable[[Mapping[str, Any]], None] = lambda _: None,
    ) -> None:
        self._node_id = node_id
        # Cluster-wide state that rides on the ring exchange (the API keys): what we send, what we merge.
        self._shared_out, self._shared_in = shared_out, shared_in
        self._settings = settings
        self._ring_state = ring_state
        self._members = members
        self._peers = peers
        self._hlc = hlc
        self._address_of = address_of
        self._is_alive = is_alive
        self._handoff = handoff
        self._repairer = repairer
        self._rng = rng
        self._repair_wanted = asyncio.Event()
        self._returned: set[str] = set()  # peers back from suspect/dead since the last pass
        self._hints_wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.spawn(self._ring_loop())
        self.spawn(self._hint_loop())
        self.spawn(self._repair_loop())

    async def stop(self) -> None:
        """Cancel every spawned task and wait for them to end."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background until it ends or stop() cancels it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ triggers
    def on_member_event(self, event: MemberEvent) -> None:
        if event.kind in (EventKind.ALIVE, EventKind.JOINED, EventKind.UPDATED) and event.member.node_id != self._node_id:
            self._hints_wanted.set()
            if event.kind is EventKind.ALIVE:
                self._returned.add(event.member.node_id)
            if event.kind is not EventKind.UPDATED:
                self._repair_wanted.set()

    def on_ring_change(self, ring: Ring) -> None:
        self._repair_wanted.set()
        self.spawn(self._push_ring_to_all())

    # ------------------------------------------------------------ ring exchange
    async def exchange_ring(self, node_id: str) -> None:
        """Send our ring table to ``node_id`` and merge the one it answers (a failure is only logged:
        the next exchange, with it or another member, brings the same table)."""
        try:
            reply = await self._peers.call(
                self._address_of(node_id), RING_PATH, {"ring": self._ring_state.table.to_list(), **self._shared_out()},
                timeout_s=RING_EXCHANGE_TIMEOUT_S,
            )
            self._ring_state.merge(RingEntry.from_dict(item) for item in reply.get("ring") or [])
            self._shared_in(reply)
        except PeerError as exc:
            log.debug("ring exchange with %s failed: %s", node_id[:12], exc)

    def spread_now(self) -> None:
        """Exchange with every live peer now (a change to the shared state), not one per interval."""
        self.spawn(self._push_ring_to_all())

    async def _push_ring_to_all(self) -> None:
        await asyncio.gather(*(self.exchange_ring(node_id) for node_id in self._live_peers()))

    async def _ring_loop(self) -> None:
        while True:
            peers = self._live_peers()
            if peers:
                await self.exchange_ring(self._rng.choice(peers))
            self._auto_remove()
            await asyncio.sleep(self._settings.ring_sync_interval_s)

    def _live_peers(self) -> list[str]:
        return [m.node_id for m in self._members.members() if m.node_id != self._node_id and m.state in LIVE_STATES]

    def _auto_remove(self) -> None:
        """Optional: remove members dead longer than auto_remove_after_s (0 = never).
        Only the lowest-id live normal member decides, so one node acts."""
        limit = self._settings.auto_remove_after_s
        if limit <= 0:
            return
        ring = self._ring_state.ring
        deciders = sorted(n for n, e in ring.entries.items() if e.status is RingStatus.NORMAL and self._is_alive(n))
        if not deciders or deciders[0] != self._node_id:
            return
        now = self._members.clock.wall()
        for node_id, entry in ring.entries.items():
            member = self._members.member(node_id)
            if member is None or member.state not in (MemberState.DEAD, MemberState.LEFT):
                continue
            if entry.status in (RingStatus.NORMAL, RingStatus.LEAVING) and now - member.since > limit:
                log.warning("auto-removing %s: dead for %.0f s", entry.name, now - member.since)
                self._ring_state.set_status(node_id, RingStatus.REMOVED, self._hlc.now())

    # ------------------------------------------------------------ hints and repair
    async def _hint_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._hints_wanted.wait(), timeout=self._settings.hint_replay_interval_s)
            except asyncio.TimeoutError:
                pass
            self._hints_wanted.clear()
            try:
                await self._handoff.replay()
            except Exception:
                log.exception("hint replay failed")

    async def _repair_loop(self) -> None:
        self._repair_wanted.set()  # a pass at start: catch up on what was missed while down
        while True:
            try:
                await asyncio.wait_for(self._repair_wanted.wait(), timeout=self._settings.repair_interval_s)
                reason = "triggered"
            except asyncio.TimeoutError:
                reason = "periodic"
            self._repair_wanted.clear()
            returned, self._returned = frozenset(self._returned), set()
            try:
                await self._repairer.run_pass(reason, returned)
            except Exception:
                log.exception("repair pass failed")
                await asyncio.sleep(1.0)
