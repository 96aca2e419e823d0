#!/usr/bin/env python3
"""Chaos check for generation: answers keep coming while a generator dies and comes back.

    .venv/bin/python chaos/generator_kill.py [--clients 4] [--healthy-s 20] [--down-s 20] [--after-s 30]

Three nodes on loopback: g1 and g2 generate (llama.cpp, the bundled model),
c stores and coordinates only. ``--clients`` threads stream /v1/ask through c
without pause. After ``--healthy-s`` seconds g1 is killed with -9 (whatever it
was generating is cut mid-stream); ``--down-s`` later it is restarted on the
same data directory; the load goes on ``--after-s`` more seconds.

Every request is recorded: when it started, when its first token came, how it
ended (done, done after a failover, error event, or an HTTP error before any
token), and which generator finished it. c's view of g1's breaker is polled
every 100 ms.

Acceptance (exit status 0 on pass, 1 on failure):
1. No request that had not started streaming when g1 died fails: each is
   retried on g2 by the router before its first token.
2. Every stream cut mid-way either finishes through g2 (its done event carries
   a failover note) or ends with a typed error event; none ends bare.
3. c's breaker for g1 opens within 2 s of the kill (or gossip declares g1 dead
   first, which takes it out of the candidates just the same). The kill waits
   until g1 is generating while a client is mid-stream, so it cuts an answer.
4. After the restart, g1 generates again for c's clients within ``--after-s``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chaos.checker import Op, availability_report  # noqa: E402
from meshrag.client import MeshClient, MeshClientError  # noqa: E402
from meshrag.localcluster import LocalCluster  # noqa: E402

QUESTIONS = [
    "What limits the dome's operation in wind?",
    "Who founded the observatory?",
    "How is the telescope calibrated?",
    "What does this handbook cover?",
]


@dataclass
class Outcome:
    started: float
    first_token: float | None = None
    ended: float = 0.0
    result: str = ""  # done | failover | error_event | http_error | bare_end
    detail: str = ""
    generator: str = ""


def ask_once(url: str, question: str, max_tokens: int, outcome: Outcome) -> Outcome:
    try:
        for event, data in MeshClient(url, timeout=120).ask_stream(question, k=3, max_tokens=max_tokens):
            if event == "token" and outcome.first_token is None:
                outcome.first_token = time.monotonic()
            elif event == "done":
                generation = data.get("generation") or {}
                outcome.result = "failover" if generation.get("failover") else "done"
                outcome.generator = generation.get("generator", "")
            elif event == "error":
                outcome.result, outcome.detail = "error_event", data["error"]["code"]
    except MeshClientError as exc:
        outcome.result = "bare_end" if exc.code == "stream_ended" else "http_error"
        outcome.detail = f"{exc.status} {exc.code}: {exc.message}"
    outcome.ended = time.monotonic()
    return outcome


def breaker_state(c_url: str, g1_id: str) -> str:
    view = MeshClient(c_url, timeout=5).cluster()["generation"]
    for generator in view["generators"]:
        if generator["id"] == g1_id:
            return generator["breaker"]
    return "not a candidate (gossip: not alive)"


def wait_for_a_stream_on(g1: Any, outcomes: list[Outcome], lock: threading.Lock, timeout_s: float) -> None:
    """Until g1 is emitting tokens while some client is mid-stream: the kill should cut an
    answer that g1 is writing. An active generation alone may still be reading its prompt,
    and then the stream that is mid-way belongs to g2."""
    deadline = time.monotonic() + timeout_s
    last_tokens = None
    while time.monotonic() < deadline:
        with lock:
            streaming = any(o.first_token is not None and not o.result for o in outcomes)
        generator = MeshClient(g1.url, timeout=5).cluster().get("generator") or {}
        tokens = generator.get("tokens_generated")
        if streaming and generator.get("active") and last_tokens is not None and tokens is not None and tokens > last_tokens:
            return
        last_tokens = tokens
        time.sleep(0.05)


def run(args: argparse.Namespace, cluster: LocalCluster) -> dict[str, Any]:
    cluster.start(3, node_env={"n3": {"MESHRAG_NODE_ROLES": "storage,coordinator"}})
    g1, g2, c = cluster.nodes
    for path in sorted((REPO / "samples" / "corpus").rglob("*.md")):
        MeshClient(c.url).upsert([{"id": path.stem, "text": path.read_text()}])
    cluster.wait_for(lambda: len(MeshClient(c.url).cluster()["generation"]["generators"]) == 2, 60, "c sees both generators")
    ids = {MeshClient(n.url).cluster()["node"]["id"]: n.name for n in (g1, g2)}
    g1_id = next(i for i, name in ids.items() if name == "n1")
    outcomes: list[Outcome] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        i = worker
        while not stop.is_set():
            outcome = Outcome(started=time.monotonic())
            with lock:
                outcomes.append(outcome)  # visible while in flight (wait_for_a_stream_on)
            ask_once(c.url, QUESTIONS[i % len(QUESTIONS)], args.max_tokens, outcome)
            i += 1

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(args.clients)]
    for thread in threads:
        thread.start()
    time.sleep(args.healthy_s)
    wait_for_a_stream_on(g1, outcomes, lock, timeout_s=args.healthy_s)
    killed_at = time.monotonic()
    g1.kill9()
    print(f"[chaos] kill -9 g1 at {killed_at:.1f}", file=sys.stderr)
    timeline: list[tuple[float, str]] = []
    while time.monotonic() - killed_at < args.down_s:
        state = breaker_state(c.url, g1_id)
        if not timeline or timeline[-1][1] != state:
            timeline.append((time.monotonic() - killed_at, state))
        time.sleep(0.1)
    restarted_at = time.monotonic()
    g1.start().wait_ready()
    ready_at = time.monotonic()
    print(f"[chaos] g1 ready again {ready_at - restarted_at:.1f} s after its restart", file=sys.stderr)
    time.sleep(args.after_s)
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    return {"outcomes": outcomes, "killed_at": killed_at, "restarted_at": restarted_at, "ready_at": ready_at,
            "timeline": timeline, "g1": g1_id, "ids": ids}


def judge(report: dict[str, Any]) -> list[str]:
    outcomes: list[Outcome] = report["outcomes"]
    killed = report["killed_at"]
    failures = []
    not_streaming = [o for o in outcomes if o.ended > killed and (o.first_token is None or o.first_token > killed)]
    bad = [o for o in not_streaming if o.result in ("http_error", "bare_end", "error_event")]
    if bad:
        failures.append(f"{len(bad)} requests that had not started streaming failed: {[o.detail for o in bad][:3]}")
    cut = [o for o in outcomes if o.first_token is not None and o.first_token < killed < o.ended]
    bare = [o for o in cut if o.result not in ("failover", "done", "error_event")]
    if bare:
        failures.append(f"{len(bare)} cut streams ended without done or a typed error: {[o.result for o in bare]}")
    opened = [t for t, state in report["timeline"] if state in ("open", "not a candidate (gossip: not alive)")]
    if not opened or opened[0] > 2.0:
        failures.append(f"g1 was still chosen more than 2 s after the kill: {report['timeline']}")
    back = [o for o in outcomes if o.started > report["restarted_at"] and o.generator == report["g1"]]
    if not back:
        failures.append("g1 generated nothing for c after its restart")
    return failures


def render(report: dict[str, Any], failures: list[str]) -> str:
    outcomes: list[Outcome] = report["outcomes"]
    killed = report["killed_at"]
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    cut = [o for o in outcomes if o.first_token is not None and o.first_token < killed < o.ended]
    ttft = [(o.first_token - o.started) * 1000 for o in outcomes if o.first_token is not None]
    lines = [
        f"requests: {len(outcomes)}  outcomes: {counts}",
        f"streams cut by the kill: {len(cut)} -> {[o.result for o in cut]}",
        f"time to first token p50 {statistics.median(ttft):.0f} ms" if ttft else "no tokens at all",
        "c's view of g1 after the kill (s: state): " + ", ".join(f"{t:.1f}: {s}" for t, s in report["timeline"]),
        f"after the restart, g1 finished {sum(1 for o in outcomes if o.started > report['restarted_at'] and o.generator == report['g1'])} answers",
        "PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures),
    ]
    return "\n".join(lines)


def run_as_scenario(seed: int, duration_s: float, progress: Callable[[str], None]) -> dict[str, Any]:
    """`chaos/run generator-kill`: this check, with the duration split into load before the kill,
    g1 down and load after its restart, reported as every scenario is (asks as the operations)."""
    args = argparse.Namespace(clients=4, healthy_s=duration_s * 0.3, down_s=duration_s * 0.25, after_s=duration_s * 0.3,
                              max_tokens=96)
    progress(f"[generator-kill] starting 2 generators and a coordinator (seed {seed} unused: the kill waits for a cut stream)")
    report = _with_cluster(args)
    failures = judge(report)
    asks = [Op(i, 0, "ask", "", o.started, o.ended, _outcome(o.result), error=o.detail) for i, o in enumerate(report["outcomes"])]
    back = [o.ended for o in report["outcomes"] if o.started > report["restarted_at"] and o.generator == report["g1"]]
    return {
        "scenario": "generator-kill", "seed": seed, "nodes": 3, "duration_s": duration_s,
        "faults": [{"fault": "kill -9 g1 while it streams an answer", "heal": "restarted g1",
                    "start": report["killed_at"], "end": report["ready_at"]}],
        "writes": availability_report(asks, [(report["killed_at"], report["ready_at"])]),
        "converged_s": round(min(back) - report["ready_at"], 1) if back else None,
        "anomalies": {"generation": len(failures)}, "examples": failures, "summary": render(report, failures),
        "passed": not failures,
    }


def _outcome(result: str) -> str:
    """An ask's outcome in the checker's terms: an answer (failover included) is ok, an error is a
    clean failure, and a stream that ended bare left the client not knowing."""
    return {"done": "ok", "failover": "ok", "bare_end": "unknown"}.get(result, "failed")


def _with_cluster(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshrag-chaos-gen-") as work:
        cluster = LocalCluster(Path(work), partitions=8, replicas=2, extra_args=(),
                               env={"MESHRAG_GENERATION_BREAKER_OPEN_S": "2", "MESHRAG_GENERATION_STALL_TIMEOUT_S": "5"})
        try:
            return run(args, cluster)
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--healthy-s", type=float, default=30.0, help="load before the kill (then until g1 is mid-stream, at most as long again)")
    parser.add_argument("--down-s", type=float, default=20.0)
    parser.add_argument("--after-s", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    report = _with_cluster(args)
    failures = judge(report)
    print(render(report, failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
