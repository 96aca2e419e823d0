"""settings.py: memberlist's formulas and our deviations, with the numbers the issue quotes."""

from __future__ import annotations

import math

import pytest

from meshrag.errors import ConfigError
from meshrag.gossip.settings import GossipSettings


def test_memberlist_lan_suspicion_timeouts_follow_its_formula() -> None:
    settings = GossipSettings.memberlist_lan()
    minimum, maximum, expected = settings.suspicion_timeouts(64)
    assert minimum == pytest.approx(4 * math.log10(64) * 1.0)
    assert maximum == pytest.approx(6 * minimum)
    assert expected == 2  # SuspicionMult - 2


def test_small_clusters_use_the_unscaled_minimum_and_expect_no_confirmations() -> None:
    settings = GossipSettings.memberlist_lan()
    minimum, _, expected = settings.suspicion_timeouts(3)
    assert minimum == pytest.approx(4.0)  # max(1, log10 3) = 1
    assert expected == 0  # n - 2 < k: not enough members to confirm


def test_our_minimum_timeout_has_a_floor_for_small_clusters() -> None:
    minimum, maximum, expected = GossipSettings().suspicion_timeouts(5)
    assert minimum == pytest.approx(3.0)
    assert maximum == pytest.approx(18.0)
    assert expected == 3


def test_lifeguard_off_fixes_the_timeout_at_its_minimum() -> None:
    minimum, maximum, expected = GossipSettings(lifeguard=False).suspicion_timeouts(64)
    assert minimum == maximum
    assert expected == 0


def test_retransmit_limit_is_mult_times_ceil_log10_n_plus_one() -> None:
    settings = GossipSettings.memberlist_lan()
    assert settings.retransmit_limit(9) == 4
    assert settings.retransmit_limit(64) == 8
    assert settings.retransmit_limit(1000) == 16


def test_push_pull_interval_grows_linearly_past_the_threshold() -> None:
    settings = GossipSettings()
    assert settings.push_pull_interval(16) == 30.0
    assert settings.push_pull_interval(64) == 60.0
    assert settings.push_pull_interval(256) == 240.0
    memberlist = GossipSettings.memberlist_lan()
    assert [memberlist.push_pull_interval(n) for n in (32, 64, 256)] == [30.0, 60.0, 120.0]


@pytest.mark.parametrize("change", [{"probe_timeout_s": 1.0}, {"packet_limit_bytes": 70000}, {"gossip_interval_s": 0},
                                    {"metadata_limit_bytes": 2000}, {"reconnect_interval_s": -1}])
def test_bad_values_fail_with_the_key_named(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        GossipSettings(**change)  # type: ignore[arg-type]
    assert info.value.field == f"gossip.{next(iter(change))}"
