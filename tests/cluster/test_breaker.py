"""cluster/breaker.py on virtual time: trip rules, half-open probes with backoff, the open share."""

from __future__ import annotations

import pytest

from meshrag.clock import VirtualClock
from meshrag.cluster.breaker import BreakerBoard, BreakerSettings, BreakerState

PEERS = ["a", "b", "c", "d"]


def board(clock: VirtualClock, peers: list[str] = PEERS, **settings: float) -> BreakerBoard:
    return BreakerBoard(BreakerSettings(**settings), clock, lambda: peers)  # type: ignore[arg-type]


def fail(b: BreakerBoard, peer: str, times: int) -> None:
    for _ in range(times):
        b.record(peer, ok=False)


def test_consecutive_failures_open_the_breaker_and_a_success_in_between_resets_the_count() -> None:
    b = board(VirtualClock(), consecutive_failures=3, min_calls=100)
    fail(b, "a", 2)
    b.record("a", ok=True)
    fail(b, "a", 2)
    assert b.state("a") is BreakerState.CLOSED and b.allow("a")
    fail(b, "a", 1)
    assert b.state("a") is BreakerState.OPEN and not b.allow("a")


def test_a_failure_ratio_over_the_window_opens_it_without_failures_in_a_row() -> None:
    b = board(VirtualClock(), consecutive_failures=100, failure_ratio=0.5, window=10, min_calls=10)
    for _ in range(4):
        b.record("a", ok=True)
        b.record("a", ok=False)
    assert b.state("a") is BreakerState.CLOSED, "8 calls are fewer than min_calls"
    b.record("a", ok=True)
    b.record("a", ok=False)
    assert b.state("a") is BreakerState.OPEN, "5 failures in the last 10 calls"


def test_after_the_open_period_one_probe_goes_through_and_its_success_closes_it() -> None:
    clock = VirtualClock()
    b = board(clock, consecutive_failures=1, open_for_s=2.0)
    fail(b, "a", 1)
    clock.advance(1.9)
    assert not b.allow("a")
    clock.advance(0.2)
    assert b.state("a") is BreakerState.HALF_OPEN
    assert b.allow("a") and not b.allow("a"), "exactly one probe while half-open"
    b.record("a", ok=True)
    assert b.state("a") is BreakerState.CLOSED and b.allow("a")


def test_a_failed_probe_reopens_it_for_twice_as_long_up_to_the_cap() -> None:
    clock = VirtualClock()
    b = board(clock, consecutive_failures=1, open_for_s=1.0, max_open_for_s=3.0)
    fail(b, "a", 1)
    waits = []
    for _ in range(4):
        opened = clock.now()
        while not b.allow("a"):
            clock.advance(0.25)
        waits.append(clock.now() - opened)
        b.record("a", ok=False)
    assert waits == [1.0, 2.0, 3.0, 3.0]


def test_a_closed_breaker_starts_afresh_after_recovering() -> None:
    clock = VirtualClock()
    b = board(clock, consecutive_failures=2, open_for_s=1.0)
    fail(b, "a", 2)
    clock.advance(1.0)
    assert b.allow("a")
    b.record("a", ok=True)
    fail(b, "a", 1)
    assert b.state("a") is BreakerState.CLOSED, "one failure after recovering is not two in a row"


def test_never_more_than_half_the_peers_are_open() -> None:
    b = board(VirtualClock(), consecutive_failures=1)
    for peer in PEERS:
        fail(b, peer, 3)
    assert len(b.open_peers()) == 2 and b.open_peers() == ["a", "b"]
    assert b.allow("c") and b.allow("d"), "the rest stay usable however they fail"


def test_a_single_peer_is_never_refused() -> None:
    b = board(VirtualClock(), peers=["only"], consecutive_failures=1)
    fail(b, "only", 10)
    assert b.allow("only")


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        BreakerSettings(failure_ratio=0.0)
    with pytest.raises(ValueError):
        BreakerSettings(open_for_s=10.0, max_open_for_s=5.0)
