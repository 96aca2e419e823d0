"""Distributed search: the coordinator's three phases and the node's local answers.

Coordinator (``DistributedSearch``), all within one deadline:

1. term statistics (BM25 only): the cluster-wide chunk count, total length
   and document frequency of the query's terms, summed over one replica per
   partition (a DFS pre-pass, as Elasticsearch's dfs_query_then_fetch) and
   cached for ``search.bm25_stats_ttl_s`` (cluster/bm25stats.py), so scores
   from different partitions and nodes compare and a node with a few
   partitions ranks as one holding everything would;
2. candidates: ids and scores from every partition (scatter.py: replica
   choice, hedging, fail-over, deadline, coverage); no text travels;
3. fetch: text and metadata of the final top-k only, from the nodes that
   answered for their partitions (another replica if that node fails). A
   one-kind search of at most INLINE_TEXT_MAX_K results that asks few other
   nodes (``search.inline_text_max_nodes``) has them send the text of their
   best candidates along, and fetches only what did not come: one round trip
   instead of two, for at most that many times k chunks' text more.
   A one-kind search whose every partition is best answered here takes a
   single local step (``search_here``).

Node side (``LocalSearcher``): the asked partitions this node holds are
searched in one pass over the node's vector index (store/node_index.py) and,
concurrently, by BM25 with the statistics the coordinator sent. Partitions it
does not hold are named, so the coordinator asks their next replica: an empty
answer is not coverage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

import numpy as np

from meshrag.cluster import messages as msg
from meshrag.cluster.bm25stats import TermStatsCache
from meshrag.cluster.hit_cache import PREFETCH, HitCache, in_order, key_of
from meshrag.cluster.scatter import NodeAnswer, Scattered, Scatterer
from meshrag.errors import Unavailable
from meshrag.observability import Stopwatch
from meshrag.ring import Ring
from meshrag.store.analysis import Analyzer
from meshrag.store.engine import StorageEngine
from meshrag.store.filters import Filter, dump_filter
from meshrag.store.lexical import TermStats
from meshrag.store.types import Candidate, Hit

log = logging.getLogger(__name__)
T = TypeVar("T")

KINDS = ("dense", "bm25")
# Fetching the final k is small and needed for any answer at all: it gets at least
# this long even when gathering used up the deadline.
MIN_FETCH_S = 0.25
# Other nodes send the text of their best candidates with them (one round trip, no fetch)
# for one-kind searches of at most this many results asking at most this many other nodes.
INLINE_TEXT_MAX_K = 16
INLINE_TEXT_MAX_NODES = 2
# Queries longer than this (up to api.max_text_chars) are analyzed in the storage pool:
# stemming a long text would hold the event loop gossip shares.
ANALYZE_ON_LOOP_CHARS = 2048

Blocking = Callable[..., Awaitable[Any]]
PeerCall = Callable[[str, str, dict[str, Any], float], Awaitable[dict[str, Any]]]
PerPartition = dict[str, list[Candidate]]


class IncompleteCoverage(Unavailable):
    code = "incomplete_coverage"


@dataclass(frozen=True)
class SearchPlan:
    kinds: tuple[str, ...]
    vector: np.ndarray | None
    query: str | None
    k: int
    filter: Filter | None
    session: Mapping[int, list[str]]
    timeout_s: float


@dataclass
class Prepared:
    """A search's first steps, done before (or while) its query vector is computed."""

    replicas: dict[int, list[str]]
    deadline: float  # on the event loop's clock
    terms: list[str] = field(default_factory=list)
    stats: TermStats | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Gathered:
    lists: dict[str, list[Candidate]]
    holders: dict[int, str]
    missing: list[int]
    coverage: float
    hedges: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    texts: dict[str, Hit] = field(default_factory=dict)  # chunk id -> hit sent with the candidates


# ------------------------------------------------------------------ node side
class LocalSearcher:
    """Answers searches for the partitions this node holds (blocking work in the storage pool)."""

    def __init__(
        self, engine: StorageEngine, answering_for: Callable[[Sequence[int]], set[int]], blocking: Blocking,
        hit_cache: HitCache | None = None,
    ) -> None:
        self._engine = engine
        self._answering_for = answering_for
        self.blocking = blocking  # the storage pool; the coordinator's long query analysis uses it too
        self._hit_cache = hit_cache  # the text of the best candidates, read ahead for the fetch

    async def candidates(
        self, kinds: Sequence[str], vector: np.ndarray | None, terms: Sequence[str], k: int,
        flt: Filter | None, pids: Sequence[int], stats: TermStats | None,
    ) -> NodeAnswer[PerPartition]:
        held = self._answering_for(pids)
        searched = sorted(held)
        jobs: dict[str, Awaitable[list[Candidate]]] = {}
        if "dense" in kinds and vector is not None and searched:
            jobs["dense"] = self.blocking(self._read_ahead, "dense", vector, k, flt, searched)
        if "bm25" in kinds and terms and searched:
            jobs["bm25"] = self.blocking(self._read_ahead, "bm25", list(terms), k, flt, searched, stats)
        found = dict(zip(jobs, await asyncio.gather(*jobs.values())))  # dense and BM25 at once
        per_partition: dict[int, PerPartition] = {pid: {kind: [] for kind in kinds} for pid in searched}
        for kind, candidates in found.items():
            for candidate in candidates:
                per_partition[candidate.partition][kind].append(candidate)
        return NodeAnswer(per_partition, sorted(set(pids) - held))

    async def term_stats(self, terms: Sequence[str], pids: Sequence[int]) -> NodeAnswer[TermStats]:
        held = sorted(self._answering_for(pids))

        def read() -> dict[int, TermStats]:
            return {pid: self._engine.term_stats(list(terms), [pid]) for pid in held}

        return NodeAnswer(await self.blocking(read), sorted(set(pids) - set(held)))

    def _read_ahead(self, kind: str, *args: Any) -> list[Candidate]:
        """In the storage pool: a search, then the text of its best candidates into the hit
        cache, in the same job, for the fetch that usually follows. A dense search reads the
        text with its candidates, in the same queries."""
        texts: dict[str, Hit] = {}
        if kind == "dense":
            found = self._engine.search_dense(*args, texts=texts if self._hit_cache is not None else None)
        else:
            found = self._engine.search_bm25(*args)
        if self._hit_cache is None:
            return found
        best = found[:PREFETCH]
        missing = [c for c in best if c.chunk_id not in texts]
        self._hit_cache.put([texts[c.chunk_id] for c in best if c.chunk_id in texts])
        if missing:
            self._hit_cache.put(self._engine.hits(missing))
        return found

    async def hits(self, candidates: Sequence[Candidate]) -> list[Hit]:
        """Phase two here: from the hit cache where it can (no trip to the storage pool),
        the rest from storage, in the candidates' order."""
        if self._hit_cache is None:
            return await self.blocking(self._engine.hits, list(candidates))
        kept, missing = self._hit_cache.take(candidates)
        read: list[Hit] = await self.blocking(self._engine.hits, missing) if missing else []
        return in_order(candidates, kept, {key_of(hit): hit for hit in read})

    def kept_hits(self, answer: NodeAnswer[PerPartition]) -> list[Hit]:
        """The text this node read ahead for the candidates of ``answer`` (no storage read): what
        it sends with them when the coordinator asks for text inline."""
        if self._hit_cache is None:
            return []
        candidates = [c for per_kind in answer.partitions.values() for found in per_kind.values() for c in found]
        return list(self._hit_cache.take(candidates)[0].values())

    async def search_and_fetch(
        self, kind: str, vector: np.ndarray | None, terms: Sequence[str], k: int, flt: Filter | None,
        pids: Sequence[int], stats: TermStats | None,
    ) -> tuple[list[Candidate], list[Hit]] | None:
        """One kind of search over partitions that are all held here, and the hits of its
        top k, in one job of the storage pool; None when one of them is not held (the
        scatter then asks its other replicas). One hop instead of candidates, then fetch:
        each hand-off between the event loop and a pool thread costs a wake-up, which on
        a busy host is a large part of a local search's time."""
        if self._answering_for(pids) != set(pids):
            return None

        def search() -> tuple[list[Candidate], list[Hit]]:
            if kind == "dense" and vector is not None:
                texts: dict[str, Hit] = {}  # read with the candidates, in the same queries
                found = self._engine.search_dense(vector, k, flt, pids, texts=texts)
                return found, [texts[c.chunk_id] for c in found[:k] if c.chunk_id in texts]
            found = self._engine.search_bm25(list(terms), k, flt, pids, stats) if kind == "bm25" and terms else []
            return found, self._engine.hits(found[:k])

        result: tuple[list[Candidate], list[Hit]] = await self.blocking(search)
        return result


# ------------------------------------------------------------------ wire
def candidates_body(kinds: Sequence[str], vector: np.ndarray | None, terms: Sequence[str], k: int,
                    flt: Filter | None, pids: Sequence[int], stats: TermStats | None, text: bool = False) -> dict[str, Any]:
    return {
        "kinds": list(kinds), "vector": vector, "terms": list(terms), "k": k, "partitions": list(pids),
        "filter": None if flt is None else dump_filter(flt), "stats": None if stats is None else stats.to_wire(),
        "text": text,
    }


def texts_from_wire(reply: Mapping[str, Any]) -> list[Hit]:
    return [msg.hit_from_wire(raw) for raw in reply.get("texts") or []]


def answer_to_wire(answer: NodeAnswer[PerPartition]) -> dict[str, Any]:
    lists: dict[str, list[list[Any]]] = defaultdict(list)
    for per_kind in answer.partitions.values():
        for kind, candidates in per_kind.items():
            lists[kind].extend(msg.candidate_to_wire(c) for c in candidates)
    return {"held": sorted(answer.partitions), "hits": dict(lists), "unheld": answer.unheld}


def answer_from_wire(reply: Mapping[str, Any], kinds: Sequence[str]) -> NodeAnswer[PerPartition]:
    per_partition: dict[int, PerPartition] = {int(pid): {kind: [] for kind in kinds} for pid in reply.get("held", [])}
    for kind, raw in (reply.get("hits") or {}).items():
        for item in raw:
            candidate = msg.candidate_from_wire(item)
            if candidate.partition in per_partition and kind in per_partition[candidate.partition]:
                per_partition[candidate.partition][kind].append(candidate)
    return NodeAnswer(per_partition, [int(pid) for pid in reply.get("unheld", [])])


def stats_to_wire(answer: NodeAnswer[TermStats]) -> dict[str, Any]:
    return {"stats": {str(pid): stats.to_wire() for pid, stats in answer.partitions.items()}, "unheld": answer.unheld}


def stats_from_wire(reply: Mapping[str, Any]) -> NodeAnswer[TermStats]:
    stats = {int(pid): TermStats.from_wire(raw) for pid, raw in (reply.get("stats") or {}).items()}
    return NodeAnswer(stats, [int(pid) for pid in reply.get("unheld", [])])


# ------------------------------------------------------------------ coordinator
class DistributedSearch:
    def __init__(
        self, *, local_id: str, ring: Callable[[], Ring], is_alive: Callable[[str], bool], scatterer: Scatterer,
        local: LocalSearcher, call: PeerCall, analyzer: Analyzer, stats_cache: TermStatsCache,
        inline_text_max_nodes: int = INLINE_TEXT_MAX_NODES,
    ) -> None:
        self._local_id = local_id
        self._inline_text_max_nodes = inline_text_max_nodes
        self._ring = ring
        self._is_alive = is_alive
        self.scatterer = scatterer
        self.local = local
        self._call = call
        self.analyzer = analyzer
        self.stats_cache = stats_cache

    def replicas(self, session: Mapping[int, list[str]]) -> dict[int, list[str]]:
        """Every partition's live replicas, best first (the session's writers first)."""
        ring = self._ring()
        alive: dict[str, bool] = {}

        def live(nodes: Sequence[str]) -> tuple[str, ...]:
            return tuple(n for n in nodes if n == self._local_id or alive.setdefault(n, self._is_alive(n)))

        # Partitions share a few owner sets (one on one node, three on 3 nodes with N=2):
        # each set is ranked once per search, not once per partition. This ran on the
        # event loop for every search: 64 rankings took 1-3 ms on one node.
        ranked: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
        replicas = {}
        for pid in range(ring.partitions):
            owners = live(ring.read_owners(pid))
            wrote = live([n for n in session[pid] if n in ring.entries]) if pid in session else ()
            order = ranked.get((owners, wrote))
            if order is None:
                order = ranked[owners, wrote] = self.scatterer.order_with_session(wrote, [*owners, *(n for n in wrote if n not in owners)])
            replicas[pid] = list(order)  # each partition's own list: the scatter consumes it
        return replicas

    async def prepare(self, plan: SearchPlan) -> Prepared:
        """What a search needs besides the query vector: each partition's replicas in the
        order to ask them, the query's terms and their cluster-wide statistics. It needs no
        vector, so a coordinator runs it while the query is being embedded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + plan.timeout_s
        prepared = Prepared(self.replicas(plan.session), deadline)
        prepared.terms = await self._query_terms(plan) if "bm25" in plan.kinds and plan.query else []
        if prepared.terms:
            # Phase timings by Stopwatch (perf_counter), not loop.time(): uvloop's clock is libuv's
            # millisecond tick, cached per loop iteration, so every phase read as 0, 3.0 or 6.0 ms.
            watch = Stopwatch()
            prepared.stats = await self._global_stats(prepared.terms, prepared.replicas, deadline)
            prepared.timings["term_stats_ms"] = watch.ms()
        return prepared

    async def gather(self, plan: SearchPlan, prepared: Prepared | None = None) -> Gathered:
        """Candidates from every partition, within the deadline ``prepare`` set."""
        loop = asyncio.get_running_loop()
        if prepared is None:
            prepared = await self.prepare(plan)
        watch = Stopwatch()
        left_s = max(0.0, prepared.deadline - loop.time())
        texts: dict[str, Hit] = {}
        scattered = await self._candidates(plan, prepared.terms, prepared.stats, prepared.replicas, left_s, texts)
        timings = dict(prepared.timings, candidates_ms=watch.ms())
        lists: dict[str, list[Candidate]] = {kind: [] for kind in plan.kinds}
        for per_kind in scattered.payloads.values():
            for kind, candidates in per_kind.items():
                lists.setdefault(kind, []).extend(candidates)
        return Gathered(lists, scattered.holders, scattered.missing, scattered.coverage, scattered.hedges, timings, texts)

    def inline_text(self, plan: SearchPlan, replicas: Mapping[int, Sequence[str]]) -> bool:
        """Whether other nodes send the text of their best candidates with them, saving the
        fetch round trip: for a one-kind search of at most INLINE_TEXT_MAX_K results that asks
        at most ``inline_text_max_nodes`` other nodes first, so the text sent beyond the final
        k stays under that many times k chunks (Elasticsearch answers a one-shard search in
        one round trip the same way). Hybrid searches gather 100 candidates per kind: their
        text is fetched for the final k only."""
        if len(plan.kinds) != 1 or plan.k > INLINE_TEXT_MAX_K:
            return False
        others = {order[0] for order in replicas.values() if order} - {self._local_id}
        return 0 < len(others) <= self._inline_text_max_nodes

    async def _query_terms(self, plan: SearchPlan) -> list[str]:
        assert plan.query is not None
        if len(plan.query) <= ANALYZE_ON_LOOP_CHARS:
            return self.analyzer.query_terms(plan.query)
        terms: list[str] = await self.local.blocking(self.analyzer.query_terms, plan.query)
        return terms

    async def _global_stats(self, terms: list[str], replicas: dict[int, list[str]], deadline: float) -> TermStats | None:
        cached = self.stats_cache.global_stats(terms)
        if cached is not None:
            return cached
        wanted = self.stats_cache.missing(terms) or terms

        async def on(node: str, pids: list[int], left_s: float) -> NodeAnswer[TermStats]:
            if node == self._local_id:
                return await self.local.term_stats(wanted, pids)
            reply = await self._call(node, msg.TERM_STATS_PATH, {"terms": wanted, "partitions": pids}, left_s)
            return stats_from_wire(reply)

        known = self.stats_cache.known_df(terms)  # read before the pre-pass: entries may expire meanwhile
        left = max(0.0, deadline - asyncio.get_running_loop().time())
        scattered: Scattered[TermStats] = await self.scatterer.run(replicas, on, left)
        total = TermStats.merged(scattered.payloads.values())
        if not scattered.missing:  # partial statistics serve this query but are not cached
            self.stats_cache.store(total, wanted)
        if total.chunks == 0:
            # No partition answered the pre-pass in time (or none holds a chunk): each node then
            # scores with its own statistics, which is what a single-partition search would do.
            log.info("term statistics: no partition answered; nodes score with their own")
            return None
        # Every query term gets a df: the pre-pass's for what it asked (0 where no partition
        # has the term), the cache's for the rest, with the pre-pass's fresh totals.
        df = {**known, **{term: total.df.get(term, 0) for term in wanted}}
        return TermStats(total.chunks, total.terms, {term: df.get(term, 0) for term in terms})

    async def _candidates(
        self, plan: SearchPlan, terms: list[str], stats: TermStats | None, replicas: dict[int, list[str]], left_s: float,
        texts: dict[str, Hit],
    ) -> Scattered[PerPartition]:
        """Every partition's candidates; text another node sent with its own goes to ``texts``
        (any replica's text of a chunk id is the same: the id names the version)."""
        inline = self.inline_text(plan, replicas)

        async def on(node: str, pids: list[int], left: float) -> NodeAnswer[PerPartition]:
            if node == self._local_id:
                return await self.local.candidates(plan.kinds, plan.vector, terms, plan.k, plan.filter, pids, stats)
            body = candidates_body(plan.kinds, plan.vector, terms, plan.k, plan.filter, pids, stats, text=inline)
            reply = await self._call(node, msg.SEARCH_PATH, body, left)
            answer = answer_from_wire(reply, plan.kinds)
            texts.update((hit.chunk_id, hit) for hit in texts_from_wire(reply))
            return answer

        return await self.scatterer.run(replicas, on, left_s)

    async def search_here(self, plan: SearchPlan, prepared: Prepared) -> tuple[Gathered, list[Hit]] | None:
        """A one-kind search whose every partition is best answered by this node (one node,
        or a coordinator holding every partition) in a single local step: candidates and
        the hits of the final k together. None (search the usual way) when any partition's
        first choice is another node or this node does not hold all of them yet."""
        if len(plan.kinds) != 1 or not prepared.replicas:
            return None
        if any(not order or order[0] != self._local_id for order in prepared.replicas.values()):
            return None
        watch = Stopwatch()
        pids = sorted(prepared.replicas)
        left_s = max(0.0, prepared.deadline - asyncio.get_running_loop().time())
        search = self.local.search_and_fetch(plan.kinds[0], plan.vector, prepared.terms, plan.k, plan.filter, pids, prepared.stats)
        try:
            found = await asyncio.wait_for(search, left_s)
        except asyncio.TimeoutError:  # the deadline passed with nothing from any partition
            return Gathered({plan.kinds[0]: []}, {}, pids, 0.0, 0, dict(prepared.timings, candidates_ms=watch.ms())), []
        if found is None:
            return None
        candidates, hits = found
        timings = dict(prepared.timings, candidates_ms=watch.ms())
        holders = {pid: self._local_id for pid in pids}
        return Gathered({plan.kinds[0]: candidates}, holders, [], 1.0, 0, timings), hits

    async def fetch(
        self, final: Sequence[Candidate], holders: Mapping[int, str], left_s: float, texts: Mapping[str, Hit] | None = None,
    ) -> list[Hit]:
        """Text and metadata of the final candidates, in their order: what came with the
        candidates (``texts``), the rest from the nodes that answered for their partitions; a
        failed node's share is asked of another replica."""
        timeout = max(left_s, MIN_FETCH_S)
        found: dict[str, Hit] = {}
        groups: dict[str, list[Candidate]] = defaultdict(list)
        for candidate in final:
            sent = texts.get(candidate.chunk_id) if texts else None
            if sent is not None:
                found[candidate.chunk_id] = dataclasses.replace(sent, score=candidate.score)
            else:
                groups[holders.get(candidate.partition, self._local_id)].append(candidate)
        parts = await asyncio.gather(*(self._fetch_from(node, group, timeout) for node, group in groups.items()))
        for hits in parts:
            found.update((hit.chunk_id, hit) for hit in hits)
        return [found[c.chunk_id] for c in final if c.chunk_id in found]

    async def _fetch_from(self, node: str, candidates: list[Candidate], timeout_s: float, tried: frozenset[str] = frozenset()) -> list[Hit]:
        try:
            return await self._hits_on(node, candidates, timeout_s)
        except Exception as exc:
            log.info("fetching %d hits from %s failed: %s", len(candidates), node[:12], exc)
        tried = tried | {node}
        regrouped: dict[str, list[Candidate]] = defaultdict(list)
        for candidate in candidates:
            nxt = self._next_holder(candidate.partition, tried)
            if nxt is not None:
                regrouped[nxt].append(candidate)
        parts = await asyncio.gather(*(self._fetch_from(n, group, timeout_s, tried) for n, group in regrouped.items()))
        return [hit for hits in parts for hit in hits]

    async def _hits_on(self, node: str, candidates: list[Candidate], timeout_s: float) -> list[Hit]:
        if node == self._local_id:
            return await self.local.hits(candidates)
        reply = await self._call(node, msg.HITS_PATH, {"candidates": [msg.candidate_to_wire(c) for c in candidates]}, timeout_s)
        return [msg.hit_from_wire(raw) for raw in reply.get("hits", [])]

    def _next_holder(self, pid: int, tried: frozenset[str]) -> str | None:
        """The best live replica of ``pid`` not tried yet (it holds the same chunk ids when in sync)."""
        owners = [n for n in self._ring().read_owners(pid) if n not in tried and (n == self._local_id or self._is_alive(n))]
        ordered = self.scatterer.order(owners)
        return ordered[0] if ordered else None


def require_coverage(gathered: Gathered) -> None:
    if gathered.missing:
        raise IncompleteCoverage(
            f"no replica answered for partitions {gathered.missing[:32]} "
            f"(coverage {gathered.coverage}); retry, or search without require_full_coverage",
            field="require_full_coverage", retry_after_s=1,
        )
