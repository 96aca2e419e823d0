"""selection.py: latency tracking, replica ranking and the hedging budget, on virtual time."""

from __future__ import annotations

import pytest

from meshrag.clock import VirtualClock
from meshrag.cluster.breaker import BreakerBoard, BreakerSettings
from meshrag.cluster.selection import (
    P95_MIN_SAMPLES, HedgeBudget, HedgeSettings, LatencyTracker, hedge_delay_s, rank_replicas,
)


def tracker(alpha: float = 0.3, window: int = 100) -> tuple[LatencyTracker, VirtualClock]:
    clock = VirtualClock(start=0.0)
    return LatencyTracker(clock, alpha=alpha, window=window), clock


def observe(latencies: LatencyTracker, node: str, *seconds: float, ok: bool = True) -> None:
    for value in seconds:
        latencies.begin(node)
        latencies.end(node, value, ok=ok)


# LatencyTracker

def test_tracker_rejects_unusable_parameters() -> None:
    with pytest.raises(ValueError, match="alpha"):
        LatencyTracker(VirtualClock(), alpha=0.0)
    with pytest.raises(ValueError, match="window"):
        LatencyTracker(VirtualClock(), window=0)


def test_first_sample_is_the_ewma_and_later_ones_are_weighted_by_alpha() -> None:
    latencies, _ = tracker(alpha=0.3)
    assert latencies.ewma("a") is None
    observe(latencies, "a", 0.100)
    assert latencies.ewma("a") == pytest.approx(0.100)
    observe(latencies, "a", 0.200)
    assert latencies.ewma("a") == pytest.approx(0.3 * 0.200 + 0.7 * 0.100)


def test_ewma_converges_to_a_new_steady_latency() -> None:
    latencies, _ = tracker(alpha=0.3)
    observe(latencies, "a", *[0.010] * 50)
    observe(latencies, "a", *[0.200] * 20)
    assert latencies.ewma("a") == pytest.approx(0.200, rel=0.01)


def test_ewma_weights_recent_samples_more() -> None:
    slow_then_fast, _ = tracker()
    fast_then_slow, _ = tracker()
    observe(slow_then_fast, "a", 0.5, 0.5, 0.5, 0.01, 0.01)
    observe(fast_then_slow, "a", 0.01, 0.01, 0.5, 0.5, 0.5)
    mean = (3 * 0.5 + 2 * 0.01) / 5  # the same samples: only their order differs
    assert slow_then_fast.ewma("a") < mean < fast_then_slow.ewma("a")  # type: ignore[operator]


def test_failures_do_not_move_the_ewma_and_are_counted() -> None:
    latencies, _ = tracker()
    observe(latencies, "a", 0.100)
    observe(latencies, "a", 0.001, 0.001, ok=False)  # a refused connection answers fast
    assert latencies.ewma("a") == pytest.approx(0.100)
    assert latencies.snapshot()["a"]["failures"] == 2 and latencies.snapshot()["a"]["samples"] == 1


def test_outstanding_counts_requests_in_flight() -> None:
    latencies, _ = tracker()
    latencies.begin("a")
    latencies.begin("a")
    latencies.begin("b")
    assert (latencies.outstanding("a"), latencies.outstanding("b"), latencies.outstanding("c")) == (2, 1, 0)
    latencies.end("a", 0.1, ok=True)
    latencies.end("b", 0.1, ok=False)  # failures finish requests too
    assert (latencies.outstanding("a"), latencies.outstanding("b")) == (1, 0)
    latencies.end("b", 0.1, ok=True)  # unmatched
    assert latencies.outstanding("b") == 0


def test_a_censored_time_above_the_ewma_is_folded_in_as_a_lower_bound() -> None:
    latencies, _ = tracker(alpha=0.5)
    observe(latencies, "a", 0.010)
    latencies.begin("a")
    latencies.end_censored("a", 0.400)  # cancelled after 400 ms: it takes at least that
    assert latencies.ewma("a") == pytest.approx(0.5 * 0.400 + 0.5 * 0.010)
    assert latencies.outstanding("a") == 0 and latencies.snapshot()["a"]["censored"] == 1


def test_a_censored_time_below_the_ewma_changes_nothing() -> None:
    latencies, _ = tracker()
    observe(latencies, "a", 0.100)
    latencies.begin("a")
    latencies.end_censored("a", 0.005)  # a hedge that lost after 5 ms says nothing about its speed
    assert latencies.ewma("a") == pytest.approx(0.100) and latencies.snapshot()["a"]["samples"] == 1
    assert latencies.outstanding("a") == 0


def test_a_node_that_stops_answering_stops_looking_fast() -> None:
    latencies, _ = tracker()
    observe(latencies, "stopped", 0.005)
    observe(latencies, "steady", 0.020)
    for _ in range(3):  # each of its requests is abandoned when a hedge wins at 50 ms
        latencies.begin("stopped")
        latencies.end_censored("stopped", 0.050)
    assert rank_replicas(["stopped", "steady"], "x", latencies, None) == ["steady", "stopped"]


def test_censored_time_for_an_unknown_node_is_its_first_estimate() -> None:
    latencies, _ = tracker()
    latencies.begin("a")
    latencies.end_censored("a", 2.0)
    assert latencies.ewma("a") == pytest.approx(2.0)


def test_begin_returns_a_start_time_on_the_trackers_clock() -> None:
    latencies, clock = tracker()
    clock.advance(5.0)
    started = latencies.begin("a")
    clock.advance(0.25)
    assert latencies.elapsed(started) == pytest.approx(0.25)


def test_p95_needs_enough_samples_and_reads_the_tail() -> None:
    latencies, _ = tracker()
    observe(latencies, "a", *[0.010] * (P95_MIN_SAMPLES - 1))
    assert latencies.p95("a") is None
    latencies, _ = tracker()
    observe(latencies, "a", *[i / 1000 for i in range(1, 101)])  # 1 ms .. 100 ms
    assert latencies.p95("a") == pytest.approx(0.095)


def test_p95_forgets_samples_outside_the_window() -> None:
    latencies, _ = tracker(window=20)
    observe(latencies, "a", *[1.0] * 20)
    observe(latencies, "a", *[0.010] * 20)
    assert latencies.p95("a") == pytest.approx(0.010)


def test_snapshot_reports_each_node() -> None:
    latencies, clock = tracker()
    observe(latencies, "a", 0.1)
    latencies.begin("a")
    clock.advance(2.0)
    assert latencies.snapshot() == {"a": {
        "outstanding": 1, "ewma_s": 0.1, "p95_s": None, "samples": 1, "failures": 0, "censored": 0,
        "last_sample_age_s": 2.0,
    }}


def test_forget_drops_a_node() -> None:
    latencies, _ = tracker()
    observe(latencies, "a", 0.1)
    latencies.forget("a")
    assert latencies.ewma("a") is None and latencies.snapshot() == {}


# rank_replicas

def test_local_node_first_even_when_slowest() -> None:
    latencies, _ = tracker()
    observe(latencies, "local", 0.5)
    observe(latencies, "b", 0.01)
    assert rank_replicas(["b", "local"], "local", latencies, None) == ["local", "b"]


def test_lower_ewma_first() -> None:
    latencies, _ = tracker()
    observe(latencies, "a", 0.030)
    observe(latencies, "b", 0.010)
    observe(latencies, "c", 0.020)
    assert rank_replicas(["a", "b", "c"], "local", latencies, None) == ["b", "c", "a"]


def test_busy_fast_node_loses_to_an_idle_slower_one() -> None:
    latencies, _ = tracker()
    observe(latencies, "fast", 0.010)
    observe(latencies, "slow", 0.025)
    assert rank_replicas(["slow", "fast"], "local", latencies, None) == ["fast", "slow"]
    for _ in range(2):  # 10 ms x 3 = 30 > 25 ms x 1
        latencies.begin("fast")
    assert rank_replicas(["fast", "slow"], "local", latencies, None) == ["slow", "fast"]


def test_ties_keep_candidate_order() -> None:
    latencies, _ = tracker()
    observe(latencies, "a", 0.010)
    observe(latencies, "b", 0.010)
    assert rank_replicas(["b", "a", "c"], "x", latencies, None) == ["b", "a", "c"]
    assert rank_replicas(["a", "c", "b"], "x", latencies, None) == ["a", "c", "b"]


def test_unknown_node_is_costed_at_the_lowest_known_ewma_and_explored() -> None:
    latencies, _ = tracker()
    observe(latencies, "fast", 0.010)
    observe(latencies, "slow", 0.050)
    assert rank_replicas(["slow", "fast", "new"], "x", latencies, None) == ["fast", "new", "slow"]
    latencies.begin("fast")  # the fast one is busy: the unknown one goes first
    assert rank_replicas(["slow", "fast", "new"], "x", latencies, None) == ["new", "fast", "slow"]


def test_with_nothing_known_outstanding_still_spreads_requests() -> None:
    latencies, _ = tracker()
    latencies.begin("a")
    assert rank_replicas(["a", "b"], "x", latencies, None) == ["b", "a"]


def test_refused_breaker_nodes_go_last_but_are_still_listed() -> None:
    latencies, clock = tracker()
    observe(latencies, "down", 0.001)
    observe(latencies, "up", 0.100)
    breakers = BreakerBoard(BreakerSettings(consecutive_failures=1), clock)
    breakers.set_peers(["down", "up"])
    assert breakers.allow("down")
    breakers.record("down", ok=False)
    assert rank_replicas(["down", "up"], "x", latencies, breakers) == ["up", "down"]


def test_ranking_does_not_take_the_half_open_probe() -> None:
    latencies, clock = tracker()
    breakers = BreakerBoard(BreakerSettings(consecutive_failures=1), clock)
    breakers.set_peers(["a", "b"])
    assert breakers.allow("a")
    breakers.record("a", ok=False)
    clock.advance(1.0)  # the open period has passed: a probe may go
    for _ in range(3):
        assert rank_replicas(["b", "a"], "x", latencies, breakers) == ["b", "a"]
    assert breakers.allow("a") and breakers.rejected == 0


def test_duplicates_are_listed_once() -> None:
    latencies, _ = tracker()
    assert rank_replicas(["a", "local", "a", "local"], "local", latencies, None) == ["local", "a"]


# Hedging

@pytest.mark.parametrize("bad", [
    {"floor_ms": -1.0}, {"cap_ms": 10.0}, {"max_ratio": -0.1}, {"max_ratio": 1.5}, {"burst": 0.5},
])
def test_hedge_settings_reject_values_that_cannot_work(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        HedgeSettings(**bad)


def test_hedge_delay_is_the_cap_without_enough_samples() -> None:
    latencies, _ = tracker()
    observe(latencies, "a", *[0.030] * (P95_MIN_SAMPLES - 1))
    assert hedge_delay_s("a", latencies, HedgeSettings()) == pytest.approx(1.0)
    assert hedge_delay_s("unknown", latencies, HedgeSettings()) == pytest.approx(1.0)


@pytest.mark.parametrize(("p95_s", "delay_s"), [(0.001, 0.020), (0.150, 0.150), (5.0, 1.0)])
def test_hedge_delay_is_the_p95_clamped_to_floor_and_cap(p95_s: float, delay_s: float) -> None:
    latencies, _ = tracker()
    observe(latencies, "a", *[p95_s] * 20)
    assert hedge_delay_s("a", latencies, HedgeSettings(floor_ms=20.0, cap_ms=1000.0)) == pytest.approx(delay_s)


def test_budget_bound_holds_over_ten_thousand_requests() -> None:
    settings = HedgeSettings(max_ratio=0.05, burst=5.0)
    budget = HedgeBudget(settings)
    for _ in range(10_000):
        budget.note_request()
        budget.try_spend()  # every request would like a hedge
    assert budget.hedges_sent <= settings.max_ratio * budget.requests + settings.burst
    assert budget.hedges_sent >= settings.max_ratio * budget.requests  # and the budget is not starved
    assert budget.hedges_sent + budget.hedges_denied == 10_000


def test_every_twentieth_request_earns_a_hedge() -> None:
    budget = HedgeBudget(HedgeSettings(max_ratio=0.05, burst=5.0))
    for _ in range(5):
        assert budget.try_spend()  # it starts full
    assert not budget.try_spend()
    for _ in range(19):
        budget.note_request()
    assert not budget.try_spend()
    budget.note_request()
    assert budget.try_spend()
    assert (budget.hedges_sent, budget.hedges_denied) == (6, 2)


def test_idle_requests_do_not_bank_more_than_the_burst() -> None:
    budget = HedgeBudget(HedgeSettings(max_ratio=0.05, burst=5.0))
    for _ in range(1_000):
        budget.note_request()
    assert sum(budget.try_spend() for _ in range(10)) == 5
    assert budget.tokens == pytest.approx(0.0)


def test_hedges_won_are_counted() -> None:
    budget = HedgeBudget(HedgeSettings())  # starts full: the request's deposit is over the cap
    budget.note_request()
    assert budget.try_spend()
    budget.note_hedge_won()
    assert budget.snapshot() == {"requests": 1, "hedges_sent": 1, "hedges_denied": 0, "hedges_won": 1, "tokens": 4.0}
