"""The composed membership state machine (SWIM + Lifeguard, after HashiCorp memberlist).

`Memberlist` is what node.py holds (see the package docstring for the calls).
It owns the member table and the timers; rules.py applies claims to the table,
probe.py runs the failure detector, pushpull.py the full-state exchanges,
broadcast.py the piggyback queue. It is pure: time comes from an injected
Clock and Scheduler, randomness from a seeded Random, packets arrive through
handle_datagram / handle_push_pull and leave through the Transport. Nothing
raises out of handle_datagram; every dropped packet is counted under a reason
in `stats.rejections`.

Beyond memberlist:
- versions are (generation, incarnation), so a restarted node is accepted at once;
- stale-view notices: when a member we hold as suspect, dead or left (or at an
  older version, or not at all) talks to us, we tell it; it refutes or resends
  its alive. When a member hears us spread an old verdict about it, it sends
  us its alive. Both settle what lossy gossip missed without waiting for
  anti-entropy;
- probe targets come from a wall-clock slot on the id-sorted ring (probe.py);
- a suspect is probed by a few members at once and once more before it is
  declared dead, and the verdict is sent directly to many members (rules.py);
- dead members are retried by push-pull (pushpull.py), so partitions heal.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Mapping, Sequence

from meshrag.clock import Clock
from meshrag.errors import ValidationError
from meshrag.gossip import codec as wire
from meshrag.gossip.awareness import Awareness
from meshrag.gossip.broadcast import BroadcastQueue
from meshrag.gossip.events import GossipStats, MemberEvent
from meshrag.gossip.probe import Prober
from meshrag.gossip.pushpull import StateSync
from meshrag.gossip.rules import MembershipRules
from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.state import STATE_CODES, STATES_BY_CODE, Member, MemberRecord, MemberState, MemberTable
from meshrag.gossip.suspicion import Suspicion
from meshrag.gossip.transport import Scheduler, TimerHandle, Transport
from meshrag.identity import NodeIdentity
from meshrag.security.keyring import Keyring

log = logging.getLogger(__name__)
COMPOUND_SLACK = 3  # msgpack array header of a compound: at most 3 bytes below 65536 messages
Listener = Callable[[MemberEvent], None]


class Memberlist(MembershipRules):
    def __init__(self, identity: NodeIdentity, address: str, *, transport: Transport, scheduler: Scheduler,
                 clock: Clock, rng: random.Random, settings: GossipSettings | None = None, secret: str | Keyring = "",
                 cluster: str = "meshrag", metadata: Mapping[str, Any] | None = None, listener: Listener | None = None,
                 encrypt: bool = False, replay_window_s: float | None = None) -> None:
        """``secret``: the node's keyring (or one secret; "" = the public dev key); ``encrypt``:
        AES-GCM packets; ``replay_window_s``: refuse packets that old or seen before (codec.py)."""
        self.settings = settings or GossipSettings()
        self.transport, self.scheduler, self.clock, self.rng = transport, scheduler, clock, rng
        self.codec = wire.Codec(cluster, secret, self.settings.metadata_limit_bytes, clock=clock,
                                window_s=replay_window_s, encrypt=encrypt)
        meta, meta_bytes = self._checked_metadata(metadata or {})
        local = MemberRecord(identity.node_id, identity.name, address, identity.generation, 0, MemberState.ALIVE,
                             meta, meta_bytes, since=clock.wall(), state_changed_at=clock.now())
        self.table = MemberTable(local)
        self.awareness = Awareness(self.settings.awareness_max_multiplier, enabled=self.settings.lifeguard)
        self.broadcasts = BroadcastQueue(lambda: self.settings.retransmit_limit(self.table.live_count()),
                                         self.settings.max_queued_broadcasts)
        self.stats = GossipStats()
        self.leaving = False
        self._listener = listener
        self._suspicions: dict[str, Suspicion] = {}
        self._recent_dead: dict[str, float] = {}
        self._unknown_notices: dict[str, float] = {}
        self._timers: dict[str, TimerHandle] = {}
        self._running = False
        self._prober = Prober(self)
        self._sync = StateSync(self)
        self._refresh_prefix()

    # ======================================================================= public API
    def start(self) -> None:
        """Begin probing, gossiping and syncing; phases are randomized so nodes don't beat in step."""
        if self._running:
            return
        self._running = True
        self._broadcast_alive(self.table.local)
        s = self.settings
        self._every("probe", lambda: self.awareness.scale(s.probe_interval_s), self._probe_round)
        self._every("gossip", lambda: s.gossip_interval_s, self._gossip_round)
        self._every("push_pull", lambda: s.push_pull_interval(self.table.live_count()), self._sync.push_pull_round)
        if s.reconnect_interval_s > 0:
            self._every("reconnect", lambda: s.reconnect_interval_s, self._sync.reconnect_round)

    def stop(self) -> None:
        """Cancel every timer; the instance ignores further input."""
        self._running = False
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for suspicion in self._suspicions.values():
            suspicion.cancel()
        self._suspicions.clear()
        self._prober.cancel_all()
        self._sync.cancel()

    def join(self, seeds: Sequence[str]) -> None:
        """Contact seeds ("host:port") by push-pull, retrying with backoff until one answers."""
        self._sync.join(seeds)

    @property
    def joined(self) -> bool:
        return self._sync.joined

    def leave(self, on_done: Callable[[], None] | None = None) -> None:
        """Announce a graceful leave; on_done runs once it was sent enough times or after leave_timeout_s."""
        if self.leaving:
            return
        self.leaving = True
        local = self.table.local
        self.table.set_state(local, MemberState.LEFT, self.clock.wall(), self.clock.now())
        finished: list[bool] = []

        def done() -> None:
            if not finished:
                finished.append(True)
                timer.cancel()
                if on_done is not None:
                    on_done()

        timer = self.scheduler.call_later(self.settings.leave_timeout_s, done)
        message = wire.encode_leave(local.node_id, local.generation, local.incarnation)
        self.broadcasts.enqueue(local.node_id, message, on_done=done)
        targets = self.table.sample_live(self.rng, max(self.settings.gossip_nodes, self.settings.announce_fanout))
        for target in targets:
            self.send_messages(target.address, [message])
        if not targets:
            done()  # nobody to tell

    def update_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace our metadata; bumps the incarnation so the change wins everywhere."""
        meta, meta_bytes = self._checked_metadata(metadata)
        local = self.table.local
        local.meta, local.meta_bytes = meta, meta_bytes
        local.incarnation += 1
        self._refresh_prefix()
        self._broadcast_alive(local)

    def members(self) -> list[Member]:
        """Every known member, ourselves included, dead and left ones too."""
        return [record.view() for record in self.table]

    def member(self, node_id: str) -> Member | None:
        record = self.table.get(node_id)
        return record.view() if record is not None else None

    @property
    def health_score(self) -> int:
        return self.awareness.score

    def handle_datagram(self, payload: bytes, from_address: str) -> None:
        """Input of one UDP datagram. Never raises; drops are counted in stats.rejections."""
        if not self._running:
            return
        self.stats.packets_received += 1
        self.stats.bytes_received += len(payload)
        try:
            packet = self.codec.open_datagram(payload, self.settings.packet_limit_bytes)
            if packet.sender_id == self.local_id:
                raise wire.Rejected("from_self")
        except wire.Rejected as rejected:
            self.stats.reject(rejected.reason)
            return
        try:
            self._dispatch(packet, from_address)
        except Exception:  # a bug must not stop the loop; it is counted and logged
            self.stats.internal_errors += 1
            log.exception("gossip packet from %s broke a handler", from_address)

    def handle_push_pull(self, payload: bytes, from_address: str) -> bytes | None:
        """Input of a push-pull request (HTTP body); the reply body, or None to answer 400."""
        if not self._running:
            return None
        try:
            return self._sync.handle_request(payload)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("push-pull from %s broke a handler", from_address)
            return None

    # ======================================================================= sending
    def send_messages(self, address: str, messages: list[bytes]) -> None:
        """One compound datagram: `messages` first, then queued broadcasts up to the packet limit."""
        used = wire.OVERHEAD_BYTES + COMPOUND_SLACK + len(self._prefix) + sum(len(m) for m in messages)
        extra = self.broadcasts.take(self.settings.packet_limit_bytes - used)
        if not messages and not extra:
            return
        payload = self.codec.seal_datagram(self._prefix, messages + extra)
        self.stats.packets_sent += 1
        self.stats.bytes_sent += len(payload)
        self.transport.send(address, payload)

    def on_unbound_ack(self) -> None:
        self.stats.unbound_acks += 1

    def suspect_message(self, record: MemberRecord) -> bytes:
        return wire.encode_suspect(record.node_id, record.generation, record.incarnation, self.local_id)

    def send_notice(self, record: MemberRecord) -> None:
        """Tell a member how we hold it, at most once per stale_view_notice_interval_s."""
        now = self.clock.now()
        if now - record.last_notice_at < self.settings.stale_view_notice_interval_s:
            return
        record.last_notice_at = now
        self.stats.notices_sent += 1
        notice = wire.encode_stale_view(record.node_id, record.generation, record.incarnation, STATE_CODES[record.state])
        self.send_messages(record.address, [notice])

    def _refresh_prefix(self) -> None:
        local = self.table.local
        self._prefix = wire.Codec.sender_prefix(local.node_id, local.generation, local.incarnation)

    # ======================================================================= rounds
    def _every(self, name: str, interval: Callable[[], float], action: Callable[[], None]) -> None:
        def tick() -> None:
            if not self._running:
                return
            self._timers[name] = self.scheduler.call_later(interval(), tick)
            try:
                action()
            except Exception:  # one broken round must not end the rounds
                self.stats.internal_errors += 1
                log.exception("gossip %s round failed", name)

        self._timers[name] = self.scheduler.call_later(interval() * self.rng.random(), tick)

    def _probe_round(self) -> None:
        if not self.leaving:
            self._prober.probe_round()

    def _gossip_round(self) -> None:
        if not len(self.broadcasts):
            return
        for target in self._gossip_targets():
            self.send_messages(target.address, [])
            if not len(self.broadcasts):
                break

    def _gossip_targets(self) -> list[MemberRecord]:
        """Random live members, plus recently dead ones so they learn of it and can refute."""
        targets = self.table.sample_live(self.rng, self.settings.gossip_nodes)
        if self._recent_dead:
            now = self.clock.now()
            horizon = now - self.settings.gossip_to_the_dead_s
            for node_id in [n for n, at in self._recent_dead.items() if at < horizon]:
                del self._recent_dead[node_id]
            chance = self.settings.gossip_nodes / max(1, self.table.live_count() + len(self._recent_dead))
            for node_id in self._recent_dead:
                record = self.table.get(node_id)
                if record is not None and record.state == MemberState.DEAD and self.rng.random() < chance:
                    targets.append(record)
        return targets

    # ======================================================================= inbound
    def _dispatch(self, packet: wire.Packet, from_address: str) -> None:
        self._check_sender_view(packet, from_address)
        for message in packet.messages:
            kind = message[0]
            if kind == wire.PING:
                if message[2] == self.local_id:
                    self.send_messages(from_address, [wire.encode_ack(message[1], message[3])])
                else:
                    self.stats.misdirected += 1
            elif kind == wire.ACK:
                self._prober.on_ack(message[1], message[2], packet.sender_id)
            elif kind == wire.NACK:
                self._prober.on_nack(message[1], message[2], packet.sender_id)
            elif kind == wire.INDIRECT_PING:
                self._prober.on_indirect_ping(message[1], message[2], message[3], message[4], message[5], from_address)
            elif kind == wire.ALIVE:
                self.apply_alive(*message[1:])
            elif kind == wire.SUSPECT:
                self._answer_stale_verdict(message, packet, from_address)
                self.apply_suspect(message[1], message[2], message[3], message[4])
            elif kind == wire.DEAD:
                self._answer_stale_verdict(message, packet, from_address)
                self.apply_dead(message[1], message[2], message[3], message[4])
            elif kind == wire.LEAVE:
                self.apply_leave(message[1], message[2], message[3])
            elif kind == wire.STALE_VIEW:
                self._on_stale_view(message, from_address)

    def _check_sender_view(self, packet: wire.Packet, from_address: str) -> None:
        """The sender talks to us, so it runs: if our view of it is stale, say so (see module doc)."""
        if self.leaving:
            return
        record = self.table.get(packet.sender_id)
        if record is None:
            self._notice_unknown(packet, from_address)
        elif record.state != MemberState.ALIVE:
            # (An alive record at an older version is left to gossip: during every update
            # the first packets outrun the news, and notices would only double the traffic.)
            self.send_notice(record)

    def _answer_stale_verdict(self, message: list[Any], packet: wire.Packet, from_address: str) -> None:
        """A sender still spreads an old suspicion or death of us: it missed our refutation, so
        it gets our alive directly (its queue would have dropped the verdict had it heard)."""
        if message[1] != self.local_id or (message[2], message[3]) >= self.table.local.version or self.leaving:
            return
        sender = self.table.get(packet.sender_id)
        now = self.clock.now()
        if sender is not None and now - sender.last_notice_at >= self.settings.stale_view_notice_interval_s:
            sender.last_notice_at = now
            self.send_messages(from_address, [self._alive_message(self.table.local)])

    def _notice_unknown(self, packet: wire.Packet, from_address: str) -> None:
        now = self.clock.now()
        if now - self._unknown_notices.get(packet.sender_id, -1e18) < self.settings.stale_view_notice_interval_s:
            return
        if len(self._unknown_notices) > 1024:
            self._unknown_notices.clear()
        self._unknown_notices[packet.sender_id] = now
        self.stats.notices_sent += 1
        self.send_messages(from_address, [wire.encode_stale_view(packet.sender_id, 0, 0, STATE_CODES[MemberState.ALIVE])])

    def _on_stale_view(self, message: list[Any], from_address: str) -> None:
        """Someone holds an old view of us: refute if it is a live verdict, and send them our alive."""
        _, node_id, generation, incarnation, state_code = message
        if node_id != self.local_id or self.leaving:
            return
        if STATES_BY_CODE[state_code] != MemberState.ALIVE and (generation, incarnation) >= self.table.local.version:
            self.refute(generation, incarnation)
        self.send_messages(from_address, [self._alive_message(self.table.local)])

    # ======================================================================= helpers
    def _checked_metadata(self, metadata: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        meta = dict(metadata)
        if not all(isinstance(key, str) for key in meta):
            raise ValidationError("gossip metadata keys must be strings", field="gossip.metadata")
        try:
            encoded = wire.encode_metadata(meta)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError(f"gossip metadata is not encodable: {exc}", field="gossip.metadata") from None
        limit = self.settings.metadata_limit_bytes
        if len(encoded) > limit:
            raise ValidationError(f"gossip metadata is {len(encoded)} bytes encoded; the limit is {limit} "
                                  "(it rides on every alive message)", field="gossip.metadata")
        return wire.decode_metadata(encoded, limit), encoded
