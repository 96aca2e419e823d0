"""identity.py: a node keeps its id across restarts and counts generations."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshrag.errors import ConfigError
from meshrag.identity import IDENTITY_FILE, load_or_create


def test_restart_keeps_id_and_bumps_generation(tmp_path: Path) -> None:
    first = load_or_create(tmp_path, "a")
    second = load_or_create(tmp_path, "a")
    assert second.node_id == first.node_id
    assert second.generation == first.generation + 1


def test_fresh_directories_get_distinct_ids(tmp_path: Path) -> None:
    assert load_or_create(tmp_path / "x", "a").node_id != load_or_create(tmp_path / "y", "a").node_id


def test_damaged_identity_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(ConfigError) as err:
        load_or_create(tmp_path, "a")
    assert err.value.field == "node.data_dir"
