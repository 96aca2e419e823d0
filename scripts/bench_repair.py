#!/usr/bin/env python3
"""Benchmark one anti-entropy pass over a large partition (not a test).

    .venv/bin/python scripts/bench_repair.py                 # 10,000 documents, 5 rounds
    .venv/bin/python scripts/bench_repair.py --docs 10000 --rounds 5 --json

Two real storage engines (in this process, in a temporary directory) hold one
partition of ``--docs`` identical documents (one 384-dimensional chunk each);
then, each round, one document changes on replica b and replica a runs a real
Repairer pass (cluster/repair.py) that pulls it. The pass runs twice per
round, against the same engines, with two digest paths:

* full rehash, the in-run baseline, as commit be0c157 did it: every roots
  request and every sync read all of the partition's digest entries from
  SQLite and hashed them (be0c157's bucket_hashes, copied below), on both
  sides;
* incremental, as nodes do now: bucket hashes are kept by the partition with
  every write, a root is 64 rows, and a sync reads only the entries of the
  differing bucket.

Reported: median (and min) pass time of each path and their ratio, for one
changed document and for a pass with nothing to do (roots only). The peer
side is called in-process (no HTTP), so the figures are the digest and
storage work of a pass, which in be0c157 ran on the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshrag.cluster.messages import wire_size  # noqa: E402
from meshrag.cluster.repair import RateLimiter, Repairer, differing_buckets, root_hash  # noqa: E402
from meshrag.store.digest import bucket_of  # noqa: E402
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable  # noqa: E402
from meshrag.store.engine import StorageEngine  # noqa: E402
from meshrag.store.types import ChunkWrite, DigestEntry, DocumentWrite  # noqa: E402
from tests.cluster.test_repair import Replica  # noqa: E402

DIM = 384
PID = 0


def before_bucket_hashes(entries: Sequence[DigestEntry], buckets: int = 64) -> list[str]:
    """be0c157's cluster/repair.py bucket_hashes, verbatim: the baseline's cost."""
    digests = [hashlib.blake2b(digest_size=8) for _ in range(buckets)]
    filled = [False] * buckets
    for entry in sorted(entries, key=lambda e: e.doc_id):
        b = bucket_of(entry.doc_id, buckets)
        digests[b].update(f"{entry.doc_id}\x00{entry.version}\x00{int(entry.deleted)}\x00{entry.content_hash}\x01".encode())
        filled[b] = True
    return [d.hexdigest() if used else "" for d, used in zip(digests, filled)]


# ------------------------------------------------------------------ the two digest paths
class Digest(Protocol):
    def hashes(self, engine: StorageEngine) -> list[str]: ...
    def entries(self, engine: StorageEngine, buckets: list[int]) -> list[DigestEntry]: ...
    def answer(self, engine: StorageEngine, theirs: list[str]) -> tuple[list[int], list[DigestEntry]]: ...


class FullRehash:
    """be0c157: a root or a sync reads and hashes every entry (the local sync read them once)."""

    def __init__(self) -> None:
        self._read: dict[int, list[DigestEntry]] = {}

    def hashes(self, engine: StorageEngine) -> list[str]:
        entries = self._read[id(engine)] = engine.digest_entries(PID)
        return before_bucket_hashes(entries)

    def entries(self, engine: StorageEngine, buckets: list[int]) -> list[DigestEntry]:
        wanted = set(buckets)
        return [e for e in self._read.pop(id(engine)) if bucket_of(e.doc_id) in wanted]

    def answer(self, engine: StorageEngine, theirs: list[str]) -> tuple[list[int], list[DigestEntry]]:
        differing = differing_buckets(self.hashes(engine), theirs)
        return differing, self.entries(engine, differing)


class Incremental:
    """Now: buckets kept by the partition with every write; entries read by bucket."""

    def hashes(self, engine: StorageEngine) -> list[str]:
        return engine.bucket_hashes(PID)

    def entries(self, engine: StorageEngine, buckets: list[int]) -> list[DigestEntry]:
        return engine.digest_entries(PID, buckets)

    def answer(self, engine: StorageEngine, theirs: list[str]) -> tuple[list[int], list[DigestEntry]]:
        differing = differing_buckets(self.hashes(engine), theirs)
        return differing, self.entries(engine, differing) if differing else []


class Local(Replica):
    """Replica a as repair.py's LocalReplica (the tests' in-process one), digests by ``path``."""

    def __init__(self, root: Path, name: str, path: Digest) -> None:
        super().__init__(root, name, partitions=1, dim=DIM)
        self.path = path

    async def hashes(self, pid: int) -> list[str]:
        return self.path.hashes(self.engine)

    async def entries(self, pid: int, buckets: list[int]) -> list[DigestEntry]:
        return self.path.entries(self.engine, buckets)


class Peer:
    """Replica b's /_mesh/repair routes (api/mesh_handlers.py's handle_roots/entries/fetch), in-process."""

    def __init__(self, engine: StorageEngine, digest: Digest) -> None:
        self.engine = engine
        self.digest = digest

    async def roots(self, node_id: str, pids: list[int]) -> dict[int, str]:
        return {pid: root_hash(self.digest.hashes(self.engine)) for pid in pids}

    async def entries(self, node_id: str, pid: int, hashes: list[str]) -> tuple[list[int], list[DigestEntry]]:
        return self.digest.answer(self.engine, hashes)

    async def fetch(self, node_id: str, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        return self.engine.partition(pid).export(doc_ids)

    async def push(self, node_id: str, docs: list[DocumentWrite]) -> None:
        self.engine.upsert(docs)


# ------------------------------------------------------------------ the run
def document(i: int, version: int, rng: np.random.Generator) -> DocumentWrite:
    text = f"document {i} version {version}: flow over a swept wing at supersonic speed, boundary layer {i % 97}"
    vector = rng.standard_normal(DIM).astype(np.float32)
    chunk = ChunkWrite(f"doc{i:05d}#{version:x}.0", 0, text, 0, len(text), vector / np.linalg.norm(vector))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return DocumentWrite(f"doc{i:05d}", version, digest, text, {"n": i}, (chunk,))


def load(engines: Sequence[StorageEngine], count: int) -> float:
    rng = np.random.default_rng(7)
    docs = [document(i, 1, rng) for i in range(count)]
    started = time.perf_counter()
    for engine in engines:
        for start in range(0, count, 500):
            engine.upsert(docs[start : start + 500])
    return time.perf_counter() - started


async def timed_pass(a: Local, b: StorageEngine, digest: Digest) -> tuple[float, int]:
    ring = Ring(RingTable(RingEntry(n, n, "z", RingStatus.NORMAL, 1) for n in ("a", "b")), 1, 2)
    a.path = digest
    repairer = Repairer("a", lambda: ring, lambda n: True, a, Peer(b, digest), RateLimiter(0), wire_size, lambda s: None)
    started = time.perf_counter()
    progress = await repairer.run_pass("bench")
    return time.perf_counter() - started, progress.docs_in


async def measure(a: Local, b: StorageEngine, docs: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {"one_changed": {"full": [], "incremental": []}, "in_sync": {"full": [], "incremental": []}}
    rng = np.random.default_rng(11)
    version = 2
    for round_ in range(rounds):
        for name, digest in (("full", FullRehash()), ("incremental", Incremental())):
            b.upsert([document((round_ * 7919 + version) % docs, version, rng)])
            version += 1
            seconds, pulled = await timed_pass(a, b, digest)
            assert pulled == 1, f"{name}: pulled {pulled} documents, expected the one changed"
            times["one_changed"][name].append(seconds)
            seconds, pulled = await timed_pass(a, b, digest)
            assert pulled == 0
            times["in_sync"][name].append(seconds)
    assert a.engine.bucket_hashes(PID) == b.bucket_hashes(PID)
    return times


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(samples) * 1000, 2), "min_ms": round(min(samples) * 1000, 2)}


def run(docs: int, rounds: int, root: Path) -> dict[str, Any]:
    a, b = Local(root, "a", Incremental()), Replica(root, "b", partitions=1, dim=DIM)
    try:
        load_s = load([a.engine, b.engine], docs)
        times = asyncio.run(measure(a, b.engine, docs, rounds))
    finally:
        a.engine.close()
        b.engine.close()
    report: dict[str, Any] = {"documents": docs, "rounds": rounds, "load_s": round(load_s, 1)}
    for scenario, by_path in times.items():
        full, incremental = summary(by_path["full"]), summary(by_path["incremental"])
        report[scenario] = {"full": full, "incremental": incremental,
                            "ratio": round(full["median_ms"] / max(incremental["median_ms"], 1e-3), 1)}
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"repair pass over one partition of {report['documents']} documents on 2 replicas "
        f"(median of {report['rounds']} rounds; min in brackets)",
        f"{'scenario':<22}{'full rehash (be0c157)':>24}{'incremental':>18}{'ratio':>9}",
    ]
    for scenario, label in (("one_changed", "1 document changed"), ("in_sync", "nothing changed")):
        row = report[scenario]
        full, inc = row["full"], row["incremental"]
        lines.append(f"{label:<22}{full['median_ms']:>14.2f} ms ({full['min_ms']:.2f}){inc['median_ms']:>9.2f} ms ({inc['min_ms']:.2f})"
                     f"{row['ratio']:>8.1f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-repair-") as tmp:
        report = run(args.docs, args.rounds, Path(tmp))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
