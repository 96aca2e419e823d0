#!/usr/bin/env python3
"""Fuzz the public API: 100,000 bodies through the real app in-process, then a sample over
real HTTP to a real node (`meshrag start --dev`, storage and coordinator roles).

    .venv/bin/python scripts/fuzz_api.py                      # 100,000 in-process + 10,000 to a real node
    .venv/bin/python scripts/fuzz_api.py --count 5000 --real 0 --seed 7

Bodies come from tests/api/fuzz_bodies.py (broken valid bodies, random bytes, random trees),
the app and its recording stub node from tests/api/fuzz_app.py. Reported as JSON: bodies, status
counts, 4xx by code, 5xx (must be 0), crashes (no answer or not the error shape; must be 0),
broken bodies accepted (must be 0), what reached the stub's storage (only from bodies allowed
to be valid), and for the real node the documents and tombstones it stores afterwards (must
be 0: only bodies that must fail are sent to it). Exit status 1 on any finding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from meshrag.localnode import LocalNode  # noqa: E402
from tests.api.fuzz_app import Report, fuzz_config, fuzz_in_process, limits_of, send_all  # noqa: E402
from tests.api.fuzz_bodies import Fuzzer  # noqa: E402

DIM = 384  # the bundled embedder's, for the real node


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


async def _send(url: str, bodies: Any) -> Report:
    report = Report()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await send_all(session, url, bodies, report, concurrency=4)
    return report


def real_node(count: int, seed: int) -> dict[str, Any]:
    config = fuzz_config()
    api = config.api
    env = {"MESHRAG_CLUSTER_PARTITIONS": "4", "MESHRAG_API_MAX_BODY_BYTES": str(api.max_body_bytes),
           "MESHRAG_API_MAX_DOCUMENTS_PER_REQUEST": str(api.max_documents_per_request), "MESHRAG_API_MAX_TEXT_CHARS": str(api.max_text_chars),
           "MESHRAG_API_MAX_K": str(api.max_k), "MESHRAG_GENERATION_MAX_TOKENS": str(config.generation.max_tokens),
           "MESHRAG_OBSERVABILITY_LOG_FORMAT": "text"}
    with tempfile.TemporaryDirectory() as data_dir:
        node = LocalNode(Path(data_dir), name="fuzz-node", env=env, extra_args=["--roles", "storage,coordinator"]).start()
        try:
            node.wait_ready()
            fuzzer = Fuzzer(limits_of(config, DIM), seed=seed)
            bodies = (body for body in iter(fuzzer.one, None) if body.must_fail)
            limited = (body for _, body in zip(range(count), bodies))
            report = asyncio.run(_send(node.url, limited))
            storage = _get(node.url + "/v1/cluster")["storage"]
            ready = _get(node.url + "/ready")["ready"]
        finally:
            node.stop()
    result = report.as_dict()
    result.update(stored_documents=storage["documents"], stored_tombstones=storage["tombstones"], node_ready_after=ready)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="bodies through the in-process app")
    parser.add_argument("--real", type=int, default=10_000, help="bodies that must fail, sent to a real node (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    config = fuzz_config()
    dim = 8  # the stub's vectors: short, so that wrong-length vectors stay cheap
    report, reached = asyncio.run(fuzz_in_process(Fuzzer(limits_of(config, dim), seed=args.seed).bodies(args.count), config, dim))
    result: dict[str, Any] = {"in_process": {**report.as_dict(), "reached_stub": dict(reached)}}
    findings = report.server_errors or report.crashes or report.accepted_must_fail
    if args.real:
        result["real_node"] = real = real_node(args.real, args.seed + 1)
        findings = findings or real["5xx"] or real["crashes"] or real["broken_bodies_accepted"] or real["stored_documents"] \
            or real["stored_tombstones"] or not real["node_ready_after"]
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
