"""awareness.py: the local health multiplier."""

from __future__ import annotations

from meshrag.gossip.awareness import Awareness


def test_failures_raise_the_score_up_to_max_minus_one_and_stretch_timeouts() -> None:
    awareness = Awareness(max_multiplier=8)
    awareness.apply(3)
    assert awareness.score == 3
    assert awareness.scale(0.5) == 2.0
    awareness.apply(100)
    assert awareness.score == 7
    assert awareness.scale(1.0) == 8.0


def test_successes_lower_the_score_but_never_below_zero() -> None:
    awareness = Awareness(max_multiplier=8)
    awareness.apply(2)
    awareness.apply(-1)
    assert awareness.score == 1
    awareness.apply(-5)
    assert awareness.score == 0
    assert awareness.scale(1.0) == 1.0


def test_disabled_awareness_never_scales() -> None:
    awareness = Awareness(max_multiplier=8, enabled=False)
    awareness.apply(5)
    assert awareness.score == 0
    assert awareness.scale(1.0) == 1.0
