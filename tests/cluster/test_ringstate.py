"""cluster/ringstate.py: cluster settings checks and the persisted ring table."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from meshrag.cluster.ringstate import CLUSTER_FILE, ClusterSettings, RingState
from meshrag.errors import ConfigError
from meshrag.ring import PLACEMENT_BALANCED, PLACEMENT_VNODES, PLACEMENTS, Ring, RingEntry, RingStatus

SETTINGS = ClusterSettings(partitions=16, replicas=3, model="all-MiniLM-L6-v2@abc", dim=384)


def test_a_node_with_the_clusters_model_may_join() -> None:
    assert SETTINGS.refusal("all-MiniLM-L6-v2@abc", 384) is None


@pytest.mark.parametrize(("model", "dim"), [("other@def", 384), ("all-MiniLM-L6-v2@abc", 128), ("other@def", 768)])
def test_another_model_or_dimension_is_refused_with_both_named(model: str, dim: int) -> None:
    reason = SETTINGS.refusal(model, dim)
    assert reason is not None
    assert f"{model} ({dim} dimensions)" in reason and "all-MiniLM-L6-v2@abc (384 dimensions)" in reason


def test_settings_and_ring_survive_a_restart(tmp_path: Path) -> None:
    state = RingState(tmp_path, "a")
    state.adopt_settings(SETTINGS)
    state.add_self("node-a", "z1", RingStatus.NORMAL, 10)
    state.merge([RingEntry("b", "node-b", "z2", RingStatus.JOINING, 11)])

    again = RingState(tmp_path, "a")
    assert again.load()
    assert again.settings == SETTINGS
    assert again.table.fingerprint() == state.table.fingerprint()
    assert again.self_entry == RingEntry("a", "node-a", "z1", RingStatus.NORMAL, 10)


def test_a_node_that_never_joined_has_nothing_to_load(tmp_path: Path) -> None:
    assert not RingState(tmp_path, "a").load()


def test_a_damaged_cluster_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / CLUSTER_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=CLUSTER_FILE):
        RingState(tmp_path, "a").load()


def test_listeners_see_the_new_ring_on_every_adopted_change(tmp_path: Path) -> None:
    state = RingState(tmp_path, "a")
    state.adopt_settings(SETTINGS)
    seen: list[Ring] = []
    state.on_change(seen.append)
    state.add_self("node-a", "z1", RingStatus.NORMAL, 1)
    state.merge([RingEntry("a", "node-a", "z1", RingStatus.NORMAL, 1)])  # nothing new: no event
    state.set_status("a", RingStatus.LEAVING, 5)
    assert [ring.entries["a"].status for ring in seen] == [RingStatus.NORMAL, RingStatus.LEAVING]
    stored = json.loads((tmp_path / CLUSTER_FILE).read_text())
    assert stored["ring"][0]["status"] == "leaving"


def test_a_new_cluster_places_partitions_balanced_and_records_it() -> None:
    assert SETTINGS.placement == PLACEMENT_BALANCED
    assert ClusterSettings.from_dict(asdict(SETTINGS)) == SETTINGS


def test_settings_recorded_before_the_placement_setting_keep_vnode_placement(tmp_path: Path) -> None:
    """A running cluster from before the setting must not change placement (it would move most data)."""
    recorded = {key: value for key, value in asdict(SETTINGS).items() if key != "placement"}
    (tmp_path / CLUSTER_FILE).write_text(json.dumps({"settings": recorded, "ring": []}))
    state = RingState(tmp_path, "a")
    assert state.load()
    assert state.settings is not None and state.settings.placement == PLACEMENT_VNODES
    state.add_self("node-a", "z1", RingStatus.NORMAL, 1)
    assert state.ring.placement == PLACEMENT_VNODES
    assert json.loads((tmp_path / CLUSTER_FILE).read_text())["settings"]["placement"] == PLACEMENT_VNODES


def test_the_ring_is_computed_with_the_clusters_placement(tmp_path: Path) -> None:
    for placement in PLACEMENTS:
        state = RingState(tmp_path / placement, "a")
        (tmp_path / placement).mkdir()
        state.adopt_settings(dataclasses.replace(SETTINGS, placement=placement))
        state.add_self("node-a", "z1", RingStatus.NORMAL, 1)
        assert state.ring.placement == placement


def test_a_placement_this_node_does_not_implement_is_refused_by_name() -> None:
    assert SETTINGS.placement_refusal() is None
    reason = dataclasses.replace(SETTINGS, placement="spiral").placement_refusal()
    assert reason is not None and "'spiral'" in reason and "does not implement" in reason
