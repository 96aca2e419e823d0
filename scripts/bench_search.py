#!/usr/bin/env python3
"""Benchmark distributed search against its in-process baselines (not a test).

    .venv/bin/python scripts/bench_search.py                           # everything, 10-20 min on 2 cores
    .venv/bin/python scripts/bench_search.py --only latency,throughput
    .venv/bin/python scripts/bench_search.py --skip scale --json report.json

Every section starts its own nodes (`meshrag start --roles storage,coordinator`,
loopback only) in a temp dir and stops them, also on Ctrl-C or a crash. Every
ratio is against a baseline measured in the same run, interleaved with the
HTTP side where it can be, so both see the same background load.

latency     The 1,400 Cranfield documents (title + text, one chunk each) are
            embedded once in this process with the bundled model and ingested
            with their vectors, so no node embeds at ingest. The 225 queries
            then go through /v1/search (query text, dense, k=10; the node
            embeds the query), each right before the same work in-process:
            embed(query) + one usearch index over the same vectors with the
            node's default HNSW settings. (a) one node, default P; (b) three
            nodes, P=16, N=2, all queries through n1.
throughput  The same three-node cluster, query text round-robin over the three
            nodes, 1, 8 and 32 requests in flight for a fixed time each.
hedges      From the coordinators' /metrics, per run of (b), throughput and faults:
            meshrag_search_requests_total (node requests sent) and
            meshrag_search_hedges_total{outcome=sent|won|denied}; "n/a" on a
            build without them.
faults      A fresh three-node cluster (P=16, N=2) under steady vector load
            (the documents' own vectors as queries) through the surviving nodes
            only: healthy, SIGSTOP n3 (then SIGCONT and wait until it answers
            again), kill -9 n3, kill -9 n2. Each fault is injected at the start
            of its phase, so detection time is measured too.
scale       One node, default P, random unit vectors only (no embedding),
            ingested as msgpack batches up to each of --scale-docs; at each
            size vector search p50/p99 against one in-process usearch index over
            the same vectors and an empty HTTP round trip (GET /health) to the
            same node, interleaved; recall@10 against exact numpy search.

A benchmark reports, it does not assert: targets are printed with PASS/MISS
and the exit code is 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's meshrag, whatever the venv's editable install points at

from bench import local_index, percentile  # noqa: E402

from meshrag.localcluster import LocalCluster  # noqa: E402
from meshrag.localnode import LocalNode  # noqa: E402
from meshrag.wire import MSGPACK, pack  # noqa: E402

SECTIONS = ("latency", "throughput", "faults", "scale")
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cranfield"
ROLES = ["--roles", "storage,coordinator"]
DIM = 384  # all-MiniLM-L6-v2, the bundled embedder
K = 10

# The acceptance criteria of the search issue.
TARGET_ONE_NODE_P50 = 1.3
TARGET_CLUSTER_P50 = 1.5
TARGET_CLUSTER_P99 = 2.0
TARGET_PAUSE_P99 = 2.0
TARGET_KILL_FULL_COVERAGE = 0.999
TARGET_SCALE_GROWTH = 2.0
TARGET_SCALE_OVERHEAD = 3.0


def log(message: str) -> None:
    print(f"[bench_search] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- HTTP


class Http:
    """Keep-alive connections, one per thread and node (http.client): what a real client holds.

    Bodies carrying a vector travel as msgpack (numpy arrays as raw float32),
    the others as JSON; answers are JSON.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _connection(self, base_url: str) -> tuple[http.client.HTTPConnection, bool]:
        pool = self._local.__dict__.setdefault("pool", {})
        if base_url in pool:
            return pool[base_url], True
        parts = urlsplit(base_url)
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=self.timeout_s)
        pool[base_url] = connection
        return connection, False

    def _drop(self, base_url: str) -> None:
        connection = self._local.__dict__.get("pool", {}).pop(base_url, None)
        if connection is not None:
            connection.close()

    def call(self, base_url: str, method: str, path: str, body: Any = None, packed: bool = False,
             timeout_s: float | None = None) -> tuple[int, Any]:
        """(status, decoded answer); OSError / HTTPException when no answer came back."""
        data = None if body is None else (pack(body) if packed else json.dumps(body).encode())
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = MSGPACK if packed else "application/json"
        for attempt in (0, 1):
            connection, reused = self._connection(base_url)
            connection.timeout = timeout_s or self.timeout_s
            if connection.sock is not None:
                connection.sock.settimeout(connection.timeout)
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop(base_url)
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: the usual one retry
                raise
            except BaseException:
                self._drop(base_url)
                raise
        try:
            payload = json.loads(raw) if raw and response.headers.get_content_type() == "application/json" else raw.decode(errors="replace")
        except ValueError:
            payload = raw.decode(errors="replace")
        return response.status, payload

    def get_text(self, base_url: str, path: str, timeout_s: float = 10.0) -> str:
        status, payload = self.call(base_url, "GET", path, timeout_s=timeout_s)
        if status != 200:
            raise RuntimeError(f"GET {path} on {base_url}: {status} {payload}")
        return payload if isinstance(payload, str) else json.dumps(payload)


@dataclass(frozen=True)
class Answer:
    ms: float
    ok: bool
    coverage: float  # 0 for a failure
    error: str | None = None
    hits: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)  # the node's own, per phase


def search_body(args: argparse.Namespace, *, query: str | None = None, vector: np.ndarray | None = None) -> tuple[dict[str, Any], bool]:
    """A /v1/search body and whether it goes as msgpack. timeout_ms and require_full_coverage
    only when asked: an older node rejects fields it does not know."""
    body: dict[str, Any] = {"k": K, "mode": "dense"}
    if query is not None:
        body["query"] = query
    if vector is not None:
        body["vector"] = np.ascontiguousarray(vector, dtype=np.float32)
    if args.search_timeout_ms is not None:
        body["timeout_ms"] = args.search_timeout_ms
    if args.require_full_coverage:
        body["require_full_coverage"] = True
    return body, vector is not None


def timed_search(http_: Http, url: str, request: tuple[dict[str, Any], bool]) -> Answer:
    body, packed = request
    started = time.perf_counter()
    try:
        status, payload = http_.call(url, "POST", "/v1/search", body, packed=packed)
    except (OSError, http.client.HTTPException) as exc:
        code = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        return Answer((time.perf_counter() - started) * 1000, False, 0.0, code)
    ms = (time.perf_counter() - started) * 1000
    if status != 200:
        code = payload.get("error", {}).get("code", "?") if isinstance(payload, dict) else "?"
        return Answer(ms, False, 0.0, f"{status} {code}")
    return Answer(ms, True, float(payload.get("coverage", 1.0)), None, tuple(h["doc_id"] for h in payload["hits"]),
                  {key: float(value) for key, value in (payload.get("timings") or {}).items()})


def summarize(answers: Sequence[Answer], seconds: float | None = None) -> dict[str, Any]:
    ok = [a for a in answers if a.ok]
    ms = [a.ms for a in ok]
    result: dict[str, Any] = {
        "requests": len(answers),
        "p50_ms": round(percentile(ms, 50), 2) if ms else None,  # of the answers; None when nothing answered
        "p99_ms": round(percentile(ms, 99), 2) if ms else None,
        "max_ms": round(max(ms), 2) if ms else None,
        "failures": len(answers) - len(ok),
        "errors": dict(Counter(a.error for a in answers if not a.ok).most_common(5)),
        # Of the answers: the share that covered less than every partition.
        "partial_share": round(sum(a.coverage < 1 for a in ok) / len(ok), 4) if ok else None,
        # Of all requests (a failure is not a full answer).
        "full_coverage_share": round(sum(a.coverage >= 1 for a in ok) / len(answers), 5) if answers else None,
        "mean_coverage": round(float(np.mean([a.coverage for a in ok])), 4) if ok else None,
    }
    if seconds:
        result["seconds"] = round(seconds, 1)
        result["qps"] = round(len(answers) / seconds, 1)
    return result


def run_load(http_: Http, urls: Sequence[str], requests: Sequence[tuple[dict[str, Any], bool]], threads: int,
             duration_s: float, desc: str) -> tuple[list[Answer], float]:
    """``threads`` clients, each one request in flight, round-robin over ``urls``, for ``duration_s``."""
    from tqdm import tqdm

    stop = threading.Event()
    sequence = itertools.count()  # next() on a count is atomic under the GIL
    answers: list[list[Answer]] = [[] for _ in range(threads)]

    def client(worker: int) -> None:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and not stop.is_set():
            n = next(sequence)
            answers[worker].append(timed_search(http_, urls[n % len(urls)], requests[n % len(requests)]))

    started = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="load") as pool, \
            tqdm(total=round(duration_s), desc=desc, unit="s", file=sys.stderr, leave=False) as bar:
        futures = [pool.submit(client, w) for w in range(threads)]
        try:
            while not all(f.done() for f in futures):
                time.sleep(0.5)
                bar.n = min(round(time.perf_counter() - started), round(duration_s))
                bar.set_postfix(requests=sum(map(len, answers)), refresh=True)
            for future in futures:
                future.result()
        except BaseException:
            stop.set()  # Ctrl-C: the clients end after their request in flight
            raise
    return [a for per_worker in answers for a in per_worker], time.perf_counter() - started


# ---------------------------------------------------------------- metrics


def scrape(http_: Http, urls: Sequence[str]) -> dict[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """Every node's Prometheus samples: url -> {(name, labels): value}; nodes that do not answer are left out."""
    samples: dict[str, dict[tuple[str, frozenset[tuple[str, str]]], float]] = {}
    for url in urls:
        try:
            text = http_.get_text(url, "/metrics", timeout_s=5)
        except (OSError, http.client.HTTPException, RuntimeError):
            continue
        node: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name, _, labels = name_labels.partition("{")
            pairs = frozenset(
                (k.strip(), v.strip().strip('"')) for k, _, v in (p.partition("=") for p in labels.rstrip("}").split(",") if "=" in p)
            )
            try:
                node[(name, pairs)] = float(value)
            except ValueError:
                continue
        samples[url] = node
    return samples


def metric_sum(node: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    wanted = set(labels.items())
    values = [v for (n, ls), v in node.items() if n == name and wanted <= ls]
    return sum(values) if values else None


def hedge_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """Hedging between two scrapes, summed over the nodes in both; None where the metrics do not exist."""
    totals = {"node_requests": 0.0, "sent": 0.0, "won": 0.0, "denied": 0.0}
    found = False
    for url in set(before) & set(after):
        requests_now = metric_sum(after[url], "meshrag_search_requests_total")
        sent_now = metric_sum(after[url], "meshrag_search_hedges_total", outcome="sent")
        if requests_now is None and sent_now is None:
            continue
        found = True
        totals["node_requests"] += (requests_now or 0) - (metric_sum(before[url], "meshrag_search_requests_total") or 0)
        for outcome in ("sent", "won", "denied"):
            now = metric_sum(after[url], "meshrag_search_hedges_total", outcome=outcome) or 0
            totals[outcome] += now - (metric_sum(before[url], "meshrag_search_hedges_total", outcome=outcome) or 0)
    if not found:
        return None
    result: dict[str, Any] = {key: int(value) for key, value in totals.items()}
    result["hedged_share"] = round(totals["sent"] / totals["node_requests"], 4) if totals["node_requests"] else 0.0
    return result


# ---------------------------------------------------------------- nodes


def node_env(args: argparse.Namespace) -> dict[str, str]:
    # PYTHONPATH: the nodes run this checkout's code too, whatever the working directory.
    return {"MESHRAG_EMBEDDER_THREADS": str(args.threads), "MESHRAG_OBSERVABILITY_LOG_FORMAT": "text",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


@contextmanager
def one_node(args: argparse.Namespace, work: Path, name: str) -> Iterator[LocalNode]:
    node = LocalNode(work / name, name=name, extra_args=ROLES, env=node_env(args))
    try:
        log(f"starting node {name} (log {node.log_path}) ...")
        node.start().wait_ready()
        yield node
    finally:
        node.stop()


@contextmanager
def three_nodes(args: argparse.Namespace, work: Path, name: str) -> Iterator[LocalCluster]:
    cluster = LocalCluster(work / name, partitions=args.partitions, replicas=args.replicas, env=node_env(args), extra_args=ROLES)
    try:
        log(f"starting 3 nodes, P={args.partitions}, N={args.replicas} (logs under {work / name}) ...")
        cluster.start(3)
        yield cluster
    finally:
        cluster.stop()


def ingest(http_: Http, url: str, documents: Sequence[dict[str, Any]], args: argparse.Namespace, desc: str,
           consistency: str | None = None) -> dict[str, Any]:
    """Batches of documents with their vectors, as msgpack, ``--ingest-concurrency`` in flight."""
    from tqdm import tqdm

    def send(batch: Sequence[dict[str, Any]]) -> list[str]:
        body: dict[str, Any] = {"documents": list(batch)}
        if consistency:
            body["consistency"] = consistency
        status, payload = http_.call(url, "POST", "/v1/documents", body, packed=True, timeout_s=max(300.0, http_.timeout_s))
        if status != 200:
            raise RuntimeError(f"ingest through {url}: {status} {payload}")
        return [r["status"] for r in payload["results"]]

    statuses: Counter[str] = Counter()
    batches = [documents[i : i + args.batch_size] for i in range(0, len(documents), args.batch_size)]
    embedded_before = chunks_embedded(http_, url)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.ingest_concurrency) as pool, tqdm(total=len(documents), desc=desc, unit="doc", file=sys.stderr, leave=False) as bar:
        for batch, result in zip(batches, pool.map(send, batches)):
            statuses.update(result)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    embedded_after = chunks_embedded(http_, url)
    return {
        "documents": len(documents), "seconds": round(seconds, 2), "docs_per_s": round(len(documents) / seconds, 1), "by_status": dict(statuses),
        # Every document brings its vector: anything the node embedded was wasted work.
        "chunks_embedded_by_node": None if embedded_before is None or embedded_after is None else int(embedded_after - embedded_before),
    }


def chunks_embedded(http_: Http, url: str) -> float | None:
    node = scrape(http_, [url]).get(url)
    return metric_sum(node, "meshrag_chunks_embedded_total") if node is not None else None


def ring_shape(http_: Http, url: str) -> dict[str, Any]:
    """Partitions and replicas as the node reports them (GET /v1/cluster)."""
    status, payload = http_.call(url, "GET", "/v1/cluster", timeout_s=10)
    ring = payload.get("ring", {}) if status == 200 and isinstance(payload, dict) else {}
    return {"partitions": ring.get("partitions"), "replicas": ring.get("replicas")}


# ---------------------------------------------------------------- Cranfield


@dataclass
class Corpus:
    ids: list[str]
    texts: list[str]
    vectors: np.ndarray
    queries: list[str]
    embedder: Any
    index: Any = field(default=None)

    def documents(self) -> list[dict[str, Any]]:
        return [{"id": i, "text": t, "vector": v} for i, t, v in zip(self.ids, self.texts, self.vectors)]


def load_corpus(args: argparse.Namespace) -> Corpus:
    """Whole Cranfield documents (title + text) embedded once here; the same model the nodes load."""
    from tqdm import tqdm

    from meshrag.rag.embedder import Embedder, default_model_path

    ids, texts = [], []
    for line in (args.data / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        text = "\n\n".join(p for p in (record.get("title", "").strip(), record.get("text", "").strip()) if p)
        if text:  # two Cranfield records have no text at all
            ids.append(f"cranfield/{record['_id']}")
            texts.append(text)
    queries = [json.loads(line)["text"] for line in (args.data / "queries.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    embedder = Embedder(default_model_path(), threads=args.threads)
    embedder.load()
    cache = args.embeddings_cache
    if cache is not None and cache.exists() and np.load(cache).shape == (len(texts), embedder.dim):
        vectors = np.load(cache)
        log(f"Cranfield vectors from {cache} (delete it after changing the model or the corpus)")
    else:
        rows = []
        for start in tqdm(range(0, len(texts), 64), desc="embed corpus", unit="batch", file=sys.stderr, leave=False):
            rows.append(embedder.encode(texts[start : start + 64]))
        vectors = np.concatenate(rows)
        log(f"embedded {len(texts)} Cranfield documents in-process ({vectors.shape[1]}-d)")
        if cache is not None:
            np.save(cache, vectors)
    return Corpus(ids, texts, vectors, queries[: args.queries], embedder, local_index(vectors))


# ---------------------------------------------------------------- 1. latency


def compare_latency(args: argparse.Namespace, http_: Http, url: str, corpus: Corpus, desc: str) -> dict[str, Any]:
    """Each query over HTTP, then the same query in-process (embed + one usearch index)."""
    from tqdm import tqdm

    def in_process(query: str) -> None:
        corpus.index.search(corpus.embedder.encode([query])[0], K)

    for query in corpus.queries[:5]:  # warm-up both paths
        timed_search(http_, url, search_body(args, query=query))
        in_process(query)
    answers: list[Answer] = []
    local_ms: list[float] = []
    for query in tqdm(corpus.queries, desc=desc, unit="q", file=sys.stderr, leave=False):
        answers.append(timed_search(http_, url, search_body(args, query=query)))
        started = time.perf_counter()
        in_process(query)
        local_ms.append((time.perf_counter() - started) * 1000)
    http_side = summarize(answers)
    result = {
        "queries": len(answers),
        "failures": http_side["failures"],
        "errors": http_side["errors"],
        "http_p50_ms": http_side["p50_ms"],
        "http_p99_ms": http_side["p99_ms"],
        "in_process_p50_ms": round(percentile(local_ms, 50), 2),
        "in_process_p99_ms": round(percentile(local_ms, 99), 2),
        "mean_coverage": http_side["mean_coverage"],
        "node_timings_p50_ms": node_timings(answers),
    }
    result["ratio_p50"] = ratio(result["http_p50_ms"], result["in_process_p50_ms"])
    result["ratio_p99"] = ratio(result["http_p99_ms"], result["in_process_p99_ms"])
    return result


def node_timings(answers: Sequence[Answer]) -> dict[str, float]:
    """p50 of each phase the node reports (embed_ms, term_stats_ms, candidates_ms, fetch_ms, ...):
    where the time beyond the in-process baseline goes."""
    keys = sorted({key for answer in answers for key in answer.timings})
    return {key: round(percentile([a.timings[key] for a in answers if key in a.timings], 50), 2) for key in keys}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def bench_latency_one_node(args: argparse.Namespace, http_: Http, corpus: Corpus, work: Path) -> dict[str, Any]:
    with one_node(args, work, "single") as node:
        loaded = ingest(http_, node.url, corpus.documents(), args, "ingest (1 node)")
        result = compare_latency(args, http_, node.url, corpus, "latency, 1 node")
        shape = ring_shape(http_, node.url)
    return {"ingest": loaded, "ring": shape, **result}


def bench_latency_cluster(args: argparse.Namespace, http_: Http, cluster: LocalCluster, corpus: Corpus) -> dict[str, Any]:
    urls = [n.url for n in cluster.nodes]
    before = scrape(http_, urls)
    result = compare_latency(args, http_, cluster.nodes[0].url, corpus, "latency, 3 nodes")
    result["hedges"] = hedge_delta(before, scrape(http_, urls))
    return result


# ---------------------------------------------------------------- 2. throughput


def bench_throughput(args: argparse.Namespace, http_: Http, cluster: LocalCluster, corpus: Corpus) -> list[dict[str, Any]]:
    urls = [n.url for n in cluster.nodes]
    requests = [search_body(args, query=q) for q in corpus.queries]
    rows = []
    for in_flight in args.concurrency_levels:
        before = scrape(http_, urls)
        answers, seconds = run_load(http_, urls, requests, in_flight, args.throughput_s, f"throughput, {in_flight} in flight")
        row = {"in_flight": in_flight, **summarize(answers, seconds), "hedges": hedge_delta(before, scrape(http_, urls))}
        log(f"{in_flight} in flight: {row['qps']} QPS, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['failures']} failures")
        rows.append(row)
    return rows


def ingest_cranfield(args: argparse.Namespace, http_: Http, cluster: LocalCluster, corpus: Corpus) -> dict[str, Any]:
    # consistency=all: both replicas of every partition hold the corpus before the first query.
    return ingest(http_, cluster.nodes[0].url, corpus.documents(), args, "ingest (3 nodes)", consistency="all")


# ---------------------------------------------------------------- 4. faults


def wait_recovered(http_: Http, cluster: LocalCluster, node: LocalNode, request: tuple[dict[str, Any], bool], timeout_s: float) -> float | None:
    """Seconds until a search through ``node`` answers with full coverage and every other node's
    gossip sees it alive again; None if that did not happen within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        answer = timed_search(http_, node.url, request)
        if answer.ok and answer.coverage >= 1 and all(
            cluster.member_state(other, node.name) == "alive" for other in cluster.running() if other is not node
        ):
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def bench_faults(args: argparse.Namespace, http_: Http, corpus: Corpus, work: Path) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    requests = [search_body(args, vector=corpus.vectors[i]) for i in rng.permutation(len(corpus.vectors))]
    phases: list[dict[str, Any]] = []
    with three_nodes(args, work, "faults") as cluster:
        n1, n2, n3 = cluster.nodes
        loaded = ingest(http_, n1.url, corpus.documents(), args, "ingest (faults)", consistency="all")

        def phase(name: str, entries: Sequence[LocalNode], inject: Callable[[], None] | None = None) -> dict[str, Any]:
            urls = [n.url for n in entries]
            before = scrape(http_, urls)
            if inject is not None:
                inject()  # at the start of the phase: the time to notice the fault is measured too
            answers, seconds = run_load(http_, urls, requests, args.fault_threads, args.fault_phase_s, name)
            row = {"phase": name, "through": [n.name for n in entries], **summarize(answers, seconds),
                   "hedges": hedge_delta(before, scrape(http_, urls))}
            log(f"{name}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['failures']} failures, "
                f"full coverage {row['full_coverage_share']}, mean coverage {row['mean_coverage']}")
            phases.append(row)
            return row

        phase("healthy", [n1, n2])
        try:
            phase("SIGSTOP n3", [n1, n2], lambda: cluster.pause(n3))
        finally:
            cluster.resume(n3)
        log("SIGCONT n3; waiting until searches through it answer with full coverage and n1, n2 see it alive ...")
        recovered_s = wait_recovered(http_, cluster, n3, requests[0], args.recover_timeout_s)
        phase("kill -9 n3", [n1, n2], n3.kill9)
        phase("kill -9 n2", [n1], n2.kill9)
    return {"ingest": loaded, "phases": phases, "recovered_s": recovered_s, "threads": args.fault_threads, "phase_s": args.fault_phase_s}


# ---------------------------------------------------------------- 5. scale


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def bench_scale(args: argparse.Namespace, http_: Http, work: Path) -> list[dict[str, Any]]:
    from tqdm import tqdm

    rng = np.random.default_rng(args.seed)
    sizes = sorted(args.scale_docs)
    vectors = unit_vectors(rng, sizes[-1])
    queries = unit_vectors(rng, args.scale_queries)
    rows = []
    with one_node(args, work, "scale") as node:
        shape = ring_shape(http_, node.url)
        done = 0
        for size in sizes:
            documents = [{"id": f"s{i:07d}", "text": f"vector document {i}", "vector": vectors[i]} for i in range(done, size)]
            loaded = ingest(http_, node.url, documents, args, f"ingest to {size}")
            done = size
            started = time.perf_counter()
            index = local_index(vectors[:size])
            build_s = time.perf_counter() - started
            exact = np.argpartition(-(queries @ vectors[:size].T), K, axis=1)[:, :K]  # the true top K, unordered
            requests = [search_body(args, vector=q) for q in queries]
            for request, query in zip(requests[:10], queries[:10]):  # warm-up all three paths
                http_.call(node.url, "GET", "/health")
                timed_search(http_, node.url, request)
                index.search(query, K)
            rtt_ms, local_ms, answers, local_keys = [], [], [], []
            for request, query in tqdm(list(zip(requests, queries)), desc=f"search at {size}", unit="q", file=sys.stderr, leave=False):
                started = time.perf_counter()
                http_.call(node.url, "GET", "/health")
                rtt_ms.append((time.perf_counter() - started) * 1000)
                answers.append(timed_search(http_, node.url, request))
                started = time.perf_counter()
                local_keys.append(index.search(query, K).keys)
                local_ms.append((time.perf_counter() - started) * 1000)
            node_side = summarize(answers)
            node_recall = np.mean([len({int(d[1:]) for d in a.hits} & set(e.tolist())) / K for a, e in zip(answers, exact) if a.ok] or [np.nan])
            local_recall = np.mean([len(set(np.asarray(keys).tolist()) & set(e.tolist())) / K for keys, e in zip(local_keys, exact)])
            row = {
                "docs": size,
                "partitions": shape["partitions"],
                "ingest_docs": loaded["documents"],
                "ingest_chunks_embedded_by_node": loaded["chunks_embedded_by_node"],
                "ingest_docs_per_s": loaded["docs_per_s"],
                "ingest_by_status": loaded["by_status"],
                "queries": len(answers),
                "failures": node_side["failures"],
                "node_p50_ms": node_side["p50_ms"],
                "node_p99_ms": node_side["p99_ms"],
                "in_process_p50_ms": round(percentile(local_ms, 50), 3),
                "in_process_p99_ms": round(percentile(local_ms, 99), 3),
                "in_process_build_s": round(build_s, 1),
                "round_trip_p50_ms": round(percentile(rtt_ms, 50), 3),
                "round_trip_p99_ms": round(percentile(rtt_ms, 99), 3),
                "node_timings_p50_ms": node_timings(answers),
                "node_recall_at_10": None if np.isnan(node_recall) else round(float(node_recall), 4),
                "in_process_recall_at_10": round(float(local_recall), 4),
            }
            log(f"{size} docs: ingest {row['ingest_docs_per_s']} docs/s, node p50 {row['node_p50_ms']} ms, "
                f"in-process p50 {row['in_process_p50_ms']} ms, /health p50 {row['round_trip_p50_ms']} ms, recall {row['node_recall_at_10']}")
            rows.append(row)
    return rows


# ---------------------------------------------------------------- report


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def cell(value: Any, width: int, spec: str = "") -> str:
    """``value`` right-aligned in ``width``; "-" for a figure that does not exist (nothing answered)."""
    missing = value is None or (isinstance(value, float) and np.isnan(value))
    return ("-" if missing else format(value, spec)).rjust(width)


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def ingest_line(loaded: dict[str, Any], where: str) -> str:
    embedded = loaded.get("chunks_embedded_by_node")
    note = "" if embedded is None else f"; chunks the node embedded: {embedded} (expected 0: every document brings its vector)"
    return f"  ingest: {loaded['documents']} docs with vectors through {where} at {loaded['docs_per_s']} docs/s{note}"


def render_latency(lat: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    first = lat.get("one_node") or lat["cluster"]
    lines = [(f"1. LATENCY vs in-process (Cranfield, dense, k={K}, {first['queries']} queries by text; "
              "in-process = embed the query + one usearch index over the same vectors)"),
             (f"{'setup':<24}{'HTTP p50':>9}{'in-proc':>9}{'ratio':>7}{'target':>8}{'':>6}  "
              f"{'HTTP p99':>9}{'in-proc':>9}{'ratio':>7}{'target':>8}{'':>6}{'fail':>6}")]
    setups = (("one_node", "1 node (P={})", TARGET_ONE_NODE_P50, None),
              ("cluster", f"3 nodes (P={settings['partitions']}, N={settings['replicas']})", TARGET_CLUSTER_P50, TARGET_CLUSTER_P99))
    for key, label, t50, t99 in setups:
        r = lat.get(key)
        if not r:
            continue
        label = label.format(r.get("ring", {}).get("partitions") or "default")
        v99 = verdict(at_most(r["ratio_p99"], t99)) if t99 else ""
        lines.append(f"{label:<24}{cell(r['http_p50_ms'], 9)}{cell(r['in_process_p50_ms'], 9)}{cell(r['ratio_p50'], 7)}"
                     f"{'<=' + str(t50):>8}{verdict(at_most(r['ratio_p50'], t50)):>6}  "
                     f"{cell(r['http_p99_ms'], 9)}{cell(r['in_process_p99_ms'], 9)}{cell(r['ratio_p99'], 7)}"
                     f"{('<=' + str(t99)) if t99 else '-':>8}{v99:>6}{r['failures']:>6}")
    lines.append("  (ms; ratio = HTTP latency / in-process latency, each query timed right before the same query in-process)")
    for key, where in (("one_node", "the node"), ("cluster", "n1, consistency=all")):
        if lat.get(key):
            phases = ", ".join(f"{name} {value}" for name, value in lat[key].get("node_timings_p50_ms", {}).items())
            lines.append(f"  node's own timings, p50 ms ({key}): {phases or 'n/a'}")
            lines.append(ingest_line(lat[key]["ingest"], where))
            if lat[key]["errors"]:
                lines.append(f"  errors ({key}): {lat[key]['errors']}")
    return lines


def render_throughput(rows: Sequence[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    lines = [f"2. THROUGHPUT, 3 nodes, query text round-robin over the nodes, {settings['throughput_s']:g} s per level",
             f"{'in flight':>9}{'requests':>10}{'QPS':>8}{'p50 ms':>9}{'p99 ms':>9}{'failures':>10}"]
    for r in rows:
        lines.append(f"{r['in_flight']:>9}{r['requests']:>10}{cell(r['qps'], 8)}{cell(r['p50_ms'], 9)}{cell(r['p99_ms'], 9)}{r['failures']:>10}"
                     + (f"   errors: {r['errors']}" if r["errors"] else ""))
    return lines


def render_hedges(rows: Sequence[tuple[str, dict[str, Any] | None]]) -> list[str]:
    lines = ["3. HEDGES (coordinators' /metrics, summed; share = hedges sent / node requests sent)",
             f"{'run':<28}{'node reqs':>10}{'hedged':>8}{'share':>8}{'won':>6}{'denied':>8}"]
    for name, h in rows:
        if h is None:
            lines.append(f"{name:<28}{'n/a':>10}   (these nodes have no meshrag_search_hedges_total)")
        else:
            lines.append(f"{name:<28}{h['node_requests']:>10}{h['sent']:>8}{h['hedged_share']:>8.2%}{h['won']:>6}{h['denied']:>8}")
    return lines


def fault_targets(p: dict[str, Any], healthy: dict[str, Any] | None) -> list[str]:
    failures = f"failures = 0 {verdict(p['failures'] == 0)}"
    if p["phase"].startswith("SIGSTOP"):
        growth = ratio(p["p99_ms"], healthy["p99_ms"]) if healthy else None
        return [f"p99 <= {TARGET_PAUSE_P99:g}x healthy ({cell(growth, 0)}x) {verdict(at_most(growth, TARGET_PAUSE_P99))}", failures]
    if p["phase"] == "kill -9 n3":
        share = p["full_coverage_share"] or 0.0
        return [f"full coverage >= {TARGET_KILL_FULL_COVERAGE:.1%} ({share:.2%}) {verdict(share >= TARGET_KILL_FULL_COVERAGE)}", failures]
    if p["phase"] == "kill -9 n2":
        return [failures]
    return []


def render_faults(faults: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    healthy = next((p for p in faults["phases"] if p["phase"] == "healthy"), None)
    lines = [(f"4. FAULTS under steady load, 3 nodes (P={settings['partitions']}, N={settings['replicas']}), vector queries, "
              f"{faults['threads']} clients through the surviving nodes, {faults['phase_s']:g} s per phase (fault injected at its start)"),
             (f"{'phase':<13}{'through':>9}{'reqs':>7}{'QPS':>7}{'p50 ms':>8}{'p99 ms':>9}{'max ms':>9}{'fail':>6}"
              f"{'cov<1':>8}{'full cov':>10}{'mean cov':>9}   target")]
    for p in faults["phases"]:
        targets = fault_targets(p, healthy)
        lines.append(f"{p['phase']:<13}{','.join(p['through']):>9}{p['requests']:>7}{cell(p['qps'], 7)}{cell(p['p50_ms'], 8)}"
                     f"{cell(p['p99_ms'], 9)}{cell(p['max_ms'], 9)}{p['failures']:>6}{cell(p['partial_share'], 8, '.2%')}"
                     f"{cell(p['full_coverage_share'], 10, '.2%')}{cell(p['mean_coverage'], 9, '.3f')}   {targets[0] if targets else '-'}")
        lines += [" " * 95 + t for t in targets[1:]]
        if p["errors"]:
            lines.append(f"{'':<13}errors: {p['errors']}")
        if p["phase"].startswith("SIGSTOP"):
            recovered = faults["recovered_s"]
            lines.append(f"{'':<13}after SIGCONT: " + (f"searches through n3 answer with full coverage and n1, n2 see it alive within {recovered} s" if recovered is not None
                                                       else f"n3 NOT recovered (full-coverage answer, alive to n1 and n2) after {settings['recover_timeout_s']:g} s"))
    lines.append("  (cov<1: share of answers with coverage < 1; full cov: share of all requests answered with coverage 1)")
    lines.append(ingest_line(faults["ingest"], "n1, consistency=all"))
    return lines


def render_scale(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [(f"5. SCALE, 1 node (P={rows[0].get('partitions') or 'default'}), random unit {DIM}-d vectors, "
              f"vector search k={K}, {rows[0]['queries']} queries per size"),
             (f"{'docs':>8}{'ingest/s':>10}{'node p50':>10}{'p99':>9}{'in-proc p50':>13}{'p99':>8}{'/health p50':>13}"
              f"{'recall node':>13}{'in-proc':>9}{'fail':>6}")]
    for r in rows:
        lines.append(f"{r['docs']:>8}{r['ingest_docs_per_s']:>10}{cell(r['node_p50_ms'], 10)}{cell(r['node_p99_ms'], 9)}"
                     f"{r['in_process_p50_ms']:>13}{r['in_process_p99_ms']:>8}{r['round_trip_p50_ms']:>13}"
                     f"{cell(r['node_recall_at_10'], 13)}{r['in_process_recall_at_10']:>9}{r['failures']:>6}")
    lines.append("  (ms; ingest/s: msgpack batches with vectors, for the documents added to reach that size; "
                 "recall@10 against exact numpy search over the same vectors)")
    embedded = [int(r["ingest_chunks_embedded_by_node"]) for r in rows if r.get("ingest_chunks_embedded_by_node") is not None]
    if embedded:
        lines.append(f"  chunks the node embedded at ingest: {sum(embedded)} (expected 0: every document brings its vector)")
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        growth = ratio(large["node_p50_ms"], small["node_p50_ms"])
        floor = large["in_process_p50_ms"] + large["round_trip_p50_ms"]
        overhead = ratio(large["node_p50_ms"], floor)
        lines.append(f"  p50 at {large['docs']} <= {TARGET_SCALE_GROWTH:g}x p50 at {small['docs']}: "
                     f"{cell(growth, 0)}x {verdict(at_most(growth, TARGET_SCALE_GROWTH))}")
        lines.append(f"  p50 at {large['docs']} <= {TARGET_SCALE_OVERHEAD:g}x (in-process p50 + round trip p50 = {floor:.2f} ms): "
                     f"{cell(overhead, 0)}x {verdict(at_most(overhead, TARGET_SCALE_OVERHEAD))}")
    return lines


def render(report: dict[str, Any]) -> str:
    m, settings = report["machine"], report["settings"]
    lines = [f"machine: {m['cores']} cores ({m['cpu']}), python {m['python']}; code {m['commit']}"
             + (" + uncommitted changes" if m["dirty"] else ""),
             "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    hedge_rows: list[tuple[str, dict[str, Any] | None]] = []
    if report.get("latency"):
        lines += ["", *render_latency(report["latency"], settings)]
        if report["latency"].get("cluster"):
            hedge_rows.append(("latency, 3 nodes", report["latency"]["cluster"]["hedges"]))
    if report.get("throughput"):
        lines += ["", *render_throughput(report["throughput"], settings)]
        hedge_rows += [(f"throughput, {r['in_flight']} in flight", r["hedges"]) for r in report["throughput"]]
    if report.get("faults"):
        hedge_rows += [(f"faults: {p['phase']}", p["hedges"]) for p in report["faults"]["phases"]]
    if hedge_rows:
        lines += ["", *render_hedges(hedge_rows)]
    if report.get("faults"):
        lines += ["", *render_faults(report["faults"], settings)]
    if report.get("scale"):
        lines += ["", *render_scale(report["scale"])]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *argv], check=False, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "commit": git("rev-parse", "--short", "HEAD") or "?", "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def section_list(text: str) -> set[str]:
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = names - set(SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--only", type=section_list, help=f"run only these sections ({','.join(SECTIONS)})")
    select.add_argument("--skip", type=section_list, default=set(), help="skip these sections")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"Cranfield in BEIR layout (default {DEFAULT_DATA})")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--embeddings-cache", type=Path, metavar="FILE.npy",
                        help="reuse the in-process Cranfield vectors from FILE.npy (written there when missing)")
    parser.add_argument("--work-dir", type=Path, help="keep node data and logs here (default: a temp dir, removed)")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads, nodes and in-process alike")
    parser.add_argument("--queries", type=int, default=225, help="Cranfield queries for latency and throughput (default all 225)")
    parser.add_argument("--partitions", type=int, default=16, help="P of the 3-node clusters (default 16)")
    parser.add_argument("--replicas", type=int, default=2, help="N of the 3-node clusters (default 2)")
    parser.add_argument("--batch-size", type=int, default=128, help="documents per ingest request (default 128)")
    parser.add_argument("--ingest-concurrency", type=int, default=2, help="ingest requests in flight (default 2)")
    parser.add_argument("--concurrency-levels", type=int_list, default=[1, 8, 32], help="throughput: requests in flight (default 1,8,32)")
    parser.add_argument("--throughput-s", type=float, default=10.0, help="throughput: seconds per level (default 10)")
    parser.add_argument("--fault-threads", type=int, default=4, help="faults: client threads (default 4)")
    parser.add_argument("--fault-phase-s", type=float, default=20.0, help="faults: seconds per phase (default 20)")
    parser.add_argument("--recover-timeout-s", type=float, default=120.0, help="faults: longest wait for a resumed node (default 120)")
    parser.add_argument("--scale-docs", type=int_list, default=[10000, 100000], help="scale: sizes (default 10000,100000)")
    parser.add_argument("--scale-queries", type=int, default=1000, help="scale: queries per size (default 1000: a p50 over ~5 s, which a passing stall of the node or host does not move)")
    parser.add_argument("--request-timeout-s", type=float, default=30.0, help="client timeout of one search (default 30)")
    parser.add_argument("--search-timeout-ms", type=int, help="send timeout_ms with every search (newer nodes only)")
    parser.add_argument("--require-full-coverage", action="store_true", help="send require_full_coverage with every search (newer nodes only)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    args.sections = [s for s in SECTIONS if (s in args.only if args.only else s not in args.skip)]
    return args


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    http_ = Http(args.request_timeout_s)
    settings = {k: getattr(args, k) for k in ("threads", "queries", "partitions", "replicas", "concurrency_levels", "throughput_s",
                                              "fault_threads", "fault_phase_s", "recover_timeout_s", "scale_docs", "scale_queries",
                                              "search_timeout_ms", "require_full_coverage")}
    report: dict[str, Any] = {"machine": machine(), "settings": settings, "sections": args.sections}
    corpus = load_corpus(args) if {"latency", "throughput", "faults"} & set(args.sections) else None
    if "latency" in args.sections:
        assert corpus is not None
        report["latency"] = {"one_node": bench_latency_one_node(args, http_, corpus, work)}
    if {"latency", "throughput"} & set(args.sections):
        assert corpus is not None
        with three_nodes(args, work, "search") as cluster:  # one cluster for (b) and throughput: same data, one ingest
            loaded = ingest_cranfield(args, http_, cluster, corpus)
            if "latency" in args.sections:
                report["latency"]["cluster"] = {"ingest": loaded, **bench_latency_cluster(args, http_, cluster, corpus)}
            if "throughput" in args.sections:
                report["throughput"] = bench_throughput(args, http_, cluster, corpus)
    if "faults" in args.sections:
        assert corpus is not None
        report["faults"] = bench_faults(args, http_, corpus, work)
    if "scale" in args.sections:
        report["scale"] = bench_scale(args, http_, work)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.work_dir:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            report = run(args, args.work_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="meshrag-bench-search-") as work:
                report = run(args, Path(work))
    except KeyboardInterrupt:
        log("interrupted; every node started here has been stopped")
        return 130
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"report written to {args.json}")
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
