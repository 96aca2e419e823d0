#!/usr/bin/env python3
"""Chaos check: kill -9 a node in the middle of a long ingest, restart it, audit.

    .venv/bin/python chaos/kill_during_ingest.py [--docs 1400] [--seed 1] [--batch-size 8]

Acceptance: after the restart every acknowledged document (its batch got a
200) is found by id with the text that was sent, and by search; no document is
visible with only part of its chunks. Exit status 0 on pass, 1 on failure.

What is checked, after SIGKILL of the node's whole process group at a seeded
random point (a seeded number of acknowledged batches plus a seeded fraction of
a batch's time, so the kill lands while batches are in flight):

1. GET /v1/documents/{id} for every acknowledged document: 200, same text and
   metadata. Required: 100%.
2. Chunk integrity of every visible document, acknowledged or in flight when
   the node died: chunks numbered 0..n-1, each an exact slice of the text, the
   first starting at the text's first non-blank character, the last ending at its
   last, and no gap between neighbours other than whitespace. Required: no
   violations. A document from an unacknowledged batch may be absent; if it is
   present it must be whole.
3. Dense search with each chunk's own text as the query (k=10) must return that
   chunk: this proves its vector reached the usearch index (derived from SQLite
   and rebuilt or caught up after a crash). Required: 100%.
4. BM25 search for each acknowledged document's rarest word (the word that
   occurs in the fewest documents sent, usually in no other) with k=100 must
   return the document: its text reached the full-text index. This tests
   presence, not ranking: every document containing the word is returned
   unless 100 or more do (then the check is inconclusive and counted apart).
   Ranking is reported for information only: the document's 5 rarest words as
   a query, is it in the top 10? (BM25 statistics are per partition; with a few
   documents per partition they say little, and a document alone in its
   partition scores near zero even for words only it contains.)
5. No search hit points to a document that GET cannot return (orphan chunks).

The core, run_kill_during_ingest(), is importable (tests/test_chaos_kill.py runs
it on a few hundred documents).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshrag.client import MeshClient, MeshClientError  # noqa: E402
from meshrag.localnode import LocalNode  # noqa: E402
from meshrag.sources import SourceDocument, iter_documents  # noqa: E402

CRANFIELD = REPO.parent / "shared" / "data" / "cranfield" / "corpus.jsonl"
RARE_WORDS = 5
FTS_PRESENCE_K = 100
_WORD = re.compile(r"[a-z]{4,}")
SEARCH_K = 10


@dataclass
class IngestLog:
    """What the ingest threads saw: batches acknowledged, and batches whose outcome is unknown."""

    acknowledged: list[SourceDocument] = field(default_factory=list)
    unknown: list[SourceDocument] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def acknowledged_batches(self) -> int:
        with self.lock:
            return len(self.batch_seconds)


@dataclass
class ChaosReport:
    seed: int
    documents_total: int
    kill_after_batches: int = 0
    killed_at_s: float = 0.0
    acknowledged: int = 0
    in_flight: int = 0
    in_flight_visible: int = 0
    get_ok: int = 0
    chunks_checked: int = 0
    dense_found: int = 0
    fts_checked: int = 0
    fts_found: int = 0
    fts_inconclusive: int = 0
    bm25_top10: int = 0
    restart_ready_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and self.acknowledged > 0

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}: killed after {self.kill_after_batches} acknowledged batches, {self.killed_at_s:.1f} s into the ingest",
            f"documents: {self.documents_total} to send, {self.acknowledged} acknowledged, {self.in_flight} in flight at the kill "
            f"({self.in_flight_visible} of them visible after restart, all checked whole)",
            f"restart ready in {self.restart_ready_s:.1f} s",
            f"GET by id:       {self.get_ok}/{self.acknowledged} acknowledged documents found intact",
            f"dense by chunk:  {self.dense_found}/{self.chunks_checked} chunks found by their own text (k={SEARCH_K})",
            f"bm25 presence:   {self.fts_found}/{self.fts_checked} documents found by their rarest word (k={FTS_PRESENCE_K}; "
            f"{self.fts_inconclusive} inconclusive)",
            f"bm25 ranking:    {self.bm25_top10}/{self.fts_checked} documents in the top {SEARCH_K} for their {RARE_WORDS} rarest words "
            "(information only)",
        ]
        lines += [f"note: {n}" for n in self.notes]
        shown = self.problems[:20]
        lines += [f"PROBLEM: {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"... and {len(self.problems) - len(shown)} more problems")
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


# ---------------------------------------------------------------- integrity rules


def chunk_problems(text: str, chunks: Sequence[dict[str, Any]]) -> list[str]:
    """Why these chunks do not cover `text` completely (empty list: they do)."""
    if not chunks:
        return ["no chunks"] if text.strip() else []
    problems: list[str] = []
    ordered = sorted(chunks, key=lambda c: c["seq"])
    if [c["seq"] for c in ordered] != list(range(len(ordered))):
        problems.append(f"chunk numbers {[c['seq'] for c in ordered]} are not 0..{len(ordered) - 1}")
    for chunk in ordered:
        if text[chunk["start"] : chunk["end"]] != chunk["text"]:
            problems.append(f"chunk {chunk['seq']} is not the slice [{chunk['start']}:{chunk['end']}] of the text")
    first = len(text) - len(text.lstrip())
    last = len(text.rstrip())
    if ordered[0]["start"] > first:
        problems.append(f"text before offset {ordered[0]['start']} is in no chunk")
    if ordered[-1]["end"] < last:
        problems.append(f"text after offset {ordered[-1]['end']} (of {last}) is in no chunk")
    for previous, following in zip(ordered, ordered[1:]):
        gap = text[previous["end"] : following["start"]]
        if following["start"] > previous["end"] and gap.strip():
            problems.append(f"gap between chunks {previous['seq']} and {following['seq']}: {gap[:40]!r}")
    return problems


def rare_words(documents: Sequence[SourceDocument]) -> dict[str, list[str]]:
    """Per document, its RARE_WORDS rarest words across `documents`, rarest first (ties: longer first)."""
    words = {d.id: set(_WORD.findall(d.text.lower())) for d in documents}
    frequency: dict[str, int] = {}
    for vocabulary in words.values():
        for word in vocabulary:
            frequency[word] = frequency.get(word, 0) + 1
    return {
        doc_id: sorted(vocabulary, key=lambda w: (frequency[w], -len(w), w))[:RARE_WORDS]
        for doc_id, vocabulary in words.items()
    }


# ---------------------------------------------------------------- ingest under fire


def _batches(documents: Sequence[SourceDocument], size: int) -> Iterator[list[SourceDocument]]:
    for start in range(0, len(documents), size):
        yield list(documents[start : start + size])


def _ingest_worker(client: MeshClient, batches: Iterator[list[SourceDocument]], batches_lock: threading.Lock, log: IngestLog, stop: threading.Event) -> None:
    """Send batches until none are left or the node stops answering."""
    while not stop.is_set():
        with batches_lock:
            batch = next(batches, None)
        if batch is None:
            return
        started = time.perf_counter()
        try:
            client.upsert([{"id": d.id, "text": d.text, "metadata": d.metadata} for d in batch])
        except MeshClientError as exc:
            with log.lock:
                log.unknown.extend(batch)
                if exc.status != 0:  # anything but "the node went away" is worth reporting
                    log.errors.append(str(exc))
            stop.set()
            return
        with log.lock:
            log.acknowledged.extend(batch)
            log.batch_seconds.append(time.perf_counter() - started)


def ingest_until_killed(node: LocalNode, documents: Sequence[SourceDocument], *, rng: random.Random, batch_size: int, concurrency: int, report: ChaosReport) -> IngestLog:
    """Ingest from `concurrency` threads; SIGKILL the node at a seeded point mid-way."""
    total_batches = -(-len(documents) // batch_size)
    report.kill_after_batches = rng.randint(max(1, total_batches // 10), max(1, total_batches * 6 // 10))
    delay_fraction = rng.random()
    client = MeshClient(node.url, timeout=120)
    log, stop, batches_lock = IngestLog(), threading.Event(), threading.Lock()
    batches = _batches(documents, batch_size)
    workers = [threading.Thread(target=_ingest_worker, args=(client, batches, batches_lock, log, stop), daemon=True) for _ in range(concurrency)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    deadline = started + 1800
    while log.acknowledged_batches < report.kill_after_batches and any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    with log.lock:
        mean_batch_s = sum(log.batch_seconds) / max(1, len(log.batch_seconds))
    time.sleep(delay_fraction * mean_batch_s)
    if not any(w.is_alive() for w in workers):
        report.notes.append("the ingest finished before the kill point; the kill hit an idle node")
    node.kill9()
    report.killed_at_s = time.monotonic() - started
    stop.set()
    for worker in workers:
        worker.join(timeout=150)
    return log


# ---------------------------------------------------------------- audit after restart


def _visible(client: MeshClient, doc_id: str) -> dict[str, Any] | None:
    try:
        return client.get_document(doc_id)
    except MeshClientError as exc:
        if exc.status == 404:
            return None
        raise


def audit_documents(client: MeshClient, log: IngestLog, report: ChaosReport) -> dict[str, dict[str, Any]]:
    """GET every document sent; returns the stored form of those that are visible."""
    stored: dict[str, dict[str, Any]] = {}
    for document in log.acknowledged:
        found = _visible(client, document.id)
        if found is None:
            report.problems.append(f"acknowledged document {document.id} is missing")
            continue
        if found["text"] != document.text or found["metadata"] != document.metadata:
            report.problems.append(f"acknowledged document {document.id} came back with different text or metadata")
            continue
        report.get_ok += 1
        stored[document.id] = found
    for document in log.unknown:
        found = _visible(client, document.id)
        if found is not None:
            report.in_flight_visible += 1
            stored[document.id] = found
    for doc_id, found in stored.items():
        for problem in chunk_problems(found["text"], found["chunks"]):
            report.problems.append(f"document {doc_id} is partial: {problem}")
    return stored


def audit_search(client: MeshClient, log: IngestLog, stored: dict[str, dict[str, Any]], words: dict[str, list[str]], report: ChaosReport) -> None:
    """Every chunk findable by dense search, every document by BM25, no hit without its document."""
    hit_docs: set[str] = set()
    for document in log.acknowledged:
        found = stored.get(document.id)
        if found is None:
            continue
        for chunk in found["chunks"]:
            report.chunks_checked += 1
            hits = client.search(chunk["text"], k=SEARCH_K, mode="dense")["hits"]
            hit_docs.update(h["doc_id"] for h in hits)
            if any(h["chunk_id"] == chunk["chunk_id"] for h in hits):
                report.dense_found += 1
            else:
                report.problems.append(f"chunk {chunk['chunk_id']} is not found by dense search for its own text")
        hit_docs.update(_audit_bm25(client, document.id, words.get(document.id, []), report))
    for doc_id in sorted(hit_docs - set(stored)):
        if _visible(client, doc_id) is None:
            report.problems.append(f"search returned chunks of document {doc_id}, which GET cannot find (orphan chunks)")


def _audit_bm25(client: MeshClient, doc_id: str, words: list[str], report: ChaosReport) -> set[str]:
    """Presence in the full-text index (required) and ranking (information); returns the doc ids seen."""
    if not words:
        return set()
    report.fts_checked += 1
    presence = client.search(words[0], k=FTS_PRESENCE_K, mode="bm25")["hits"]
    ranked = client.search(" ".join(words), k=SEARCH_K, mode="bm25")["hits"]
    if any(h["doc_id"] == doc_id for h in presence):
        report.fts_found += 1
    elif len(presence) >= FTS_PRESENCE_K:
        report.fts_inconclusive += 1
    else:
        report.problems.append(f"document {doc_id} is not in the full-text index: BM25 for {words[0]!r} misses it")
    report.bm25_top10 += any(h["doc_id"] == doc_id for h in ranked)
    return {h["doc_id"] for h in presence + ranked}


# ---------------------------------------------------------------- the whole run


def run_kill_during_ingest(
    documents: Sequence[SourceDocument],
    work_dir: Path,
    *,
    seed: int = 1,
    batch_size: int = 8,
    concurrency: int = 2,
    node_env: dict[str, str] | None = None,
    say: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> ChaosReport:
    """Start a node in work_dir, ingest, kill -9 mid-way, restart, audit. Always stops the node."""
    report = ChaosReport(seed=seed, documents_total=len(documents))
    env = {"MESHRAG_OBSERVABILITY_LOG_FORMAT": "text", **(node_env or {})}
    # No generator: loading an LLM would only slow the restarts down.
    args = ["--roles", "storage,coordinator"]
    node = LocalNode(work_dir / "node", name="chaos", extra_args=args, env=env)
    try:
        say(f"starting node on {node.url} (log {node.log_path})")
        node.start().wait_ready()
        say(f"ingesting {len(documents)} documents in batches of {batch_size}, {concurrency} in flight")
        log = ingest_until_killed(node, documents, rng=random.Random(seed), batch_size=batch_size, concurrency=concurrency, report=report)
        report.acknowledged, report.in_flight = len(log.acknowledged), len(log.unknown)
        report.problems += [f"ingest error before the kill: {e}" for e in log.errors]
        say(f"killed after {report.killed_at_s:.1f} s: {report.acknowledged} acknowledged, {report.in_flight} in flight; restarting")
        node.stop()
        node = LocalNode(work_dir / "node", port=node.port, name="chaos", extra_args=args, env=env).start()
        started = time.monotonic()
        node.wait_ready()
        report.restart_ready_s = time.monotonic() - started
        client = MeshClient(node.url, timeout=120)
        say("auditing documents and search")
        stored = audit_documents(client, log, report)
        audit_search(client, log, stored, rare_words(documents), report)
    finally:
        node.stop()
    return report


SCENARIO_DOCS = 400  # `chaos/run kill-during-ingest`: the first 400 Cranfield abstracts


def run_as_scenario(seed: int, duration_s: float, progress: Callable[[str], None]) -> dict[str, Any]:
    """`chaos/run kill-during-ingest`: this check on one node, reported as every scenario is
    (documents as the operations; the duration is the ingest's, set by the documents)."""
    documents = load_documents(CRANFIELD, SCENARIO_DOCS)
    with tempfile.TemporaryDirectory(prefix="meshrag-chaos-ingest-") as work:
        report = run_kill_during_ingest(documents, Path(work), seed=seed, say=lambda line: progress(f"[kill-during-ingest] {line}"))
    unsearchable = (report.chunks_checked - report.dense_found) + (report.fts_checked - report.fts_found - report.fts_inconclusive)
    sent = report.acknowledged + report.in_flight
    return {
        "scenario": "kill-during-ingest", "seed": seed, "nodes": 1, "duration_s": round(report.killed_at_s, 1),
        "faults": [{"fault": f"kill -9 after {report.kill_after_batches} acknowledged batches", "heal": "restarted",
                    "start": report.killed_at_s, "end": report.killed_at_s + report.restart_ready_s}],
        "writes": {"ops": sent, "ok": report.acknowledged, "failed": 0, "unknown": report.in_flight,
                   "during_faults": {"ops": report.in_flight, "ok_share": None, "p50_ms": None, "p99_ms": None}},
        "converged_s": round(report.restart_ready_s, 1),
        "anomalies": {"lost": report.acknowledged - report.get_ok, "unsearchable": unsearchable, "problems": len(report.problems)},
        "examples": report.problems[:10], "notes": report.notes, "summary": report.summary(),
        "passed": report.passed,
    }


def load_documents(path: Path, limit: int | None) -> list[SourceDocument]:
    documents = list(iter_documents([path]))
    return documents[:limit] if limit else documents


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CRANFIELD, help=f"a jsonl corpus (default {CRANFIELD})")
    parser.add_argument("--docs", type=int, default=None, help="use the first N documents (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="the node's embedder threads")
    parser.add_argument("--keep", action="store_true", help="keep the node's data directory (printed) for inspection")
    args = parser.parse_args(argv)
    documents = load_documents(args.corpus, args.docs)
    env = {"MESHRAG_EMBEDDER_THREADS": str(args.threads)}
    work = Path(tempfile.mkdtemp(prefix="meshrag-chaos-"))
    try:
        report = run_kill_during_ingest(documents, work, seed=args.seed, batch_size=args.batch_size, concurrency=args.concurrency, node_env=env)
    except (RuntimeError, TimeoutError, MeshClientError) as exc:  # e.g. the node did not come back
        print(f"FAIL: {exc}")
        return 1
    finally:
        if args.keep:
            print(f"data kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report.summary())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
