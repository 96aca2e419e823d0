"""clock.py: virtual time and HLC ordering."""

from __future__ import annotations

import pytest

from meshrag.clock import HybridLogicalClock, VirtualClock, hlc_to_wall, pack_hlc, unpack_hlc


def test_virtual_clock_moves_only_when_advanced() -> None:
    clock = VirtualClock(start=5.0)
    assert clock.now() == 5.0
    clock.advance(1.5)
    assert clock.now() == 6.5
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_hlc_strictly_increases_when_wall_clock_stands_still() -> None:
    hlc = HybridLogicalClock(VirtualClock())
    stamps = [hlc.now() for _ in range(1000)]
    assert stamps == sorted(set(stamps))


def test_hlc_survives_wall_clock_going_backwards() -> None:
    class SteppingClock(VirtualClock):
        def __init__(self) -> None:
            super().__init__()
            self.offset = 0.0

        def wall(self) -> float:
            return super().wall() + self.offset

    clock = SteppingClock()
    hlc = HybridLogicalClock(clock)
    before = hlc.now()
    clock.offset = -60.0
    assert hlc.now() > before


def test_hlc_orders_after_observed_remote_timestamp() -> None:
    hlc = HybridLogicalClock(VirtualClock())
    remote = hlc.now() + (10_000 << 16)
    hlc.observe(remote)
    assert hlc.now() > remote


def test_pack_roundtrip_and_wall_time() -> None:
    stamp = pack_hlc(1_700_000_000_123, 7)
    assert unpack_hlc(stamp) == (1_700_000_000_123, 7)
    assert hlc_to_wall(stamp) == pytest.approx(1_700_000_000.123)


# ------------------------------------------------------------------ drift bound
def test_hlc_refuses_to_observe_a_timestamp_beyond_the_drift_bound() -> None:
    from meshrag.clock import ClockDrift

    clock = VirtualClock()
    hlc = HybridLogicalClock(clock, max_drift_s=60.0)
    far_ahead = pack_hlc(int((clock.wall() + 3600) * 1000), 0)
    with pytest.raises(ClockDrift, match="3600.0 s ahead"):
        hlc.observe(far_ahead)
    assert hlc.now() < far_ahead, "a refused timestamp must not drag the clock forward"


def test_hlc_observes_a_timestamp_within_the_drift_bound() -> None:
    clock = VirtualClock()
    hlc = HybridLogicalClock(clock, max_drift_s=60.0)
    ahead = pack_hlc(int((clock.wall() + 30) * 1000), 5)
    hlc.observe(ahead)
    assert hlc.now() > ahead
    assert hlc.ahead_s(ahead) == pytest.approx(30.0, abs=0.01)


def test_system_clock_offset_shifts_wall_time_only() -> None:
    import time

    from meshrag.clock import SystemClock

    shifted = SystemClock(wall_offset_s=-30.0)
    assert shifted.wall() == pytest.approx(time.time() - 30.0, abs=0.5)
    assert shifted.now() == pytest.approx(time.monotonic(), abs=0.5)
