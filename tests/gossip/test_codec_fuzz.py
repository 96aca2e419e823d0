"""scripts/fuzz_gossip.py's datagram mix, a few thousand in-process (the script sends 100,000 to a real node)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_gossip.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_gossip", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_fuzzed_datagram_opens_or_is_rejected_with_a_reason() -> None:
    outcomes = _script().fuzz_in_process(5000, seed=3)  # any other exception fails the test
    assert sum(outcomes.values()) == 5000
    rejected = {key.split(":", 1)[1] for key in outcomes if key.startswith("rejected:")}
    assert {"bad_mac", "unknown_key", "replayed", "malformed", "too_short"} <= rejected
    assert outcomes["opened"] < 100  # authentic packets only: the one replayed packet's first copy, lucky bodies
