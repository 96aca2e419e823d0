"""cluster/scatter.py on virtual time: fail-over, hedging, the deadline, breakers and coverage.

Nodes are in-process async functions that answer after a virtual delay, fail,
or say they do not hold a partition; the loop is tests/virtual_loop.py, so a
10 s stall costs no real time and latencies are exact.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from meshrag.cluster.breaker import BreakerBoard, BreakerSettings
from meshrag.cluster.scatter import NodeAnswer, ScatterPolicy, Scattered, Scatterer
from meshrag.cluster.selection import HedgeBudget, HedgeSettings, LatencyTracker
from tests.virtual_loop import LoopClock, run_virtual

HEDGING = HedgeSettings(floor_ms=20.0, cap_ms=1000.0, max_ratio=0.05, burst=5.0)


@dataclass
class FakeNode:
    """Answers each asked partition with its own name, after ``delay`` virtual seconds."""

    name: str
    delay: float = 0.01
    fails: bool = False
    unheld: set[int] = field(default_factory=set)
    asked: list[list[int]] = field(default_factory=list)
    cancelled: int = 0

    async def __call__(self, pids: list[int]) -> NodeAnswer[str]:
        self.asked.append(pids)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fails:
            raise ConnectionError(f"{self.name} is down")
        return NodeAnswer({pid: self.name for pid in pids if pid not in self.unheld}, sorted(set(pids) & self.unheld))


def scatterer(local: str = "a", hedging: HedgeSettings = HEDGING, breaker: BreakerSettings | None = None) -> Scatterer:
    clock = LoopClock(asyncio.get_running_loop())
    return Scatterer(ScatterPolicy(
        local, LatencyTracker(clock), BreakerBoard(breaker or BreakerSettings(), clock), hedging, HedgeBudget(hedging),
    ))


def call_of(nodes: dict[str, FakeNode]) -> Callable[[str, list[int], float], Any]:
    async def call(node: str, pids: list[int], left_s: float) -> NodeAnswer[str]:
        return await nodes[node](pids)
    return call


def prime(s: Scatterer, node: str, seconds: float, samples: int = 20) -> None:
    """Give ``node`` a latency history (p95 = ``seconds``) as if it had answered before."""
    for _ in range(samples):
        s.policy.tracker.begin(node)
        s.policy.tracker.end(node, seconds, True)


async def gather(s: Scatterer, replicas: dict[int, list[str]], nodes: dict[str, FakeNode], timeout_s: float = 2.0) -> Scattered[str]:
    return await s.run(replicas, call_of(nodes), timeout_s)


# ------------------------------------------------------------------ basics
def test_every_partition_is_answered_with_one_request_per_node() -> None:
    async def scenario() -> tuple[Scattered[str], dict[str, FakeNode]]:
        nodes = {n: FakeNode(n) for n in "abc"}
        result = await gather(scatterer(), {0: ["a", "b"], 1: ["b", "c"], 2: ["b", "a"], 3: ["c", "b"]}, nodes)
        return result, nodes

    (result, nodes), _ = run_virtual(scenario)
    assert result.payloads == {0: "a", 1: "b", 2: "b", 3: "c"}
    assert result.coverage == 1.0 and result.missing == []
    assert nodes["b"].asked == [[1, 2]], "b's partitions travel in one request"


def test_a_failed_node_s_partitions_go_to_their_next_replica() -> None:
    async def scenario() -> Scattered[str]:
        nodes = {"a": FakeNode("a"), "b": FakeNode("b", fails=True), "c": FakeNode("c")}
        return await gather(scatterer(), {0: ["b", "c"], 1: ["b", "a"]}, nodes)

    result, _ = run_virtual(scenario)
    assert result.payloads == {0: "c", 1: "a"}
    assert result.coverage == 1.0


def test_partitions_a_node_does_not_hold_are_asked_of_the_next_replica_not_counted() -> None:
    async def scenario() -> Scattered[str]:
        nodes = {"b": FakeNode("b", unheld={0}), "c": FakeNode("c")}
        return await gather(scatterer(), {0: ["b", "c"], 1: ["b", "c"]}, nodes)

    result, _ = run_virtual(scenario)
    assert result.payloads == {0: "c", 1: "b"}
    assert result.holders == {0: "c", 1: "b"}


def test_a_partition_no_replica_answers_is_missing_and_lowers_coverage() -> None:
    async def scenario() -> Scattered[str]:
        nodes = {"b": FakeNode("b", fails=True), "c": FakeNode("c")}
        return await gather(scatterer(), {0: ["b"], 1: ["c"], 2: [], 3: ["c"]}, nodes)

    result, _ = run_virtual(scenario)
    assert result.missing == [0, 2]
    assert result.coverage == 0.5


# ------------------------------------------------------------------ hedging
def test_a_node_slower_than_its_p95_is_hedged_and_the_first_answer_wins() -> None:
    async def scenario() -> tuple[Scattered[str], dict[str, FakeNode], Scatterer]:
        s = scatterer()
        prime(s, "b", 0.010)  # p95 10 ms: hedged after the 20 ms floor
        nodes = {"b": FakeNode("b", delay=5.0), "c": FakeNode("c", delay=0.010)}
        return await gather(s, {0: ["b", "c"], 1: ["b", "c"]}, nodes), nodes, s

    (result, nodes, s), elapsed = run_virtual(scenario)
    assert result.payloads == {0: "c", 1: "c"}
    assert result.hedges == 1
    assert elapsed == pytest.approx(0.030, abs=1e-6), "hedged at 20 ms, answered 10 ms later"
    assert nodes["b"].cancelled == 1, "the loser is cancelled"
    assert s.policy.budget.hedges_won == 2, "both partitions came from the hedge"


def test_a_hedge_waits_for_the_node_s_own_p95_when_above_the_floor() -> None:
    async def scenario() -> tuple[Scattered[str], Scatterer]:
        s = scatterer()
        prime(s, "b", 0.200)
        nodes = {"b": FakeNode("b", delay=5.0), "c": FakeNode("c", delay=0.010)}
        return await gather(s, {0: ["b", "c"]}, nodes), s

    (result, _), elapsed = run_virtual(scenario)
    assert result.payloads == {0: "c"}
    assert elapsed == pytest.approx(0.210, abs=1e-6)


def test_when_the_primary_answers_first_the_hedge_is_cancelled_and_its_answer_unused() -> None:
    async def scenario() -> tuple[Scattered[str], dict[str, FakeNode]]:
        s = scatterer()
        prime(s, "b", 0.010)
        nodes = {"b": FakeNode("b", delay=0.025), "c": FakeNode("c", delay=1.0)}
        return await gather(s, {0: ["b", "c"]}, nodes), nodes

    (result, nodes), elapsed = run_virtual(scenario)
    assert result.payloads == {0: "b"} and result.hedges == 1
    assert nodes["c"].cancelled == 1
    assert elapsed == pytest.approx(0.025, abs=1e-6)


def test_no_hedge_once_the_budget_is_spent_the_slow_node_is_waited_for() -> None:
    async def scenario() -> tuple[Scattered[str], Scatterer]:
        s = scatterer(hedging=HedgeSettings(floor_ms=20.0, cap_ms=1000.0, max_ratio=0.05, burst=1.0))
        prime(s, "b", 0.010)
        s.policy.budget.try_spend()  # the only token
        nodes = {"b": FakeNode("b", delay=0.5), "c": FakeNode("c")}
        return await gather(s, {0: ["b", "c"]}, nodes), s

    (result, s), elapsed = run_virtual(scenario)
    assert result.payloads == {0: "b"} and result.hedges == 0
    assert s.policy.budget.hedges_denied == 1
    assert elapsed == pytest.approx(0.5, abs=1e-6)


def test_a_node_without_latency_history_is_hedged_only_after_the_cap() -> None:
    async def scenario() -> Scattered[str]:
        nodes = {"b": FakeNode("b", delay=5.0), "c": FakeNode("c", delay=0.010)}
        return await gather(scatterer(), {0: ["b", "c"]}, nodes)

    result, elapsed = run_virtual(scenario)
    assert result.payloads == {0: "c"}
    assert elapsed == pytest.approx(1.010, abs=1e-6)


def test_the_local_node_is_not_hedged() -> None:
    async def scenario() -> Scattered[str]:
        s = scatterer(local="a")
        prime(s, "a", 0.001)
        nodes = {"a": FakeNode("a", delay=0.3), "c": FakeNode("c")}
        return await gather(s, {0: ["a", "c"]}, nodes)

    result, elapsed = run_virtual(scenario)
    assert result.payloads == {0: "a"} and result.hedges == 0
    assert elapsed == pytest.approx(0.3, abs=1e-6)


def test_a_cancelled_loser_s_wait_counts_as_a_lower_bound_of_its_latency() -> None:
    async def scenario() -> Scatterer:
        s = scatterer()
        prime(s, "b", 0.010)
        nodes = {"b": FakeNode("b", delay=5.0), "c": FakeNode("c", delay=0.010)}
        await gather(s, {0: ["b", "c"]}, nodes)
        return s

    s, _ = run_virtual(scenario)
    assert (s.policy.tracker.ewma("b") or 0) > 0.010, "a stalled node stops looking fast"
    assert s.policy.tracker.outstanding("b") == 0


# ------------------------------------------------------------------ deadline
def test_at_the_deadline_the_answer_holds_what_arrived_and_names_the_rest() -> None:
    async def scenario() -> tuple[Scattered[str], dict[str, FakeNode]]:
        nodes = {"a": FakeNode("a"), "b": FakeNode("b", delay=10.0)}
        return await gather(scatterer(), {0: ["a"], 1: ["b"], 2: ["b"]}, nodes, timeout_s=0.5), nodes

    (result, nodes), elapsed = run_virtual(scenario)
    assert elapsed == pytest.approx(0.5, abs=1e-6)
    assert result.timed_out and result.payloads == {0: "a"} and result.missing == [1, 2]
    assert result.coverage == pytest.approx(1 / 3, abs=1e-3)
    assert nodes["b"].cancelled == 1, "nothing is left running after the deadline"


def test_each_call_is_told_the_time_left_to_the_deadline() -> None:
    seen: list[float] = []

    async def scenario() -> None:
        async def call(node: str, pids: list[int], left_s: float) -> NodeAnswer[str]:
            seen.append(round(left_s, 6))
            if node == "b":
                raise ConnectionError("down")
            await asyncio.sleep(0.1)
            return NodeAnswer({pid: node for pid in pids})

        s = scatterer()
        await s.run({0: ["b", "c"]}, call, 1.0)

    run_virtual(scenario)
    assert seen == [1.0, 1.0], "b fails at once, so c is asked with the whole second left"


# ------------------------------------------------------------------ breakers
def test_an_open_breaker_sends_partitions_straight_to_the_next_replica() -> None:
    async def scenario() -> tuple[Scattered[str], dict[str, FakeNode]]:
        s = scatterer(breaker=BreakerSettings(consecutive_failures=2))
        s.policy.breakers.set_peers(["b", "c", "d", "e"])
        nodes = {"b": FakeNode("b", fails=True), "c": FakeNode("c")}
        for _ in range(2):
            await gather(s, {0: ["b", "c"]}, nodes)
        asked_before = len(nodes["b"].asked)
        result = await gather(s, {0: ["b", "c"]}, nodes)
        assert len(nodes["b"].asked) == asked_before, "b is not asked while its breaker is open"
        return result, nodes

    (result, _), _ = run_virtual(scenario)
    assert result.payloads == {0: "c"}


def test_ranking_puts_the_fastest_idle_replica_first_after_the_local_node() -> None:
    async def scenario() -> list[str]:
        s = scatterer(local="a")
        prime(s, "b", 0.050)
        prime(s, "c", 0.005)
        return s.order(["b", "c", "a"])

    order, _ = run_virtual(scenario)
    assert order == ["a", "c", "b"]


def test_session_writers_come_first_even_when_slower() -> None:
    async def scenario() -> list[str]:
        s = scatterer(local="a")
        prime(s, "b", 0.050)
        prime(s, "c", 0.005)
        return s.order_with_session(["b"], ["a", "b", "c"])

    order, _ = run_virtual(scenario)
    assert order == ["b", "a", "c"]
