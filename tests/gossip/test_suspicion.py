"""suspicion.py: Lifeguard's dynamic timeout, driven on virtual time."""

from __future__ import annotations

import math

import pytest

from meshrag.gossip.sim import Simulation
from meshrag.gossip.suspicion import Suspicion, suspicion_timeout


def test_timeout_starts_at_max_and_reaches_min_with_k_confirmations() -> None:
    assert suspicion_timeout(0, 3, 2.0, 12.0) == 12.0
    assert suspicion_timeout(1, 3, 2.0, 12.0) == pytest.approx(12.0 - 10.0 * math.log(2) / math.log(4))
    assert suspicion_timeout(3, 3, 2.0, 12.0) == 2.0
    assert suspicion_timeout(9, 3, 2.0, 12.0) == 2.0
    assert suspicion_timeout(0, 0, 2.0, 12.0) == 2.0  # no confirmations expected: the minimum


def fire_time(confirm_at: list[tuple[float, str]]) -> float:
    sim = Simulation(seed=0)
    fired: list[float] = []
    suspicion = Suspicion("accuser", 2, 4.0, 24.0, sim.clock.now(), sim, lambda: fired.append(sim.clock.now()))
    for at, who in confirm_at:
        sim.at(at, lambda who=who: suspicion.confirm(who, sim.clock.now()))
    sim.run_for(60)
    assert len(fired) == 1
    return fired[0]


def test_unconfirmed_suspicion_fires_at_the_maximum() -> None:
    assert fire_time([]) == pytest.approx(24.0)


def test_confirmations_shorten_the_timeout() -> None:
    one = fire_time([(1.0, "b")])
    two = fire_time([(1.0, "b"), (2.0, "c")])
    assert two == pytest.approx(4.0)
    assert 4.0 < one < 24.0


def test_the_accuser_and_repeated_confirmers_do_not_count() -> None:
    assert fire_time([(1.0, "accuser"), (2.0, "b"), (3.0, "b")]) == fire_time([(2.0, "b")])


def test_a_late_confirmation_fires_at_once() -> None:
    # After 10 s a second confirmation lowers the timeout to 4 s, already past: fire now.
    assert fire_time([(1.0, "b"), (10.0, "c")]) == pytest.approx(10.0)


def test_cancelled_suspicion_never_fires() -> None:
    sim = Simulation(seed=0)
    fired: list[float] = []
    suspicion = Suspicion("a", 2, 1.0, 2.0, 0.0, sim, lambda: fired.append(sim.clock.now()))
    suspicion.cancel()
    sim.run_for(10)
    assert fired == [] and not suspicion.confirm("b", sim.clock.now())
