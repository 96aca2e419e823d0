#!/usr/bin/env python3
"""Generation across nodes: what the coordinator adds, and answers through a node that does not generate.

    .venv/bin/python scripts/bench_generation.py                 # starts 2 nodes in a temp dir
    .venv/bin/python scripts/bench_generation.py --requests 60 --json out.json

Two nodes on loopback: g generates (llama.cpp, the bundled gemma-3-270m), c
only stores and coordinates. Every figure below is measured in this run.

(1) Coordinator overhead. The same generation request (fixed messages, greedy,
    ``--tokens`` tokens) two ways, interleaved request by request so drift in
    the machine's load hits both alike:
      direct:  POST g/_mesh/generate, the generator node's admission + backend,
               read as its msgpack stream (what any coordinator calls);
      routed:  POST c/v1/chat/completions (stream, retrieval off): parse,
               choose a generator (breakers, power of two choices), open the
               stream to g, relay each piece as an SSE chunk.
    Time to first piece and to the end, p50/p99, at 1 and at 16 requests in
    flight, as the client sees them. llama.cpp on a shared 2-core host varies
    by tens of milliseconds from one generation to the next, far more than a
    proxy adds, so the overhead itself ("added") is taken per routed request:
    the coordinator's time from starting to route to the first piece (and to
    the end), minus the generator node's own time from receiving the request
    to its first piece (and to its end), both reported in the final chunk.
    That is the extra hop, the routing and the relaying, with the model's
    variance cancelled. LiteLLM publishes 2/8/13 ms (p50/p95/p99) for its
    proxy; our goal is <= 2 ms p50 and <= 10 ms p99.
(2) /v1/ask streamed through c against the same on g itself: time to first
    token and tokens/s (retrieval included in both).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import msgpack

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshrag.client import MeshClient  # noqa: E402
from meshrag.localcluster import LocalCluster  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write the numbers from 1 to 100, separated by commas."}]
ASK = "What limits the dome's operation in wind?"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def log(message: str) -> None:
    print(f"[bench_generation] {message}", file=sys.stderr, flush=True)


class Timing:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.pieces = 0

    def piece(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.pieces += 1

    def done(self) -> dict[str, float]:
        end = time.perf_counter()
        first = self.first if self.first is not None else end
        return {"ttft_ms": (first - self.started) * 1000, "total_ms": (end - self.started) * 1000, "pieces": self.pieces}


def direct(port: int, tokens: int) -> dict[str, float]:
    """g's /_mesh/generate, read frame by frame (dev mode: no cluster secret)."""
    body = msgpack.packb({"messages": MESSAGES, "max_tokens": tokens, "temperature": 0.0, "stop": [], "continuation": "", "model": ""})
    timing = Timing()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", "/_mesh/generate", body, {"Content-Type": "application/msgpack"})
        response = connection.getresponse()
        assert response.status == 200, response.read()
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = response.read1(65536)
            if not data:
                break
            unpacker.feed(data)
            for frame in unpacker:
                if "p" in frame:
                    timing.piece()
                elif "error" in frame:
                    raise RuntimeError(frame["error"])
    finally:
        connection.close()
    return timing.done()


def routed(port: int, tokens: int, model: str) -> dict[str, float]:
    """c's /v1/chat/completions, streamed, retrieval off: one SSE chunk per piece."""
    body = json.dumps({"model": model, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "stream": True, "retrieval": False})
    timing = Timing()
    inside: dict[str, float] = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200, response.read()
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices", [])):
                timing.piece()
            if "meshrag" in chunk:  # the final chunk: both nodes' own timings of this request
                inside = chunk["meshrag"]["generation"]["timings"]
    finally:
        connection.close()
    measured = timing.done()
    measured["added_first_ms"] = inside["coordinator_first_piece_ms"] - inside["generator_first_piece_ms"]
    measured["added_total_ms"] = inside["coordinator_total_ms"] - inside["generator_total_ms"]
    return measured


def paired(g: int, c: int, model: str, tokens: int, requests: int, in_flight: int) -> dict[str, Any]:
    """``requests`` of each kind, ``in_flight`` clients each alternating direct and routed."""
    results: dict[str, list[dict[str, float]]] = {"direct": [], "routed": []}
    lock = threading.Lock()

    def client(worker: int) -> None:
        for i in range(requests // in_flight):
            order: list[tuple[str, Callable[[], dict[str, float]]]] = [
                ("direct", lambda: direct(g, tokens)), ("routed", lambda: routed(c, tokens, model)),
            ]
            for name, call in order if (i + worker) % 2 == 0 else reversed(order):
                measured = call()
                with lock:
                    results[name].append(measured)

    with ThreadPoolExecutor(in_flight) as pool:
        for future in [pool.submit(client, w) for w in range(in_flight)]:
            future.result()
    summary: dict[str, Any] = {"in_flight": in_flight}
    for name, rows in results.items():
        summary[name] = {
            "n": len(rows),
            **{f"{key}_p{q}": round(percentile([r[key] for r in rows], q), 2) for key in ("ttft_ms", "total_ms") for q in (50, 99)},
            "pieces_p50": statistics.median(r["pieces"] for r in rows),
        }
    summary["end_to_end_difference_ms"] = {
        key: round(summary["routed"][key] - summary["direct"][key], 2)
        for key in ("ttft_ms_p50", "ttft_ms_p99", "total_ms_p50", "total_ms_p99")
    }
    routed_rows = results["routed"]
    summary["added_ms"] = {
        f"{key}_p{q}": round(percentile([r[f"added_{key}_ms"] for r in routed_rows], q), 3)
        for key in ("first", "total") for q in (50, 99)
    }
    return summary


def ask_figures(url: str, repeats: int, tokens: int) -> dict[str, float]:
    rows = []
    client = MeshClient(url, timeout=300)
    for _ in range(repeats):
        timing = Timing()
        for event, _data in client.ask_stream(ASK, k=3, max_tokens=tokens):
            if event == "token":
                timing.piece()
        done = timing.done()
        decode_s = max(1e-6, (done["total_ms"] - done["ttft_ms"]) / 1000)
        rows.append({**done, "tokens_per_s": (done["pieces"] - 1) / decode_s})
    return {
        "ttft_ms_p50": round(percentile([r["ttft_ms"] for r in rows], 50), 1),
        "tokens_per_s_p50": round(percentile([r["tokens_per_s"] for r in rows], 50), 1),
        "pieces_p50": statistics.median(r["pieces"] for r in rows),
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"coordinator overhead (tokens={report['settings']['tokens']}, requests per kind={report['settings']['requests']})",
             f"{'in flight':>9} | {'path':>6} | {'ttft p50':>9} {'p99':>9} | {'total p50':>9} {'p99':>9}"]
    for row in report["overhead"]:
        for path in ("direct", "routed"):
            r = row[path]
            lines.append(f"{row['in_flight']:>9} | {path:>6} | {r['ttft_ms_p50']:>9.2f} {r['ttft_ms_p99']:>9.2f} | {r['total_ms_p50']:>9.2f} {r['total_ms_p99']:>9.2f}")
        a = row["added_ms"]
        lines.append(f"{'':>9} | {'added':>6} | {a['first_p50']:>9.3f} {a['first_p99']:>9.3f} | {a['total_p50']:>9.3f} {a['total_p99']:>9.3f}"
                     "   (per request: the coordinator's own time minus the generator node's own)")
    ask = report["ask"]
    lines.append("/v1/ask streamed (retrieval + generation)")
    for where in ("generator_node", "non_generator_node"):
        a = ask[where]
        lines.append(f"  {where:>20}: ttft p50 {a['ttft_ms_p50']:.1f} ms, {a['tokens_per_s_p50']:.1f} tokens/s")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48, help="requests of each kind per concurrency level (default 48)")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per generation (default 8)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--ask-repeats", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the report here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meshrag-bench-gen-") as work:
        # g: every role; c: storage + coordinator (no model). Queue big enough for 32 in flight.
        cluster = LocalCluster(Path(work), partitions=8, replicas=1, extra_args=(),
                               env={"MESHRAG_GENERATION_QUEUE_SIZE": "64"})
        try:
            cluster.start(2, node_env={"n2": {"MESHRAG_NODE_ROLES": "storage,coordinator"}})
            g, c = cluster.node("n1"), cluster.node("n2")
            for path in sorted((REPO / "samples" / "corpus").rglob("*.md")):
                MeshClient(c.url).upsert([{"id": path.stem, "text": path.read_text()}])
            cluster.wait_for(lambda: bool(MeshClient(c.url).cluster()["generation"]["generators"]), 60, "c sees the generator")
            model = MeshClient(c.url).cluster()["generation"]["generators"][0]["model"]
            log("warming up")
            for _ in range(3):
                direct(g.port, args.tokens)
                routed(c.port, args.tokens, model)
            overhead = []
            for level in args.concurrency:
                log(f"overhead at {level} in flight")
                overhead.append(paired(g.port, c.port, model, args.tokens, max(args.requests, level), level))
            log("ask through both nodes")
            ask = {
                "generator_node": ask_figures(g.url, args.ask_repeats, 48),
                "non_generator_node": ask_figures(c.url, args.ask_repeats, 48),
            }
        finally:
            cluster.stop()
    report = {
        "settings": {"requests": args.requests, "tokens": args.tokens, "concurrency": args.concurrency},
        "overhead": overhead, "ask": ask,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
