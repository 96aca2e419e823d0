"""The chaos suite end to end on real processes: one short scenario (CI's representative;
`chaos/run all` runs the whole set)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.scenarios import SCENARIOS, RunSettings, run_scenario

REPO = Path(__file__).resolve().parents[2]
RUN = ["bash", str(REPO / "chaos" / "run")]
ENV = {**os.environ, "PYTHON": sys.executable}


def test_the_list_names_every_scenario() -> None:
    listed = subprocess.run([*RUN, "--list"], capture_output=True, text=True, check=True, env=ENV)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(SCENARIOS)


def test_an_unknown_scenario_is_refused_with_a_pointer_to_the_list() -> None:
    refused = subprocess.run([*RUN, "kill-everything"], capture_output=True, text=True, env=ENV)
    assert refused.returncode == 2 and "chaos/run --list" in refused.stderr


@pytest.mark.slow
def test_kill_one_under_load_loses_nothing_and_converges() -> None:
    report = run_scenario(SCENARIOS["kill-one"], RunSettings(duration_s=20.0, seed=3), progress=lambda line: None)
    assert report["passed"], report
    assert report["writes"]["ok"] > 50 and report["keys_checked"] > 0
    assert [f["fault"].split()[0] for f in report["faults"]] == ["kill"]
    assert report["writes"]["during_faults"]["ops"] > 0
    assert all(count == 0 for count in report["anomalies"].values())
    assert report["membership_agreed_after_heal_s"] is not None and report["membership_agreed_after_heal_s"] <= 30


def test_trials_are_summed_into_one_line() -> None:
    from chaos.cli import trials_summary

    def report(passed: bool, lost: int, converged: float | None) -> dict:
        return {"passed": passed, "anomalies": {"lost": lost, "stale": 0}, "faults": [{}, {}],
                "writes": {"ok": 10, "failed": 1, "unknown": 2}, "converged_s": converged}

    line = trials_summary([report(True, 0, 0.3), report(False, 2, None), report(True, 0, 1.5)])
    assert line.startswith("trials: 2/3 passed; faults 6; writes ok 30, failed 3, unknown 6;")
    assert "'lost': 2" in line and line.endswith("slowest convergence 1.5 s")
