"""The membership rules: how alive, suspect, dead and leave claims change the table.

One ordering decides every claim (state.supersedes). What this module adds is
the consequences: events for the listener, re-gossip of accepted news,
refutation of claims about ourselves, and the suspicion lifecycle (Lifeguard's
dynamic timeout, confirmation probes, one last verifying probe, and an eager
fan-out of the death verdict). `Memberlist` mixes these rules in; they use its
table, queue, prober and timers.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable

from meshrag.clock import Clock
from meshrag.gossip import codec as wire
from meshrag.gossip.awareness import Awareness
from meshrag.gossip.broadcast import BroadcastQueue
from meshrag.gossip.events import EventKind, GossipStats, MemberEvent
from meshrag.gossip.probe import Prober
from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.state import LIVE_STATES, MemberRecord, MemberState, MemberTable, Version, supersedes
from meshrag.gossip.suspicion import Suspicion
from meshrag.gossip.transport import Scheduler

log = logging.getLogger(__name__)


class MembershipRules:
    settings: GossipSettings
    table: MemberTable
    clock: Clock
    scheduler: Scheduler
    rng: random.Random
    stats: GossipStats
    broadcasts: BroadcastQueue
    awareness: Awareness
    leaving: bool
    _suspicions: dict[str, Suspicion]
    _recent_dead: dict[str, float]
    _prober: Prober
    _listener: Callable[[MemberEvent], None] | None

    @property
    def local_id(self) -> str:
        return self.table.local.node_id

    def send_messages(self, address: str, messages: list[bytes]) -> None:
        raise NotImplementedError  # Memberlist sends

    def _refresh_prefix(self) -> None:
        raise NotImplementedError  # Memberlist owns the packet prefix

    def apply_alive(self, node_id: str, name: str, address: str, generation: int, incarnation: int,
                    meta_bytes: bytes, meta: dict[str, Any], rebroadcast: bool = True) -> None:
        version = (generation, incarnation)
        if node_id == self.local_id:
            if version > self.table.local.version and not self.leaving:
                log.warning("another process claims our node id %s at %s; refuting", node_id, version)
                self.refute(generation, incarnation)
            return
        record = self.table.get(node_id)
        if record is None:
            record = MemberRecord(node_id, name, address, generation, incarnation, MemberState.ALIVE, meta, meta_bytes,
                                  since=self.clock.wall(), state_changed_at=self.clock.now())
            self.table.add(record)
            self._prober.add_member(node_id)
            if rebroadcast:
                self._broadcast_alive(record)
            self._emit(EventKind.JOINED, record, None)
            return
        if not supersedes(version, MemberState.ALIVE, record):
            return
        previous = record.state
        changed = (record.name, record.address, record.meta_bytes, record.generation) != (name, address, meta_bytes, generation)
        record.name, record.address, record.meta, record.meta_bytes = name, address, meta, meta_bytes
        record.generation, record.incarnation = version
        self._cancel_suspicion(node_id)
        self._recent_dead.pop(node_id, None)
        self.table.set_state(record, MemberState.ALIVE, self.clock.wall(), self.clock.now())
        if previous not in LIVE_STATES:
            self._prober.add_member(node_id)
        if rebroadcast:
            self._broadcast_alive(record)
        if previous != MemberState.ALIVE:
            self._emit(EventKind.ALIVE, record, previous)
        elif changed:
            self._emit(EventKind.UPDATED, record, previous)

    def apply_suspect(self, node_id: str, generation: int, incarnation: int, accuser: str) -> None:
        version = (generation, incarnation)
        if node_id == self.local_id:
            if version >= self.table.local.version and not self.leaving:
                self.refute(generation, incarnation)
            return
        record = self.table.get(node_id)
        if record is None:
            return
        if record.state == MemberState.SUSPECT and version == record.version:
            suspicion = self._suspicions.get(node_id)
            if suspicion is not None and suspicion.confirm(accuser, self.clock.now()):
                self.broadcasts.enqueue(node_id, wire.encode_suspect(node_id, generation, incarnation, accuser),
                                        alongside=accuser)
            return
        if not supersedes(version, MemberState.SUSPECT, record):
            return
        previous = record.state
        record.generation, record.incarnation = version
        self.table.set_state(record, MemberState.SUSPECT, self.clock.wall(), self.clock.now())
        if previous not in LIVE_STATES:
            self._prober.add_member(node_id)
        self._start_suspicion(record, accuser)
        self.broadcasts.enqueue(node_id, wire.encode_suspect(node_id, generation, incarnation, accuser))
        self._emit(EventKind.SUSPECT, record, previous)
        if accuser != self.local_id:
            self._maybe_confirmation_probe(record)

    def _maybe_confirmation_probe(self, record: MemberRecord) -> None:
        """Probe a fresh suspect now with probability confirmation_probes/(N-2) (see settings)."""
        wanted = self.settings.confirmation_probes
        if not self.settings.lifeguard or wanted <= 0 or self.leaving:
            return
        if self.rng.random() < wanted / max(1, self.table.live_count() - 2):
            node_id, version = record.node_id, record.version
            self._prober.probe(record, lambda ok: ok or self.on_probe_failed(node_id, version))

    def apply_dead(self, node_id: str, generation: int, incarnation: int, accuser: str) -> None:
        self._apply_final(node_id, (generation, incarnation), MemberState.DEAD,
                          wire.encode_dead(node_id, generation, incarnation, accuser))

    def apply_leave(self, node_id: str, generation: int, incarnation: int) -> None:
        self._apply_final(node_id, (generation, incarnation), MemberState.LEFT,
                          wire.encode_leave(node_id, generation, incarnation))

    def _apply_final(self, node_id: str, version: Version, state: MemberState, message: bytes) -> None:
        if node_id == self.local_id:
            if version >= self.table.local.version and not self.leaving:
                self.refute(*version)
            return
        record = self.table.get(node_id)
        if record is None or not supersedes(version, state, record):
            return
        previous = record.state
        self._cancel_suspicion(node_id)
        record.generation, record.incarnation = version
        self.table.set_state(record, state, self.clock.wall(), self.clock.now())
        if state == MemberState.DEAD:
            self._recent_dead[node_id] = self.clock.now()
        else:
            self._recent_dead.pop(node_id, None)
        self.broadcasts.enqueue(node_id, message)
        self._emit(EventKind.DEAD if state == MemberState.DEAD else EventKind.LEFT, record, previous)

    def add_record(self, fields: list[Any], state: MemberState) -> None:
        """A member first heard of through push-pull already dead or left: remember it (the ring needs it)."""
        node_id, name, address, generation, incarnation = fields[:5]
        record = MemberRecord(node_id, name, address, generation, incarnation, state, fields[7], fields[6],
                              since=self.clock.wall(), state_changed_at=self.clock.now())
        self.table.add(record)
        self._emit(EventKind.DEAD if state == MemberState.DEAD else EventKind.LEFT, record, None)

    def refute(self, generation: int, incarnation: int) -> None:
        """Outrank a verdict about us: a higher incarnation within our generation, gossiped."""
        local = self.table.local
        if generation > local.generation:
            log.warning("a later life of our node id (generation %d > %d) is about; not refuting", generation, local.generation)
            return
        local.incarnation = max(local.incarnation, incarnation if generation == local.generation else 0) + 1
        self.stats.refutations += 1
        self._refresh_prefix()
        self._broadcast_alive(local)
        self.awareness.apply(1)  # being suspected hints that we are the slow one

    # ======================================================================= suspicion
    def _start_suspicion(self, record: MemberRecord, accuser: str) -> None:
        self._cancel_suspicion(record.node_id)
        minimum, maximum, expected = self.settings.suspicion_timeouts(self.table.live_count())
        node_id, version = record.node_id, record.version
        self._suspicions[node_id] = Suspicion(accuser, expected, minimum, maximum, self.clock.now(), self.scheduler,
                                              lambda: self._suspicion_expired(node_id, version))

    def _cancel_suspicion(self, node_id: str) -> None:
        suspicion = self._suspicions.pop(node_id, None)
        if suspicion is not None:
            suspicion.cancel()

    def _suspicion_expired(self, node_id: str, version: Version) -> None:
        record = self.table.get(node_id)
        if record is None or record.state != MemberState.SUSPECT or record.version != version:
            return
        self._suspicions.pop(node_id, None)
        if not self.settings.verify_before_dead:
            self._declare_dead(node_id, version)
            return

        def verified(answered: bool) -> None:
            if not answered:
                self._declare_dead(node_id, version)
            elif record.state == MemberState.SUSPECT and record.version == version:
                self._start_suspicion(record, self.local_id)  # it answered: give it a full term to refute

        self._prober.probe(record, verified, thorough=True)

    def _declare_dead(self, node_id: str, version: Version) -> None:
        record = self.table.get(node_id)
        if record is None or record.state != MemberState.SUSPECT or record.version != version:
            return
        self.apply_dead(node_id, version[0], version[1], self.local_id)
        message = wire.encode_dead(node_id, version[0], version[1], self.local_id)
        for target in self.table.sample_live(self.rng, self.settings.announce_fanout):
            self.send_messages(target.address, [message])

    def on_probe_failed(self, node_id: str, version: Version) -> None:
        """Our probe got no ack: suspect the member, or confirm the running suspicion."""
        record = self.table.get(node_id)
        if record is None or record.version != version or record.state not in LIVE_STATES:
            return
        self.apply_suspect(node_id, version[0], version[1], self.local_id)

    def _broadcast_alive(self, record: MemberRecord) -> None:
        self.broadcasts.enqueue(record.node_id, self._alive_message(record))

    @staticmethod
    def _alive_message(record: MemberRecord) -> bytes:
        return wire.encode_alive(record.node_id, record.name, record.address, record.generation, record.incarnation, record.meta_bytes)

    # ======================================================================= events
    def _emit(self, kind: EventKind, record: MemberRecord, previous: MemberState | None) -> None:
        if self._listener is not None:
            self._listener(MemberEvent(kind, record.view(), previous))
