"""A seeded discrete-event simulator that runs real Memberlist instances on virtual time.

Every node is the production state machine with the production codec (real
msgpack, real HMAC); only the edges are simulated: a heap of events on a
shared VirtualClock, a network with seeded loss, delay and partitions, and
faults (crash, restart with a new generation and maybe a new address, loop
stalls). One seed gives one trace, event for event: all randomness flows from
the seed, ties in the heap break by insertion order, and nothing iterates a
hash-randomized set.

Modelling choices, stated because results depend on them:
- datagrams: independent loss with probability `loss`, one-way delay from
  `DelayModel`; a crashed node silently drops what it is sent;
- push-pull (HTTP in production): reliable, but each of its four segments may
  be lost and is then retransmitted after TCP's RTO (1 s for the handshake,
  200 ms doubling for data); a crashed peer refuses at once, a partitioned one
  times out;
- a stalled node (loop stall) processes nothing until the stall ends, then, like libuv,
  first runs the timers that fell due (in due order), then reads the datagrams
  that queued up (in arrival order). A probe that went out just before a stall
  therefore times out before its ack is read: the slow-node false positive
  Lifeguard was built for. A receive-only stall keeps the timers running while
  input waits, which is how a slow member looks in Go's memberlist.
"""

from __future__ import annotations

import heapq
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from meshrag.clock import VirtualClock
from meshrag.gossip.codec import StateExchange
from meshrag.gossip.memberlist import Memberlist, MemberEvent
from meshrag.gossip.settings import GossipSettings
from meshrag.gossip.state import STATE_CODES, MemberState
from meshrag.identity import NodeIdentity

TIMER, DATAGRAM = 0, 1
TraceEntry = tuple[float, str, str, str, int, int]  # time, observer, event, subject, generation, incarnation


@dataclass(frozen=True)
class DelayModel:
    """One-way datagram delay: a fixed base plus exponential jitter (LAN-like by default)."""

    base_s: float = 0.0005
    jitter_s: float = 0.0005

    def sample(self, rng: random.Random) -> float:
        return self.base_s + (rng.expovariate(1.0 / self.jitter_s) if self.jitter_s > 0 else 0.0)


class _Event:
    """A heap entry's payload; also the handle `call_later` returns."""

    __slots__ = ("node", "epoch", "callback", "cancelled")

    def __init__(self, node: SimNode | None, callback: Callable[[], None]) -> None:
        self.node = node
        self.epoch = node.epoch if node is not None else 0
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _NodeScheduler:
    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self._sim, self._node = sim, node

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Event:
        return self._sim._push(self._sim.clock.now() + max(0.0, delay), TIMER, _Event(self._node, callback))


class _NodeTransport:
    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self._sim, self._node = sim, node

    def send(self, address: str, payload: bytes) -> None:
        self._sim._send(self._node, address, payload)

    def push_pull(self, address: str, payload: bytes, timeout: float, on_reply: Callable[[bytes | None], None]) -> None:
        self._sim._push_pull(self._node, address, payload, timeout, on_reply)


@dataclass(eq=False)
class SimNode:
    name: str
    node_id: str
    address: str
    generation: int = 1
    epoch: int = 0
    crashed: bool = False
    stalled_until: float = 0.0
    deaf_until: float = 0.0  # receive-path stall: timers run, input waits
    memberlist: Memberlist = field(init=False)

    @property
    def ml(self) -> Memberlist:
        return self.memberlist


class Simulation:
    def __init__(self, seed: int, settings: GossipSettings | None = None, *, loss: float = 0.0,
                 delay: DelayModel | None = None, secret: str = "simulated-cluster-secret", cluster: str = "sim",
                 trace: bool = True) -> None:
        self.seed = seed
        self.settings = settings or GossipSettings()
        self.loss = loss
        self.delay = delay or DelayModel()
        self.secret, self.cluster = secret, cluster
        self.clock = VirtualClock(start=0.0)
        self.rng = random.Random(f"net:{seed}")
        self.nodes: dict[str, SimNode] = {}
        self.trace: list[TraceEntry] = []
        self.tracing = trace
        self.listeners: list[Callable[[float, SimNode, MemberEvent], None]] = []
        self.taps: list[Callable[[SimNode, str, bytes], None]] = []  # see every datagram sent
        self.seeds: list[str] = []
        self._by_address: dict[str, SimNode] = {}
        self._groups: dict[str, int] = {}
        self._blocked: dict[tuple[str, str], bool] = {}  # one-way links that drop everything
        self._heap: list[tuple[float, int, float, int, _Event]] = []
        self._seq = 0

    # ------------------------------------------------------------------ building
    def add_node(self, name: str | None = None, address: str | None = None, *, start: bool = True,
                 metadata: dict[str, Any] | None = None) -> SimNode:
        index = len(self.nodes)
        name = name or f"n{index:03d}"
        address = address or f"10.{index // 65536}.{index // 256 % 256}.{index % 256}:7946"
        node_id = uuid.UUID(int=self.rng.getrandbits(128)).hex
        node = SimNode(name, node_id, address)
        self.nodes[name] = node
        self._by_address[address] = node
        self._boot(node, metadata)
        if start:
            node.ml.start()
        return node

    def _boot(self, node: SimNode, metadata: dict[str, Any] | None) -> None:
        identity = NodeIdentity(node.node_id, node.name, node.generation)
        meta = metadata if metadata is not None else {"roles": ["storage", "coordinator"], "zone": "z1", "http": node.address}
        node.memberlist = Memberlist(
            identity, node.address, transport=_NodeTransport(self, node), scheduler=_NodeScheduler(self, node),
            clock=self.clock, rng=random.Random(f"node:{self.seed}:{node.name}:{node.epoch}"), settings=self.settings,
            secret=self.secret, cluster=self.cluster, metadata=meta, listener=lambda event: self._on_event(node, event),
        )

    def build(self, count: int, *, bootstrap: str = "full") -> list[SimNode]:
        """`count` started nodes. bootstrap="join": each joins through the first node (real push-pull);
        "full": every table is filled directly, as if a join had converged (much cheaper at 1000 nodes)."""
        nodes = [self.add_node(start=False) for _ in range(count)]
        self.seeds = [node.address for node in nodes[:3]]
        if bootstrap == "full":
            self._fill_tables(nodes)
        for node in nodes:
            node.ml.start()
            if bootstrap == "join" and node is not nodes[0]:
                node.ml.join([nodes[0].address])
        return nodes

    def _fill_tables(self, nodes: list[SimNode]) -> None:
        tracing, self.tracing = self.tracing, False
        records = [[n.node_id, n.name, n.address, n.generation, 0, STATE_CODES[MemberState.ALIVE],
                    n.ml.table.local.meta_bytes, n.ml.table.local.meta] for n in nodes]
        exchange = StateExchange("bootstrap", 0, 0, True, records)
        for node in nodes:
            listener, node.ml._listener = node.ml._listener, None  # a million "joined" events help no one
            node.ml._sync.merge(exchange, quiet=True)
            node.ml._listener = listener
        self.tracing = tracing

    # ------------------------------------------------------------------ running
    def _push(self, time: float, kind: int, event: _Event, due: float | None = None) -> _Event:
        self._seq += 1
        heapq.heappush(self._heap, (time, kind, time if due is None else due, self._seq, event))
        return event

    def at(self, time: float, action: Callable[[], None]) -> None:
        """Run a scenario step at an absolute virtual time."""
        self._push(time, TIMER, _Event(None, action))

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Event:
        """The simulation as a plain Scheduler on virtual time (for unit tests of timed parts)."""
        return self._push(self.clock.now() + max(0.0, delay), TIMER, _Event(None, callback))

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> None:
        heap, clock = self._heap, self.clock
        while heap and heap[0][0] <= end:
            time, kind, due, seq, event = heapq.heappop(heap)
            if event.cancelled:
                continue
            node = event.node
            if node is not None:
                if node.epoch != event.epoch or node.crashed:
                    continue
                if node.stalled_until > time:
                    heapq.heappush(heap, (node.stalled_until, kind, due, seq, event))
                    continue
                if kind == DATAGRAM and node.deaf_until > time:
                    heapq.heappush(heap, (node.deaf_until, kind, due, seq, event))
                    continue
            if time > clock.now():
                clock.advance(time - clock.now())
            event.callback()
            if stop is not None and stop():
                return
        if end > clock.now():
            clock.advance(end - clock.now())

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> None:
        self.run_until(self.clock.now() + seconds, stop)

    # ------------------------------------------------------------------ network
    def _reachable(self, source: SimNode, target: SimNode) -> bool:
        if self._blocked and (source.name, target.name) in self._blocked:
            return False
        return self._groups.get(source.name, -1) == self._groups.get(target.name, -1) or \
            source.name not in self._groups or target.name not in self._groups

    def _send(self, source: SimNode, address: str, payload: bytes) -> None:
        for tap in self.taps:
            tap(source, address, payload)
        target = self._by_address.get(address)
        if target is None or target.crashed or not self._reachable(source, target):
            return
        if self.loss and self.rng.random() < self.loss:
            return
        origin = source.address
        ml = target.memberlist
        self._push(self.clock.now() + self.delay.sample(self.rng), DATAGRAM,
                   _Event(target, lambda: ml.handle_datagram(payload, origin)))

    def inject(self, name: str, payload: bytes, from_address: str = "192.0.2.1:9999") -> None:
        """Deliver a raw datagram to a node now (fuzzing, attacks)."""
        self.nodes[name].ml.handle_datagram(payload, from_address)

    def _tcp_delay(self) -> float:
        """One-way stream delay: datagram delay plus retransmissions of lost segments
        (infinite once a segment was lost six times: the connection is given up)."""
        delay = self.delay.sample(self.rng)
        for rto in (1.0, 0.2):  # handshake segment, then data segment
            for _ in range(7):
                if not (self.loss and self.rng.random() < self.loss):
                    break
                delay += rto
                rto *= 2
            else:
                return float("inf")
        return delay

    def _push_pull(self, source: SimNode, address: str, payload: bytes, timeout: float,
                   on_reply: Callable[[bytes | None], None]) -> None:
        answered: list[bool] = []

        def finish(reply: bytes | None) -> None:
            if not answered:
                answered.append(True)
                on_reply(reply)

        now = self.clock.now()
        self._push(now + timeout, TIMER, _Event(source, lambda: finish(None)))
        target = self._by_address.get(address)
        if target is None or not self._reachable(source, target):
            return  # unreachable: the timeout answers
        if target.crashed:
            self._push(now + 2 * self.delay.sample(self.rng), TIMER, _Event(source, lambda: finish(None)))  # refused
            return
        origin = source.address

        def serve() -> None:
            if not self._reachable(source, target):
                return
            reply = target.memberlist.handle_push_pull(payload, origin)
            back = self._tcp_delay()
            if reply is not None and not source.crashed and back < timeout:
                self._push(self.clock.now() + back, DATAGRAM, _Event(source, lambda: finish(reply)))

        there = self._tcp_delay()
        if there < timeout:
            self._push(now + there, DATAGRAM, _Event(target, serve))

    # ------------------------------------------------------------------ faults
    def crash(self, name: str) -> None:
        node = self.nodes[name]
        node.memberlist.stop()
        node.crashed = True
        node.epoch += 1
        self._record(node.name, "crash", node.name, node.generation, 0)

    def restart(self, name: str, address: str | None = None, join: Iterable[str] | None = None) -> SimNode:
        """Start a crashed (or running) node again: same id, next generation, maybe a new address."""
        node = self.nodes[name]
        if not node.crashed:
            self.crash(name)
        if address is not None and address != node.address:
            self._by_address.pop(node.address, None)
            node.address = address
        self._by_address[node.address] = node
        node.generation += 1
        node.epoch += 1
        node.crashed = False
        node.stalled_until = node.deaf_until = 0.0
        self._boot(node, None)
        node.ml.start()
        seeds = [seed for seed in (join if join is not None else self.seeds) if seed != node.address]
        node.ml.join(seeds)
        self._record(node.name, "restart", node.name, node.generation, 0)
        return node

    def stall(self, name: str, seconds: float, *, receive_only: bool = False) -> None:
        """Pause a node: its whole loop (asyncio: nothing runs), or with receive_only its
        input only while its timers keep firing (a stuck reader thread, as in Go's memberlist,
        the anomaly the Lifeguard paper measured)."""
        node = self.nodes[name]
        until = self.clock.now() + seconds
        if receive_only:
            node.deaf_until = max(node.deaf_until, until)
        else:
            node.stalled_until = max(node.stalled_until, until)
        self._record(node.name, "deaf" if receive_only else "stall", node.name, node.generation, int(seconds * 1000))

    def partition(self, groups: list[list[str]]) -> None:
        """Nodes in different groups cannot exchange anything; nodes in no group reach all."""
        self._groups = {name: index for index, group in enumerate(groups) for name in group}
        self._record("-", "partition", str(len(groups)), 0, 0)

    def heal(self) -> None:
        self._groups = {}
        self._blocked = {}
        self._record("-", "heal", "-", 0, 0)

    def block(self, source: str, target: str, both_ways: bool = True) -> None:
        """Cut one link (a broken route between two hosts that both still reach everyone else)."""
        self._blocked[(source, target)] = True
        if both_ways:
            self._blocked[(target, source)] = True

    # ------------------------------------------------------------------ observing
    def _on_event(self, node: SimNode, event: MemberEvent) -> None:
        if self.tracing:
            member = event.member
            self._record(node.name, event.kind.value, member.name, member.generation, member.incarnation)
        for listener in self.listeners:
            listener(self.clock.now(), node, event)

    def _record(self, observer: str, kind: str, subject: str, generation: int, incarnation: int) -> None:
        if self.tracing:
            self.trace.append((round(self.clock.now(), 9), observer, kind, subject, generation, incarnation))

    def running(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if not node.crashed]

    def state_of(self, observer: str, subject: str) -> MemberState | None:
        """How `observer` currently sees `subject` (None if it does not know it)."""
        member = self.nodes[observer].ml.table.get(self.nodes[subject].node_id)
        return member.state if member is not None else None

    def converged(self, subject: str, state: MemberState, observers: Iterable[SimNode] | None = None) -> bool:
        """Does every running node other than `subject` see it in `state`?"""
        pool = observers if observers is not None else self.running()
        return all(self.state_of(node.name, subject) == state for node in pool if node.name != subject)
