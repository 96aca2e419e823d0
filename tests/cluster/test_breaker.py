"""breaker.py: circuit breakers per peer, driven on virtual time."""

from __future__ import annotations

import pytest

from meshrag.clock import VirtualClock
from meshrag.cluster.breaker import BreakerBoard, BreakerSettings, BreakerState

PEERS = [f"peer-{i}" for i in range(10)]


def board(settings: BreakerSettings | None = None, peers: list[str] = PEERS) -> tuple[BreakerBoard, VirtualClock]:
    clock = VirtualClock(start=0.0)
    breakers = BreakerBoard(settings or BreakerSettings(), clock)
    breakers.set_peers(peers)
    return breakers, clock


def fail(breakers: BreakerBoard, peer: str, times: int) -> None:
    for _ in range(times):
        assert breakers.allow(peer)
        breakers.record(peer, ok=False)


def open_breaker(breakers: BreakerBoard, peer: str) -> None:
    fail(breakers, peer, breakers.settings.consecutive_failures)
    assert breakers.state(peer) is BreakerState.OPEN


def test_state_values_are_the_strings_status_prints() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


@pytest.mark.parametrize("bad", [
    {"consecutive_failures": 0}, {"failure_ratio": 0.0}, {"failure_ratio": 1.5}, {"window": 0},
    {"min_calls": 0}, {"min_calls": 21}, {"open_s": 0.0}, {"max_open_s": 0.5}, {"max_open_fraction": -0.1},
    {"max_open_fraction": 1.1},
])
def test_settings_reject_values_that_cannot_work(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        BreakerSettings(**bad)  # type: ignore[arg-type]


def test_unknown_peers_are_closed_and_admitted() -> None:
    breakers, _ = board()
    assert breakers.state("never-seen") is BreakerState.CLOSED
    assert breakers.allow("never-seen") and breakers.would_allow("never-seen")
    assert breakers.rejected == 0


def test_opens_after_consecutive_failures() -> None:
    breakers, _ = board()
    fail(breakers, "peer-0", 4)
    assert breakers.state("peer-0") is BreakerState.CLOSED
    fail(breakers, "peer-0", 1)
    assert breakers.state("peer-0") is BreakerState.OPEN
    assert breakers.opens == 1 and breakers.snapshot()["peer-0"]["opens"] == 1


def test_a_success_resets_the_consecutive_count() -> None:
    breakers, _ = board()
    fail(breakers, "peer-0", 4)
    breakers.record("peer-0", ok=True)
    fail(breakers, "peer-0", 4)
    assert breakers.state("peer-0") is BreakerState.CLOSED
    assert breakers.snapshot()["peer-0"]["consecutive_failures"] == 4


def test_opens_on_failure_ratio_with_interleaved_successes() -> None:
    breakers, _ = board()
    for i in range(9):  # fail, ok, fail, ok, ...: never two failures in a row
        breakers.record("peer-0", ok=i % 2 == 1)
    assert breakers.state("peer-0") is BreakerState.CLOSED  # 9 outcomes: below min_calls
    breakers.record("peer-0", ok=False)  # 10 outcomes, 6 failures: 0.6 >= 0.5
    assert breakers.state("peer-0") is BreakerState.OPEN


def test_ratio_below_threshold_stays_closed() -> None:
    breakers, _ = board()
    for i in range(40):  # one failure in three: 0.33 < 0.5
        breakers.record("peer-0", ok=i % 3 != 0)
    assert breakers.state("peer-0") is BreakerState.CLOSED


def test_no_ratio_judgement_below_min_calls() -> None:
    breakers, _ = board(BreakerSettings(consecutive_failures=100, min_calls=10))
    fail(breakers, "peer-0", 9)  # 100% failures, but only 9 outcomes
    assert breakers.state("peer-0") is BreakerState.CLOSED
    fail(breakers, "peer-0", 1)
    assert breakers.state("peer-0") is BreakerState.OPEN


def test_old_successes_leave_the_window_and_do_not_dilute_recent_failures() -> None:
    breakers, _ = board(BreakerSettings(window=10, min_calls=10))
    for _ in range(30):
        breakers.record("peer-0", ok=True)
    for i in range(9):  # fail, ok, fail, ...: 5 of the last 10 fail at the 9th (over all 39: 0.13)
        breakers.record("peer-0", ok=i % 2 == 1)
        assert breakers.state("peer-0") is (BreakerState.OPEN if i == 8 else BreakerState.CLOSED)


def test_stays_open_until_the_period_passes() -> None:
    breakers, clock = board()
    open_breaker(breakers, "peer-0")
    clock.advance(0.999)
    assert not breakers.allow("peer-0")
    assert breakers.snapshot()["peer-0"]["open_for_s"] == pytest.approx(0.001)
    assert breakers.rejected == 1
    clock.advance(0.001)
    assert breakers.allow("peer-0")
    assert breakers.state("peer-0") is BreakerState.HALF_OPEN


def test_half_open_admits_one_probe_at_a_time() -> None:
    breakers, clock = board()
    open_breaker(breakers, "peer-0")
    clock.advance(1.0)
    assert breakers.allow("peer-0")
    assert not breakers.allow("peer-0") and not breakers.allow("peer-0")
    assert breakers.rejected == 2


def test_would_allow_does_not_take_the_probe() -> None:
    breakers, clock = board()
    open_breaker(breakers, "peer-0")
    assert not breakers.would_allow("peer-0")
    clock.advance(1.0)
    assert breakers.would_allow("peer-0") and breakers.would_allow("peer-0")
    assert breakers.state("peer-0") is BreakerState.OPEN and breakers.rejected == 0
    assert breakers.allow("peer-0")  # the probe is still there for the real attempt
    assert not breakers.would_allow("peer-0")


def test_probe_success_closes_and_resets_backoff() -> None:
    breakers, clock = board()
    open_breaker(breakers, "peer-0")
    clock.advance(1.0)
    fail(breakers, "peer-0", 1)  # failed probe: re-opened for 2 s
    clock.advance(2.0)
    assert breakers.allow("peer-0")
    breakers.record("peer-0", ok=True)
    assert breakers.state("peer-0") is BreakerState.CLOSED and breakers.closes == 1
    open_breaker(breakers, "peer-0")  # opens again from a clean count...
    assert breakers.snapshot()["peer-0"]["open_for_s"] == pytest.approx(1.0)  # ...for the base period


def test_probe_failure_doubles_the_open_period_up_to_the_cap() -> None:
    breakers, clock = board(BreakerSettings(open_s=1.0, max_open_s=10.0))
    open_breaker(breakers, "peer-0")
    periods = []
    for _ in range(6):
        period = breakers.snapshot()["peer-0"]["open_for_s"]
        periods.append(period)
        clock.advance(period - 0.01)
        assert not breakers.allow("peer-0")
        clock.advance(0.01)
        fail(breakers, "peer-0", 1)
    assert periods == pytest.approx([1.0, 2.0, 4.0, 8.0, 10.0, 10.0])
    assert breakers.opens == 7
    assert breakers.snapshot()["peer-0"]["consecutive_failures"] == 5 + 6  # failed probes count too


def test_outcomes_recorded_while_open_are_ignored() -> None:
    breakers, clock = board()
    open_breaker(breakers, "peer-0")
    breakers.record("peer-0", ok=True)  # an attempt admitted before it opened
    assert breakers.state("peer-0") is BreakerState.OPEN
    breakers.record("peer-0", ok=False)
    assert breakers.snapshot()["peer-0"]["open_for_s"] == pytest.approx(1.0)
    assert breakers.opens == 1


def test_abandoned_probe_is_freed_after_open_s() -> None:
    breakers, clock = board()
    open_breaker(breakers, "peer-0")
    clock.advance(1.0)
    assert breakers.allow("peer-0")  # this probe's outcome is never recorded
    clock.advance(0.999)
    assert not breakers.allow("peer-0")
    clock.advance(0.001)
    assert breakers.allow("peer-0")
    assert not breakers.allow("peer-0")  # and the new probe holds the slot again
    breakers.record("peer-0", ok=True)
    assert breakers.state("peer-0") is BreakerState.CLOSED


def largest_open_count(peer_count: int) -> tuple[int, BreakerBoard]:
    peers = PEERS[:peer_count] if peer_count <= len(PEERS) else [f"p{i}" for i in range(peer_count)]
    breakers, _ = board(peers=peers)
    for peer in peers:
        fail(breakers, peer, 5)
    return sum(breakers.state(p) is BreakerState.OPEN for p in peers), breakers


@pytest.mark.parametrize(("peer_count", "most_open"), [(2, 1), (3, 1), (4, 2), (10, 5)])
def test_never_more_than_half_of_the_peers_open(peer_count: int, most_open: int) -> None:
    opened, breakers = largest_open_count(peer_count)
    assert opened == most_open
    assert breakers.suppressed_opens == peer_count - most_open
    assert breakers.opens == most_open


def test_a_suppressed_breaker_stays_closed_and_opens_once_there_is_room() -> None:
    breakers, clock = board(peers=["a", "b"])
    open_breaker(breakers, "a")
    fail(breakers, "b", 5)
    assert breakers.state("b") is BreakerState.CLOSED and breakers.allow("b")
    fail(breakers, "b", 1)  # every further trip is refused and counted
    assert breakers.suppressed_opens == 2
    clock.advance(1.0)
    assert breakers.allow("a")
    breakers.record("a", ok=True)  # a closes: room for one open again
    fail(breakers, "b", 1)
    assert breakers.state("b") is BreakerState.OPEN


def test_half_open_counts_as_open_for_the_guard() -> None:
    breakers, clock = board(peers=["a", "b"])
    open_breaker(breakers, "a")
    clock.advance(1.0)
    assert breakers.allow("a")  # half-open now
    fail(breakers, "b", 5)
    assert breakers.state("b") is BreakerState.CLOSED and breakers.suppressed_opens == 1


def test_a_lone_peer_is_never_opened() -> None:
    breakers, _ = board(peers=["only"])
    fail(breakers, "only", 20)
    assert breakers.state("only") is BreakerState.CLOSED


def test_recorded_peers_join_the_population() -> None:
    clock = VirtualClock(start=0.0)
    breakers = BreakerBoard(BreakerSettings(), clock)  # set_peers never called
    fail(breakers, "a", 5)
    assert breakers.state("a") is BreakerState.CLOSED  # one known peer: opening it is all of them
    breakers.record("b", ok=True)
    fail(breakers, "a", 1)
    assert breakers.state("a") is BreakerState.OPEN


def test_set_peers_drops_breakers_of_departed_peers() -> None:
    breakers, _ = board()
    open_breaker(breakers, "peer-0")
    breakers.set_peers(PEERS[1:])
    assert breakers.state("peer-0") is BreakerState.CLOSED and "peer-0" not in breakers.snapshot()


def test_forget_closes_a_peer_and_leaves_the_population() -> None:
    breakers, _ = board(peers=["a", "b", "c", "d"])
    open_breaker(breakers, "a")
    breakers.forget("a")
    assert breakers.allow("a") and breakers.state("a") is BreakerState.CLOSED
    open_breaker(breakers, "b")  # 1 of the 3 left
    fail(breakers, "c", 5)  # 2 of 3 would be more than half
    assert breakers.state("c") is BreakerState.CLOSED


def test_snapshot_and_counters_report_each_peer() -> None:
    breakers, clock = board()
    open_breaker(breakers, "peer-0")
    breakers.record("peer-1", ok=False)
    clock.advance(0.25)
    assert not breakers.allow("peer-0")
    assert breakers.snapshot() == {
        "peer-0": {"state": "open", "consecutive_failures": 5, "open_for_s": 0.75, "opens": 1},
        "peer-1": {"state": "closed", "consecutive_failures": 1, "open_for_s": 0.0, "opens": 0},
    }
    assert breakers.counters() == {"opens": 1, "closes": 0, "suppressed_opens": 0, "rejected": 1}
