#!/usr/bin/env python3
# Run through chaos/run, which picks the project's virtual environment.
"""The chaos suite: break a real local cluster on purpose and check that nothing was lost.

    chaos/run SCENARIO [--seed N] [--duration S] [--nodes K] [--report FILE]
    chaos/run all [--seed N] [--report FILE]
    chaos/run kill-restart --trials 100 --consistency quorum   # seeds 1..100, totals at the end
    chaos/run --list
    chaos/run --cleanup          # remove namespaces and links that crashed network runs left behind

Each scenario starts K `meshrag start` processes on loopback (chaos/launcher.py),
runs a recorded workload of upserts, updates, deletes, session reads and
searches through random live nodes at QUORUM and ONE (chaos/workload.py),
injects its faults (chaos/nemesis.py), heals, waits for convergence and judges
the history and every replica's SQLite files (chaos/checker.py). A summary
table goes to the terminal, the whole report to --report as JSON. Exit status
0 when every scenario passed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chaos.netns import NetworkUnavailable, require_root, sweep  # noqa: E402
from chaos.scenarios import MEMBERSHIP_AGREEMENT_S, SCENARIOS, RunSettings, run_scenario  # noqa: E402
from chaos.workload import WorkloadSettings  # noqa: E402


def table(reports: list[dict]) -> str:
    head = (f"{'scenario':<18} {'ops ok/failed/unknown':>24} {'faults':>6} {'avail. in faults':>16} "
            f"{'p50/p99 ms in faults':>20} {'converged':>9}  verdict")
    lines = [head, "-" * len(head)]
    for r in reports:
        w, during = r["writes"], r["writes"]["during_faults"]
        ok_share = "-" if during["ok_share"] is None else f"{100 * during['ok_share']:.1f}%"
        latency = "-" if during["p50_ms"] is None else f"{during['p50_ms']}/{during['p99_ms']}"
        converged = "no" if r["converged_s"] is None else f"{r['converged_s']} s"
        bad = {k: v for k, v in r["anomalies"].items() if v}
        verdict = "PASS" if r["passed"] else "FAIL " + (", ".join(f"{k} {v}" for k, v in bad.items()) or _late(r))
        lines.append(f"{r['scenario']:<18} {w['ok']:>10}/{w['failed']}/{w['unknown']:<6} {len(r['faults']):>13} {ok_share:>16} "
                     f"{latency:>20} {converged:>9}  {verdict}")
    lines.append("ops: writes (generator-kill: asks; kill-during-ingest: documents)")
    return "\n".join(lines)


def _late(report: dict) -> str:
    agreed = report.get("membership_agreed_after_heal_s")
    if report["converged_s"] is not None and (agreed is None or agreed > MEMBERSHIP_AGREEMENT_S):
        return f"(membership views agreed {'never' if agreed is None else f'{agreed} s after the heal'})"
    return "(not converged)"


def trials_summary(reports: list[dict]) -> str:
    """Totals over repeated runs: how many passed, and every anomaly and write outcome summed."""
    anomalies: dict[str, int] = {}
    for r in reports:
        for kind, count in r["anomalies"].items():
            anomalies[kind] = anomalies.get(kind, 0) + count
    writes = {key: sum(r["writes"][key] for r in reports) for key in ("ok", "failed", "unknown")}
    faults = sum(len(r["faults"]) for r in reports)
    converged = [r["converged_s"] for r in reports if r["converged_s"] is not None]
    return (f"trials: {sum(r['passed'] for r in reports)}/{len(reports)} passed; faults {faults}; "
            f"writes ok {writes['ok']}, failed {writes['failed']}, unknown {writes['unknown']}; "
            f"anomalies {anomalies}; slowest convergence {max(converged, default=None)} s")


def _workload(consistency: str) -> WorkloadSettings:
    return WorkloadSettings() if consistency == "mixed" else WorkloadSettings(consistencies=(consistency,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", help="a scenario name, or all")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--cleanup", action="store_true",
                        help="remove the namespaces, links and node processes of network runs whose runner died (root)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, help="seconds of workload (default: the scenario's)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    parser.add_argument("--consistency", choices=("mixed", "quorum", "one", "all"), default="mixed",
                        help="the workload's write and read consistency (mixed: QUORUM and ONE at random)")
    parser.add_argument("--trials", type=int, default=1, help="run each scenario this many times, seeds --seed, --seed+1, ...")
    args = parser.parse_args(argv)
    if args.cleanup:
        return cleanup()
    if args.list or not args.scenario:
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<18} {scenario.duration_s:>4.0f} s  {scenario.summary}")
        return 0 if args.list else 2
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"no scenario {unknown[0]!r}; chaos/run --list names them")
    try:
        if any(SCENARIOS[name].network == "netns" for name in names):
            require_root()  # before any scenario runs: `all` would otherwise stop halfway
        reports = _run(names, args)
    except NetworkUnavailable as exc:
        print(f"chaos/run: {exc}", file=sys.stderr)
        return 2
    print(table(reports))
    if args.trials > 1:
        print(trials_summary(reports))
    if args.report:
        args.report.write_text(json.dumps({"reports": reports}, indent=2))
    return 0 if all(r["passed"] for r in reports) else 1


def _run(names: list[str], args: argparse.Namespace) -> list[dict]:
    reports = []
    for trial in range(args.trials):
        settings = RunSettings(nodes=args.nodes, seed=args.seed + trial, duration_s=args.duration,
                               workload=_workload(args.consistency))
        for name in names:
            report = run_scenario(SCENARIOS[name], settings, progress=lambda line: print(line, file=sys.stderr, flush=True))
            reports.append(report)
            if args.trials > 1:
                print(f"[trial {trial + 1}/{args.trials}, seed {settings.seed}] {name}: {'PASS' if report['passed'] else 'FAIL'}",
                      file=sys.stderr, flush=True)
    return reports


def cleanup() -> int:
    """``--cleanup``: the sweep every network run starts with, by hand."""
    try:
        require_root()
        removed = sweep()
    except (OSError, RuntimeError) as exc:
        print(f"chaos/run --cleanup: {exc}", file=sys.stderr)
        return 2
    print("removed: " + " ".join(removed) if removed else "nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
