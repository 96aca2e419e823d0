"""Scatter-gather over partitions: replica choice, fail-over, hedging, a deadline, coverage.

One run asks, for every wanted partition, one replica that holds it, grouped
into one request per node. The replicas of a partition are tried in the order
``rank_replicas`` gives (this node first, then lowest EWMA latency x
(outstanding + 1), open breakers last). Then, until every partition has an
answer or the deadline passes:

* a request that fails, or answers that it does not hold some of the asked
  partitions, sends those partitions on to their next replica;
* a request to a node that has not answered after that node's recent p95
  (clamped, see selection.hedge_delay_s) is hedged: its unanswered partitions
  go to their next replicas as well, when the hedge budget (a share of all
  requests) allows. Whichever answer comes first wins, per partition; a request
  whose partitions are all answered elsewhere is cancelled;
* at the deadline every request still running is cancelled and the partitions
  without an answer are reported missing, instead of failing the whole query.

Answers are per partition (``call`` returns each held partition's payload),
so a partition's result always comes from exactly one replica, even when a
hedge and the request it hedged both answer.

Outcomes feed the latency tracker and the breakers: a failure counts against
the node, a cancelled loser's elapsed time is folded in as a lower bound of its
latency (a stopped node that only ever loses must not keep looking fast).
The calls are injected; time is the event loop's and the tracker's clock, so
tests run this on a virtual-time loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Mapping, Sequence, TypeVar

from meshrag.cluster.breaker import BreakerBoard
from meshrag.cluster.selection import HedgeBudget, HedgeSettings, LatencyTracker, hedge_delay_s, rank_replicas

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class NodeAnswer(Generic[T]):
    """One node's answer: a payload per asked partition it holds, and the ones it does not."""

    partitions: dict[int, T]
    unheld: list[int] = field(default_factory=list)


# (node_id, partitions, seconds left) -> that node's answer
Call = Callable[[str, list[int], float], Awaitable[NodeAnswer[T]]]


@dataclass
class Scattered(Generic[T]):
    """What a run gathered: each answered partition's payload and the node it came from."""

    payloads: dict[int, T]
    holders: dict[int, str]
    missing: list[int]
    hedges: int = 0
    timed_out: bool = False

    @property
    def coverage(self) -> float:
        total = len(self.payloads) + len(self.missing)
        return 1.0 if total == 0 else round(len(self.payloads) / total, 4)


@dataclass
class ScatterPolicy:
    """The shared, long-lived parts a run consults and updates."""

    local_id: str
    tracker: LatencyTracker
    breakers: BreakerBoard
    hedging: HedgeSettings
    budget: HedgeBudget


@dataclass
class _Attempt:
    node: str
    pids: list[int]
    started: float
    hedge: bool
    hedged: bool = False  # a hedge was considered for it (sent or denied): once only


class _Run(Generic[T]):
    def __init__(self, policy: ScatterPolicy, replicas: Mapping[int, list[str]], call: Call[T], deadline: float) -> None:
        self._policy = policy
        self._call = call
        self._deadline = deadline
        self._remaining = {pid: list(nodes) for pid, nodes in replicas.items()}
        self._inflight: dict[int, int] = defaultdict(int)
        self._attempts: dict[asyncio.Task[NodeAnswer[T]], _Attempt] = {}
        self.result: Scattered[T] = Scattered({}, {}, [])

    # ------------------------------------------------------------ driving
    async def run(self) -> Scattered[T]:
        loop = asyncio.get_running_loop()
        self._launch(list(self._remaining), hedge=False)
        try:
            while self._attempts:
                now = loop.time()
                if now >= self._deadline:
                    self.result.timed_out = True
                    break
                wake = min(self._deadline, self._next_hedge_at())
                done, _ = await asyncio.wait(self._attempts, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._settle(task)
                self._hedge_due(loop.time())
                self._cancel_losers()
        finally:
            self._cancel_all()
        answered = self.result.payloads
        self.result.missing = sorted(pid for pid in self._remaining if pid not in answered)
        return self.result

    def _launch(self, pids: Sequence[int], hedge: bool) -> None:
        """Send each partition to its next replica, one request per node."""
        groups: dict[str, list[int]] = defaultdict(list)
        for pid in pids:
            node = self._next_replica(pid)
            if node is not None:
                groups[node].append(pid)
        now = self._policy.tracker.clock.now()
        for node, group in groups.items():
            task = asyncio.ensure_future(self._call(node, group, self._deadline - now))
            self._attempts[task] = _Attempt(node, group, now, hedge)
            self._policy.tracker.begin(node)
            for pid in group:
                self._inflight[pid] += 1
            if not hedge:
                self._policy.budget.note_request()

    def _next_replica(self, pid: int) -> str | None:
        """The next untried replica whose breaker admits a request (the local node always does)."""
        candidates = self._remaining[pid]
        while candidates:
            node = candidates.pop(0)
            if node == self._policy.local_id or self._policy.breakers.allow(node):
                return node
        return None

    # ------------------------------------------------------------ outcomes
    def _settle(self, task: asyncio.Task[NodeAnswer[T]]) -> None:
        attempt = self._attempts.pop(task)
        for pid in attempt.pids:
            self._inflight[pid] -= 1
        elapsed = self._policy.tracker.clock.now() - attempt.started
        error = task.exception()
        ok = error is None
        self._policy.tracker.end(attempt.node, elapsed, ok)
        if attempt.node != self._policy.local_id:
            self._policy.breakers.record(attempt.node, ok)
        if error is not None:
            log.info("search on %s failed for %d partitions: %s", attempt.node[:12], len(attempt.pids), error)
            self._retry([pid for pid in attempt.pids if pid not in self.result.payloads])
            return
        self._accept(attempt, task.result())

    def _accept(self, attempt: _Attempt, answer: NodeAnswer[T]) -> None:
        unheld = set(answer.unheld)
        for pid in attempt.pids:
            if pid in unheld or pid in self.result.payloads or pid not in answer.partitions:
                continue
            self.result.payloads[pid] = answer.partitions[pid]
            self.result.holders[pid] = attempt.node
            if attempt.hedge:
                self._policy.budget.note_hedge_won()
        self._retry([pid for pid in attempt.pids if pid not in self.result.payloads])

    def _retry(self, pids: list[int]) -> None:
        """Partitions left without an answer and without a request in flight go to their next replica."""
        orphans = [pid for pid in pids if self._inflight[pid] == 0]
        if orphans:
            self._launch(orphans, hedge=False)

    # ------------------------------------------------------------ hedging
    def _delay(self, node: str) -> float:
        return hedge_delay_s(node, self._policy.tracker, self._policy.hedging)

    def _hedgeable(self, attempt: _Attempt) -> bool:
        return not attempt.hedge and not attempt.hedged and attempt.node != self._policy.local_id

    def _next_hedge_at(self) -> float:
        due = [a.started + self._delay(a.node) for a in self._attempts.values() if self._hedgeable(a)]
        return min(due, default=float("inf"))

    def _hedge_due(self, now: float) -> None:
        for attempt in list(self._attempts.values()):
            if not self._hedgeable(attempt) or now < attempt.started + self._delay(attempt.node):
                continue
            attempt.hedged = True
            pids = [pid for pid in attempt.pids if pid not in self.result.payloads and self._remaining[pid]]
            if pids and self._policy.budget.try_spend():
                self.result.hedges += 1
                log.debug("hedging %d partitions of %s after %.0f ms", len(pids), attempt.node[:12], 1000 * (now - attempt.started))
                self._launch(pids, hedge=True)

    # ------------------------------------------------------------ cancelling
    def _cancel_losers(self) -> None:
        for task, attempt in list(self._attempts.items()):
            if all(pid in self.result.payloads for pid in attempt.pids):
                self._abandon(task, attempt)

    def _cancel_all(self) -> None:
        for task, attempt in list(self._attempts.items()):
            self._abandon(task, attempt)

    def _abandon(self, task: asyncio.Task[NodeAnswer[T]], attempt: _Attempt) -> None:
        """Cancel a request nobody waits for; its elapsed time is a lower bound of the node's latency."""
        task.cancel()
        del self._attempts[task]
        for pid in attempt.pids:
            self._inflight[pid] -= 1
        self._policy.tracker.end_censored(attempt.node, self._policy.tracker.clock.now() - attempt.started)


class Scatterer:
    """Runs scatter-gathers with one shared policy (tracker, breakers, hedge budget)."""

    def __init__(self, policy: ScatterPolicy) -> None:
        self.policy = policy

    def order(self, candidates: Sequence[str]) -> list[str]:
        return rank_replicas(candidates, self.policy.local_id, self.policy.tracker, self.policy.breakers)

    def order_with_session(self, session_nodes: Sequence[str], owners: Sequence[str]) -> list[str]:
        """The replicas a session wrote to first (they hold its writes), each group ranked."""
        first = self.order([node for node in session_nodes if node in owners or node == self.policy.local_id])
        return first + [node for node in self.order(owners) if node not in first]

    async def run(self, replicas: Mapping[int, Sequence[str]], call: Call[T], timeout_s: float) -> Scattered[T]:
        """Gather every partition of ``replicas`` (pid -> its live replicas, best first) within ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        return await _Run(self.policy, {pid: list(nodes) for pid, nodes in replicas.items()}, call, deadline).run()
