"""Full state exchange (push-pull): joining, periodic anti-entropy, and healing.

Gossip is fast but lossy; push-pull repairs what it missed. Over a reliable
stream (HTTP in a node) two members swap their whole tables and merge them
with the same ordering rules as gossip. Three uses:

- join: push-pull with each seed; retried with exponential backoff until one
  answers, and again whenever this node finds itself alone;
- anti-entropy: every push_pull_interval(N) with a random live member;
- healing: every reconnect interval, with probability min(1, dead/alive),
  with a random *dead* member. memberlist forgets dead members, so a
  partition longer than the suspicion timeout never heals by itself; Serf
  retries them and so do we.

Merging notices disagreements the normal rules cannot settle: the peer says
a member is alive at the very version we hold as dead. Only that member can
settle it (by refuting with a higher incarnation), so we tell it directly
with a stale-view notice; it refutes and sends us its alive.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Protocol, Sequence

from meshrag.clock import Clock
from meshrag.gossip.codec import KIND_PUSH_PULL_REPLY, KIND_PUSH_PULL_REQUEST, Codec, Rejected, StateExchange
from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.state import STATE_CODES, STATES_BY_CODE, MemberRecord, MemberState, MemberTable
from meshrag.gossip.transport import Scheduler, TimerHandle, Transport

log = logging.getLogger(__name__)


class SyncHost(Protocol):
    settings: GossipSettings
    table: MemberTable
    codec: Codec
    transport: Transport
    scheduler: Scheduler
    clock: Clock
    rng: random.Random
    stats: Any
    leaving: bool

    def apply_alive(self, node_id: str, name: str, address: str, generation: int, incarnation: int,
                    meta_bytes: bytes, meta: dict[str, Any], rebroadcast: bool = True) -> None: ...

    def apply_suspect(self, node_id: str, generation: int, incarnation: int, accuser: str) -> None: ...

    def apply_dead(self, node_id: str, generation: int, incarnation: int, accuser: str) -> None: ...

    def apply_leave(self, node_id: str, generation: int, incarnation: int) -> None: ...

    def add_record(self, fields: list[Any], state: MemberState) -> None: ...

    def send_notice(self, record: MemberRecord) -> None: ...

    def refute(self, generation: int, incarnation: int) -> None: ...


class StateSync:
    def __init__(self, host: SyncHost) -> None:
        self._host = host
        self._seeds: list[str] = []
        self._joined = False
        self._join_backoff = host.settings.join_backoff_initial_s
        self._join_timer: TimerHandle | None = None
        self._join_attempt_open = 0

    # --- joining --------------------------------------------------------------------------
    def join(self, seeds: Sequence[str]) -> None:
        """Push-pull with every seed now; keep retrying with backoff until one answers."""
        local_address = self._host.table.local.address
        self._seeds = [seed for seed in seeds if seed and seed != local_address]
        self._joined = False
        self._join_backoff = self._host.settings.join_backoff_initial_s
        if self._join_timer is not None:  # a retry was waiting: this call is it
            self._join_timer.cancel()
            self._join_timer = None
        if not self._join_attempt_open:  # else the attempt in flight retries, with these seeds, if it fails
            self._attempt_join()

    @property
    def joined(self) -> bool:
        return self._joined

    def _attempt_join(self) -> None:
        self._join_timer = None
        if not self._seeds or self._host.leaving:
            return
        self._join_attempt_open = len(self._seeds)
        for seed in self._seeds:
            self.exchange(seed, join=True, on_done=self._on_join_reply)

    def _on_join_reply(self, ok: bool) -> None:
        self._join_attempt_open -= 1
        if ok:
            self._joined = True
        if self._join_attempt_open == 0 and not ok and not self._joined and self._join_timer is None:
            delay = self._join_backoff * (0.5 + self._host.rng.random())  # jitter: seeds restart together
            self._join_backoff = min(self._host.settings.join_backoff_max_s, self._join_backoff * 2)
            self._join_timer = self._host.scheduler.call_later(delay, self._attempt_join)

    # --- periodic rounds ------------------------------------------------------------------
    def push_pull_round(self) -> None:
        """Anti-entropy with one random live member (or the seeds, when we are alone)."""
        host = self._host
        peers = host.table.sample_live(host.rng, 1)
        if peers:
            self.exchange(peers[0].address, join=False)
        elif self._seeds and self._join_timer is None and not self._join_attempt_open:
            self._attempt_join()  # alone, and no attempt waiting or in flight (a slow seed takes push_pull_timeout_s)

    def reconnect_round(self) -> None:
        """Retry one dead member, with Serf's probability min(1, dead/alive)."""
        host = self._host
        dead = host.table.in_state(MemberState.DEAD)
        if not dead:
            return
        alive = max(1, host.table.live_count() - 1)
        if host.rng.random() < min(1.0, len(dead) / alive):
            self.exchange(host.rng.choice(dead).address, join=False)

    # --- the exchange -----------------------------------------------------------------------
    def exchange(self, address: str, join: bool, on_done: Callable[[bool], None] | None = None) -> None:
        host = self._host
        payload = host.codec.seal_state(KIND_PUSH_PULL_REQUEST, self._sender(), join, self.records())
        host.stats.push_pulls += 1
        host.stats.push_pull_bytes_sent += len(payload)
        host.transport.push_pull(address, payload, host.settings.push_pull_timeout_s,
                                 lambda reply: self._on_reply(reply, join, on_done))

    def _on_reply(self, reply: bytes | None, join: bool, on_done: Callable[[bool], None] | None) -> None:
        host = self._host
        ok = False
        if reply is None:
            host.stats.push_pull_failures += 1
        else:
            host.stats.push_pull_bytes_received += len(reply)
            try:
                state = host.codec.open_state(reply, KIND_PUSH_PULL_REPLY, host.settings.push_pull_limit_bytes)
                self._check_sender(state)
                self.merge(state, quiet=join)
                ok = True
            except Rejected as rejected:
                host.stats.reject(rejected.reason)
        if on_done is not None:
            on_done(ok)

    def handle_request(self, payload: bytes) -> bytes | None:
        """Answer a peer's push-pull: merge its state, reply with ours (after any refutation)."""
        host = self._host
        host.stats.push_pull_bytes_received += len(payload)
        try:
            state = host.codec.open_state(payload, KIND_PUSH_PULL_REQUEST, host.settings.push_pull_limit_bytes)
            self._check_sender(state)
        except Rejected as rejected:
            host.stats.reject(rejected.reason)
            return None
        self.merge(state, quiet=False)
        reply = host.codec.seal_state(KIND_PUSH_PULL_REPLY, self._sender(), False, self.records())
        host.stats.push_pull_bytes_sent += len(reply)
        return reply

    def _check_sender(self, state: StateExchange) -> None:
        if state.sender_id == self._host.table.local.node_id:
            raise Rejected("from_self")

    def _sender(self) -> tuple[str, int, int]:
        local = self._host.table.local
        return (local.node_id, local.generation, local.incarnation)

    def records(self) -> list[list[Any]]:
        return [[r.node_id, r.name, r.address, r.generation, r.incarnation, STATE_CODES[r.state], r.meta_bytes]
                for r in self._host.table]

    # --- merging ---------------------------------------------------------------------------
    def merge(self, state: StateExchange, quiet: bool) -> None:
        """Fold a peer's table into ours. quiet: a join reply, whose news we need not re-gossip."""
        host = self._host
        local_id = host.table.local.node_id
        for fields in state.records:
            node_id, generation, incarnation = fields[0], fields[3], fields[4]
            remote_state = STATES_BY_CODE[fields[5]]
            if node_id == local_id:
                self._merge_self(remote_state, generation, incarnation)
                continue
            existing = host.table.get(node_id)
            if existing is None and remote_state != MemberState.ALIVE:
                host.add_record(fields, remote_state)
            elif remote_state == MemberState.ALIVE:
                if existing is not None and existing.state not in (MemberState.ALIVE, MemberState.SUSPECT) \
                        and (generation, incarnation) <= existing.version:
                    host.send_notice(existing)
                host.apply_alive(node_id, fields[1], fields[2], generation, incarnation, fields[6], fields[7],
                                 rebroadcast=not quiet)
            elif remote_state == MemberState.SUSPECT:
                host.apply_suspect(node_id, generation, incarnation, state.sender_id)
            elif remote_state == MemberState.DEAD:
                self._merge_dead(existing, node_id, generation, incarnation, state.sender_id)
            else:
                host.apply_leave(node_id, generation, incarnation)

    def _merge_self(self, remote_state: MemberState, generation: int, incarnation: int) -> None:
        local = self._host.table.local
        if remote_state != MemberState.ALIVE and (generation, incarnation) >= local.version and not self._host.leaving:
            self._host.refute(generation, incarnation)

    def _merge_dead(self, existing: MemberRecord | None, node_id: str, generation: int, incarnation: int, sender: str) -> None:
        """A peer's dead verdict becomes our suspicion (memberlist's rule): the member gets to refute.

        At a version equal to a live one we hold there is nothing to suspect yet: the
        peer holds a stale verdict and our notices (sent on its side) settle it.
        """
        if existing is None or (existing.state == MemberState.ALIVE and (generation, incarnation) == existing.version):
            return
        if existing.state in (MemberState.DEAD, MemberState.LEFT):
            self._host.apply_dead(node_id, generation, incarnation, sender)
        else:
            self._host.apply_suspect(node_id, generation, incarnation, sender)

    def cancel(self) -> None:
        if self._join_timer is not None:
            self._join_timer.cancel()
            self._join_timer = None
