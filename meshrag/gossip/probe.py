"""Failure detection rounds: direct probe, indirect probes, nacks, buddy system.

Each round probes one member: by default the one a wall-clock slot assigns on
the id-sorted ring, so that every member is probed about once per interval
(see `_slotted_target`); with slotted_probing off, memberlist's shuffled round
robin. Then:

1. PING the target (if it is suspect, the suspicion rides along: the buddy
   system, so a live suspect hears of it from the first prober and refutes);
2. no ACK within the probe timeout: ask `indirect_checks` random members to
   ping it for us (INDIRECT_PING), and ping it once more ourselves; each
   helper answers NACK if it too gets no answer, which tells us the helpers
   are reachable and the silence is real;
3. no ACK (direct or relayed) by the end of the probe interval: the target is
   suspect. Missed nacks count against our own health (Lifeguard): when even
   the helpers are silent, the trouble is more likely ours.

Acks are bound to their probe: every PING carries a random nonce beside its
sequence number, and an ACK or NACK counts only if it echoes both and comes
from whom it was expected (the target, for our own ping; a helper we asked, for
a relayed ack or a nack; the target, for a ping we relay). A replayed or stray
ack is ignored and counted (stats.unbound_acks).

Timeouts and the interval are stretched by the local health multiplier. The
same machinery runs confirmation probes of fresh suspects and the one-off
verification probe before a suspect is declared dead.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Callable, Protocol

from meshrag.clock import Clock
from meshrag.gossip.awareness import Awareness
from meshrag.gossip.codec import encode_ack, encode_indirect_ping, encode_nack, encode_ping
from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.state import LIVE_STATES, MemberRecord, MemberState, MemberTable, Version
from meshrag.gossip.transport import Scheduler, TimerHandle

NACK_AFTER = 0.8


class ProbeHost(Protocol):
    """What the prober needs from the memberlist that owns it."""

    settings: GossipSettings
    table: MemberTable
    awareness: Awareness
    scheduler: Scheduler
    clock: Clock
    rng: random.Random

    def send_messages(self, address: str, messages: list[bytes]) -> None: ...

    def suspect_message(self, record: MemberRecord) -> bytes: ...

    def on_probe_failed(self, node_id: str, version: Version) -> None: ...

    def on_unbound_ack(self) -> None: ...


@dataclass(slots=True)
class _Probe:
    """One of our own probes, waiting for an ack."""

    seq: int
    nonce: int
    target_id: str
    target_address: str
    version: Version
    on_result: Callable[[bool], None]
    helpers: set[str] = field(default_factory=set)  # who may relay its ack or nack
    expected_nacks: int = 0
    nacks: int = 0
    timers: list[TimerHandle] = field(default_factory=list)


@dataclass(slots=True)
class _Relay:
    """A ping we send on behalf of a member that asked us (INDIRECT_PING)."""

    requester_seq: int
    requester_nonce: int
    requester_address: str
    nonce: int  # of our own ping to the target
    target_id: str
    timer: TimerHandle | None = None


class Prober:
    def __init__(self, host: ProbeHost) -> None:
        self._host = host
        self._order: list[str] = []
        self._index = 0
        self._seq = 0
        self._pending: dict[int, _Probe | _Relay] = {}

    # --- round-robin target choice --------------------------------------------------
    def add_member(self, node_id: str) -> None:
        """A new or revived member joins the current round at a random remaining position."""
        if self._host.settings.slotted_probing:
            return  # the ring in the member table is the order
        position = self._host.rng.randint(self._index, len(self._order))
        self._order.insert(position, node_id)

    def _next_target(self) -> MemberRecord | None:
        if self._host.settings.slotted_probing:
            return self._slotted_target()
        table = self._host.table
        for _ in range(len(self._order) + 2):
            if self._index >= len(self._order):
                self._order = table.live_ids()
                self._host.rng.shuffle(self._order)
                self._index = 0
                if not self._order:
                    return None
            record = table.get(self._order[self._index])
            self._index += 1
            if record is not None and record.state in LIVE_STATES and record is not table.local:
                return record
        return None

    def _slotted_target(self) -> MemberRecord | None:
        """Probe the member `offset` places after us on the id-sorted ring, offset from the wall-clock slot.

        In one slot every node applies the same offset, so the mapping is a permutation:
        each member is probed about once per interval, rather than a random number of
        times (SWIM: none at all with probability ~1/e). A crash is then seen within two
        intervals instead of an exponential wait. Clocks that disagree by more than an
        interval degrade this to a random choice, never to no probing.
        """
        host = self._host
        ring = host.table.ring
        size = len(ring)
        if size < 2:
            return None
        slot = int(host.clock.wall() // host.settings.probe_interval_s)
        index = bisect.bisect_left(ring, host.table.local.node_id)
        return host.table.get(ring[(index + 1 + slot % (size - 1)) % size])

    # --- our probes ---------------------------------------------------------------------
    def probe_round(self) -> None:
        target = self._next_target()
        if target is not None:
            version = target.version
            self.probe(target, lambda ok: ok or self._host.on_probe_failed(target.node_id, version))

    def probe(self, target: MemberRecord, on_result: Callable[[bool], None], thorough: bool = False) -> None:
        """Direct, then indirect; on_result(True) on any ack, (False) at the end of the interval.

        thorough (the last check before a death verdict): helpers are asked at once and
        twice as many. It still waits the whole interval: a paused process that resumes
        within it answers the ping queued in its socket, and so is not declared dead.
        """
        host = self._host
        settings = host.settings
        seq = self._next_seq()
        probe = _Probe(seq, self._nonce(), target.node_id, target.address, target.version, on_result)
        self._pending[seq] = probe
        messages = [encode_ping(seq, target.node_id, probe.nonce)]
        if settings.lifeguard and target.state == MemberState.SUSPECT:
            messages.append(host.suspect_message(target))
        host.send_messages(target.address, messages)
        scale = host.awareness.scale
        if thorough:
            self._ask_helpers(probe, 2 * settings.indirect_checks)
        probe.timers.append(host.scheduler.call_later(scale(settings.probe_timeout_s), lambda: self._go_indirect(probe, not thorough)))
        probe.timers.append(host.scheduler.call_later(scale(settings.probe_interval_s), lambda: self._conclude(probe)))

    def _go_indirect(self, probe: _Probe, ask_helpers: bool) -> None:
        if self._pending.get(probe.seq) is not probe:
            return
        host = self._host
        if ask_helpers:
            self._ask_helpers(probe, host.settings.indirect_checks)
        if host.settings.fallback_ping:
            # memberlist retries over TCP here; a second datagram is our stand-in (see settings).
            host.send_messages(probe.target_address, [encode_ping(probe.seq, probe.target_id, probe.nonce)])

    def _ask_helpers(self, probe: _Probe, count: int) -> None:
        host = self._host
        helpers = host.table.sample_live(host.rng, count, exclude=(probe.target_id,))
        want_nack = host.settings.lifeguard
        message = encode_indirect_ping(probe.seq, probe.target_id, probe.target_address, want_nack, probe.nonce)
        for helper in helpers:
            probe.helpers.add(helper.node_id)
            host.send_messages(helper.address, [message])
        probe.expected_nacks = len(helpers) if want_nack else 0

    def _conclude(self, probe: _Probe) -> None:
        if self._pending.get(probe.seq) is not probe:
            return
        del self._pending[probe.seq]
        for timer in probe.timers:
            timer.cancel()
        missed = probe.expected_nacks - probe.nacks
        self._host.awareness.apply(missed if probe.expected_nacks > 0 else 1)
        probe.on_result(False)

    # --- inbound ------------------------------------------------------------------------
    def on_ack(self, seq: int, nonce: int, sender_id: str) -> None:
        waiting = self._pending.get(seq)
        if isinstance(waiting, _Probe) and waiting.nonce == nonce and (sender_id == waiting.target_id or sender_id in waiting.helpers):
            del self._pending[seq]
            for timer in waiting.timers:
                timer.cancel()
            self._host.awareness.apply(-1)
            waiting.on_result(True)
        elif isinstance(waiting, _Relay) and waiting.nonce == nonce and sender_id == waiting.target_id:
            del self._pending[seq]
            if waiting.timer is not None:
                waiting.timer.cancel()
            self._host.send_messages(waiting.requester_address, [encode_ack(waiting.requester_seq, waiting.requester_nonce)])
        else:
            self._host.on_unbound_ack()

    def on_nack(self, seq: int, nonce: int, sender_id: str) -> None:
        waiting = self._pending.get(seq)
        if isinstance(waiting, _Probe) and waiting.nonce == nonce and sender_id in waiting.helpers:
            waiting.nacks += 1

    def on_indirect_ping(self, seq: int, target_id: str, target_address: str, want_nack: bool, nonce: int,
                         requester_address: str) -> None:
        host = self._host
        local_seq = self._next_seq()
        relay = _Relay(seq, nonce, requester_address, self._nonce(), target_id)
        self._pending[local_seq] = relay
        host.send_messages(target_address, [encode_ping(local_seq, target_id, relay.nonce)])
        # Nack at 80 % of the probe timeout (the Lifeguard paper's choice): the requester
        # asked us one probe timeout into its interval, and a nack that arrives after its
        # deadline would count against its health for a silence that is not its fault.
        wait = NACK_AFTER * host.settings.probe_timeout_s
        relay.timer = host.scheduler.call_later(wait, lambda: self._relay_timeout(local_seq, want_nack))

    def _relay_timeout(self, local_seq: int, want_nack: bool) -> None:
        relay = self._pending.pop(local_seq, None)
        if isinstance(relay, _Relay) and want_nack:
            self._host.send_messages(relay.requester_address, [encode_nack(relay.requester_seq, relay.requester_nonce)])

    # --- lifecycle ------------------------------------------------------------------------
    def cancel_all(self) -> None:
        for waiting in self._pending.values():
            timers = waiting.timers if isinstance(waiting, _Probe) else [waiting.timer]
            for timer in timers:
                if timer is not None:
                    timer.cancel()
        self._pending.clear()

    def _nonce(self) -> int:
        """Unique per probe, not secret: forging an ack needs the gossip key, and a captured
        one echoes the nonce of a probe that is no longer outstanding."""
        return self._host.rng.getrandbits(63)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq
