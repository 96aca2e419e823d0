"""cluster/search.py: the coordinator's phases over in-process nodes, on virtual time.

A real Ring of 3 NORMAL nodes (P=8, N=2) places partitions; every node is an
in-process fake that answers the candidate, term-statistics and hits calls
from a small table of chunks, so the tests see exactly what crossed "the wire"
(the same dict bodies the HTTP routes carry).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import pytest

from meshrag.cluster import messages as msg
from meshrag.cluster.bm25stats import TermStatsCache
from meshrag.cluster.breaker import BreakerBoard, BreakerSettings
from meshrag.cluster.scatter import NodeAnswer, ScatterPolicy, Scatterer
from meshrag.cluster.search import (
    DistributedSearch, Gathered, IncompleteCoverage, SearchPlan, answer_from_wire, answer_to_wire, require_coverage,
    stats_from_wire, stats_to_wire,
)
from meshrag.cluster.selection import HedgeBudget, HedgeSettings, LatencyTracker
from meshrag.ring import Ring, RingEntry, RingStatus, RingTable, partition_for
from meshrag.store.analysis import Analyzer
from meshrag.store.lexical import TermStats
from meshrag.store.types import Candidate, Hit
from tests.virtual_loop import LoopClock, run_virtual

P = 8
NODES = ("a", "b", "c")


def ring() -> Ring:
    return Ring(RingTable(RingEntry(n, n, "z", RingStatus.NORMAL, 1) for n in NODES), P, 2)


def candidate(pid: int, score: float) -> Candidate:
    return Candidate(f"doc{pid}#1.0", f"doc{pid}", score, 1, pid)


class Cluster:
    """Each partition holds one chunk scoring pid/10; every call is logged."""

    def __init__(self, down: Sequence[str] = ()) -> None:
        self.down = set(down)
        self.calls: list[tuple[str, str, list[int]]] = []
        self.stats_sent: list[dict[str, Any] | None] = []

    def answer(self, node: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((node, path, list(body.get("partitions", []))))
        if node in self.down:
            raise ConnectionError(f"{node} is down")
        if path == msg.TERM_STATS_PATH:
            stats = {pid: TermStats(10, 100, {term: 1 for term in body["terms"]}) for pid in body["partitions"]}
            return stats_to_wire(NodeAnswer(stats))
        if path == msg.SEARCH_PATH:
            self.stats_sent.append(body.get("stats"))
            if body.get("terms") and body.get("stats") is not None:  # a df for every query term, or scores are wrong
                assert set(body["terms"]) <= set(body["stats"]["df"]), body["stats"]
            per = {pid: {kind: [candidate(pid, pid / 10)] for kind in body["kinds"]} for pid in body["partitions"]}
            reply = answer_to_wire(NodeAnswer(per))
            if body.get("text") is True:  # as a node does: the text it read ahead, for its candidates
                reply["texts"] = [msg.hit_to_wire(self.hit(candidate(pid, pid / 10), node)) for pid in body["partitions"]]
            return reply
        if path == msg.HITS_PATH:
            found = [msg.candidate_from_wire(raw) for raw in body["candidates"]]
            return {"hits": [msg.hit_to_wire(self.hit(c, node)) for c in found]}
        raise AssertionError(path)

    @staticmethod
    def hit(c: Candidate, node: str) -> Hit:
        return Hit(c.chunk_id, c.doc_id, c.score, f"text of {c.doc_id} from {node}", {}, c.version, c.partition)


class RemoteOnlyLocal:
    """The coordinator "x" holds nothing itself (it is not in the ring); its storage pool
    runs work inline and records it."""

    def __init__(self) -> None:
        self.offloaded: list[Any] = []

    async def blocking(self, fn: Any, *args: Any) -> Any:
        self.offloaded.append(fn)
        return fn(*args)

    async def candidates(self, *args: Any) -> NodeAnswer[Any]:
        raise AssertionError("x holds no partitions")

    async def term_stats(self, *args: Any) -> NodeAnswer[TermStats]:
        raise AssertionError("x holds no partitions")

    async def hits(self, *args: Any) -> list[Hit]:
        raise AssertionError("x holds no partitions")


def search(cluster: Cluster, ttl_s: float = 30.0, inline_text_max_nodes: int = 0) -> DistributedSearch:
    clock = LoopClock(asyncio.get_running_loop())
    hedging = HedgeSettings()
    scatterer = Scatterer(ScatterPolicy("x", LatencyTracker(clock), BreakerBoard(BreakerSettings(), clock), hedging, HedgeBudget(hedging)))

    async def call(node: str, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        await asyncio.sleep(0.005)
        return cluster.answer(node, path, body)

    return DistributedSearch(
        local_id="x", ring=ring, is_alive=lambda n: n in NODES, scatterer=scatterer, local=RemoteOnlyLocal(),  # type: ignore[arg-type]
        call=call, analyzer=Analyzer(), stats_cache=TermStatsCache(clock, ttl_s=ttl_s), inline_text_max_nodes=inline_text_max_nodes,
    )


def plan(kinds: tuple[str, ...] = ("dense", "bm25"), query: str = "boundary layers") -> SearchPlan:
    return SearchPlan(kinds, np.ones(4, np.float32), query, 10, None, {}, timeout_s=2.0)


def test_candidates_come_from_one_replica_per_partition_with_full_coverage() -> None:
    async def scenario() -> tuple[Gathered, Cluster]:
        cluster = Cluster()
        return await search(cluster).gather(plan()), cluster

    (gathered, cluster), _ = run_virtual(scenario)
    assert gathered.coverage == 1.0 and gathered.missing == []
    assert sorted(c.partition for c in gathered.lists["dense"]) == list(range(P))
    asked = [pid for node, path, pids in cluster.calls if path == msg.SEARCH_PATH for pid in pids]
    assert sorted(asked) == list(range(P)), "each partition asked once"
    assert all(gathered.holders[pid] in ring().read_owners(pid) for pid in range(P))


def test_replicas_rank_each_owner_set_once_and_give_every_partition_its_own_list() -> None:
    async def scenario() -> tuple[dict[int, list[str]], int]:
        engine = search(Cluster())
        ranked = []
        order = engine.scatterer.order
        engine.scatterer.order = lambda nodes: ranked.append(list(nodes)) or order(nodes)  # type: ignore[method-assign]
        replicas = engine.replicas({3: ["c"]})
        return replicas, len(ranked)

    (replicas, rankings), _ = run_virtual(scenario)
    assert all(sorted(replicas[pid]) == sorted(ring().read_owners(pid)) for pid in range(P) if pid != 3)
    assert replicas[3][0] == "c", "the session's writer first"
    owner_sets = {(tuple(ring().read_owners(pid)), ("c",) if pid == 3 else ()) for pid in range(P)}
    assert rankings == 2 * len(owner_sets), "one ranking (session nodes, then owners) per distinct owner set"
    replicas[0].clear()
    assert all(replicas[pid] for pid in range(1, P)), "lists are not shared between partitions"


def test_term_statistics_are_summed_over_every_partition_sent_with_the_query_and_cached() -> None:
    async def scenario() -> tuple[DistributedSearch, Cluster]:
        cluster = Cluster()
        engine = search(cluster)
        await engine.gather(plan())
        await engine.gather(plan())
        return engine, cluster

    (engine, cluster), _ = run_virtual(scenario)
    stats_calls = [call for call in cluster.calls if call[1] == msg.TERM_STATS_PATH]
    assert sorted(pid for _, _, pids in stats_calls for pid in pids) == list(range(P)), "one pre-pass, then the cache"
    cached = engine.stats_cache.global_stats(Analyzer().query_terms("boundary layers"))
    assert cached == TermStats(10 * P, 100 * P, {"boundari": P, "layer": P})


def test_a_partial_pre_pass_still_sends_the_cached_df_of_the_other_terms() -> None:
    async def scenario() -> Cluster:
        cluster = Cluster()
        engine = search(cluster)
        await engine.gather(plan(query="boundary layers"))
        cluster.stats_sent.clear()

        def stats_partial(node: str, path: str, body: dict[str, Any], answer: Any = cluster.answer) -> dict[str, Any]:
            if path == msg.TERM_STATS_PATH and node in ("b", "c"):  # b and c's shared partitions go unanswered
                raise ConnectionError("pre-pass lost")
            return answer(node, path, body)

        cluster.answer = stats_partial  # type: ignore[method-assign]
        await engine.gather(plan(query="boundary flutter"))  # the fake node asserts every df is there
        return cluster

    cluster, _ = run_virtual(scenario)
    assert cluster.stats_sent and all(stats is not None and set(stats["df"]) == {"boundari", "flutter"} for stats in cluster.stats_sent)


def test_when_no_partition_answers_the_pre_pass_nodes_score_with_their_own_statistics() -> None:
    async def scenario() -> tuple[Gathered, Cluster]:
        cluster = Cluster()

        def stats_down(node: str, path: str, body: dict[str, Any], answer: Any = cluster.answer) -> dict[str, Any]:
            if path == msg.TERM_STATS_PATH:
                raise ConnectionError("pre-pass lost")
            return answer(node, path, body)

        cluster.answer = stats_down  # type: ignore[method-assign]
        return await search(cluster).gather(plan(kinds=("bm25",))), cluster

    (gathered, cluster), _ = run_virtual(scenario)
    assert gathered.coverage == 1.0 and len(gathered.lists["bm25"]) == P
    assert cluster.stats_sent and all(stats is None for stats in cluster.stats_sent), "no statistics beat empty ones"


def test_a_long_query_is_analyzed_off_the_event_loop_and_a_short_one_on_it() -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        engine = search(Cluster())
        await engine.gather(plan(kinds=("bm25",), query="boundary layers"))
        short = list(engine.local.offloaded)  # type: ignore[attr-defined]
        await engine.gather(plan(kinds=("bm25",), query="boundary layers " * 300))
        return short, engine.local.offloaded  # type: ignore[attr-defined]

    (short, long_), _ = run_virtual(scenario)
    assert short == [] and [fn.__func__ for fn in long_] == [Analyzer.query_terms]


def test_dense_only_search_needs_no_term_statistics() -> None:
    async def scenario() -> Cluster:
        cluster = Cluster()
        await search(cluster).gather(plan(kinds=("dense",)))
        return cluster

    cluster, _ = run_virtual(scenario)
    assert not [call for call in cluster.calls if call[1] == msg.TERM_STATS_PATH]


def test_statistics_with_a_partition_missing_serve_the_query_but_are_not_cached() -> None:
    async def scenario() -> DistributedSearch:
        cluster = Cluster(down=["b", "c"])  # partitions owned by b and c alone get no answer
        engine = search(cluster)
        await engine.gather(plan())
        return engine

    engine, _ = run_virtual(scenario)
    assert engine.stats_cache.global_stats(["boundari"]) is None


def test_a_dead_node_s_partitions_are_answered_by_their_other_replica() -> None:
    async def scenario() -> Gathered:
        return await search(Cluster(down=["b"])).gather(plan(kinds=("dense",)))

    gathered, _ = run_virtual(scenario)
    assert gathered.coverage == 1.0
    assert "b" not in gathered.holders.values()


def test_fetch_returns_text_for_the_final_candidates_in_their_order_from_their_holders() -> None:
    async def scenario() -> list[Hit]:
        engine = search(Cluster())
        gathered = await engine.gather(plan(kinds=("dense",)))
        final = sorted(gathered.lists["dense"], key=lambda c: -c.score)[:3]
        return await engine.fetch(final, gathered.holders, 1.0)

    hits, _ = run_virtual(scenario)
    assert [h.partition for h in hits] == [7, 6, 5]
    assert all(h.text.startswith(f"text of doc{h.partition}") for h in hits)


def test_fetch_asks_another_replica_when_the_holder_fails() -> None:
    async def scenario() -> tuple[list[Hit], str]:
        cluster = Cluster()
        engine = search(cluster)
        gathered = await engine.gather(plan(kinds=("dense",)))
        best = max(gathered.lists["dense"], key=lambda c: c.score)
        holder = gathered.holders[best.partition]
        cluster.down.add(holder)
        return await engine.fetch([best], gathered.holders, 1.0), holder

    (hits, holder), _ = run_virtual(scenario)
    assert len(hits) == 1 and not hits[0].text.endswith(f"from {holder}")


def test_require_coverage_names_the_missing_partitions() -> None:
    with pytest.raises(IncompleteCoverage) as raised:
        require_coverage(Gathered({}, {}, [3, 5], 0.75))
    assert raised.value.status == 503 and "[3, 5]" in raised.value.message
    require_coverage(Gathered({}, {}, [], 1.0))


def test_wire_round_trip_keeps_candidates_per_partition_and_unheld() -> None:
    per = defaultdict(dict, {1: {"dense": [candidate(1, 0.5)], "bm25": []}, 4: {"dense": [], "bm25": [candidate(4, 2.0)]}})
    back = answer_from_wire(answer_to_wire(NodeAnswer(dict(per), [2])), ("dense", "bm25"))
    assert back.partitions == dict(per) and back.unheld == [2]
    stats = NodeAnswer({3: TermStats(5, 50, {"wing": 2})}, [7])
    assert stats_from_wire(stats_to_wire(stats)).partitions == stats.partitions


# ------------------------------------------------------------------ one local step
class CountingPool:
    """The storage pool, run inline: counts the jobs a search hands to it."""

    def __init__(self) -> None:
        self.jobs = 0

    async def blocking(self, fn: Any, *args: Any) -> Any:
        self.jobs += 1
        return fn(*args)


def local_search(engine: Any, entries: Sequence[str], held: set[int] | None = None) -> tuple[DistributedSearch, CountingPool]:
    from meshrag.cluster.search import LocalSearcher

    clock = LoopClock(asyncio.get_running_loop())
    hedging = HedgeSettings()
    scatterer = Scatterer(ScatterPolicy("x", LatencyTracker(clock), BreakerBoard(BreakerSettings(), clock), hedging, HedgeBudget(hedging)))
    pool = CountingPool()
    local = LocalSearcher(engine, lambda pids: set(pids) if held is None else set(pids) & held, pool.blocking)
    table = RingTable(RingEntry(n, n, "z", RingStatus.NORMAL, 1) for n in entries)

    async def call(node: str, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        raise AssertionError(f"no remote call expected, got {path} to {node}")

    return DistributedSearch(
        local_id="x", ring=lambda: Ring(table, P, 1), is_alive=lambda n: n in entries, scatterer=scatterer, local=local,
        call=call, analyzer=Analyzer(), stats_cache=TermStatsCache(clock, ttl_s=30.0),
    ), pool


@pytest.fixture
def stored(tmp_path: Any) -> Any:
    from meshrag.store.engine import StorageEngine
    from tests.store.conftest import DIM, make_doc

    engine = StorageEngine(tmp_path / "data", P, DIM)
    engine.open()
    engine.upsert([make_doc(f"doc-{i}") for i in range(40)])
    yield engine
    engine.close()


def test_a_search_whose_partitions_are_all_here_takes_one_step_and_finds_what_the_phases_find(stored: Any) -> None:
    from tests.store.conftest import DIM, unit_vector

    query = SearchPlan(("dense",), unit_vector(7, DIM), None, 5, None, {}, timeout_s=2.0)

    async def scenario() -> tuple[Any, list[Hit], list[Hit], int]:
        engine, pool = local_search(stored, ["x"])
        prepared = await engine.prepare(query)
        here = await engine.search_here(query, prepared)
        assert here is not None
        jobs = pool.jobs
        gathered = await engine.gather(query, prepared)
        phased = await engine.fetch(sorted(gathered.lists["dense"], key=lambda c: (-c.score, c.chunk_id))[:5], gathered.holders, 1.0)
        return here[0], here[1], phased, jobs

    (gathered, hits, phased, jobs), _ = run_virtual(scenario)
    assert jobs == 1, "candidates and their text in one job of the storage pool"
    assert gathered.coverage == 1.0 and gathered.missing == []
    assert [(h.chunk_id, h.text, h.score) for h in hits] == [(h.chunk_id, h.text, h.score) for h in phased]
    assert len(hits) == 5


def test_a_search_takes_the_usual_phases_when_a_partition_is_not_held_here_or_best_asked_elsewhere(stored: Any) -> None:
    from tests.store.conftest import DIM, unit_vector

    query = SearchPlan(("dense",), unit_vector(7, DIM), None, 5, None, {}, timeout_s=2.0)
    hybrid = SearchPlan(("dense", "bm25"), unit_vector(7, DIM), "first part", 5, None, {}, timeout_s=2.0)

    async def scenario() -> list[Any]:
        not_held, _ = local_search(stored, ["x"], held=set(range(P - 1)))
        shared, _ = local_search(stored, ["x", "y"])  # N=1 over two nodes: some partitions are y's alone
        alone, _ = local_search(stored, ["x"])
        return [
            await not_held.search_here(query, await not_held.prepare(query)),
            await shared.search_here(query, await shared.prepare(query)),
            await alone.search_here(hybrid, await alone.prepare(hybrid)),  # two kinds: searched concurrently instead
        ]

    answers, _ = run_virtual(scenario)
    assert answers == [None, None, None]


def test_a_fetch_after_candidates_is_served_from_the_text_read_ahead_without_a_storage_job(stored: Any) -> None:
    from meshrag.clock import VirtualClock
    from meshrag.cluster.hit_cache import HitCache
    from meshrag.cluster.search import LocalSearcher
    from tests.store.conftest import DIM, unit_vector

    pool = CountingPool()
    cache = HitCache(VirtualClock())
    local = LocalSearcher(stored, lambda pids: set(pids), pool.blocking, cache)
    plain = LocalSearcher(stored, lambda pids: set(pids), CountingPool().blocking)

    async def scenario() -> tuple[list[Hit], list[Hit], int, list[Hit]]:
        answer = await local.candidates(("dense",), unit_vector(7, DIM), [], 5, None, list(range(P)), None)
        best = sorted((c for per in answer.partitions.values() for c in per["dense"]), key=lambda c: -c.score)[:5]
        jobs = pool.jobs
        served = await local.hits(best)
        after = pool.jobs - jobs
        outsider = Candidate("doc-39#1#1", "doc-39", 0.1, 1, partition_for("doc-39", P))  # not read ahead: from storage
        return served, await plain.hits(best), after, await local.hits([best[0], outsider])

    (served, from_storage, jobs, mixed), _ = run_virtual(scenario)
    assert jobs == 0, "the fetch of the best candidates took no storage job"
    assert [(h.chunk_id, h.text, h.score) for h in served] == [(h.chunk_id, h.text, h.score) for h in from_storage]
    assert [h.chunk_id for h in mixed] == [served[0].chunk_id, "doc-39#1#1"]
    assert mixed[1].text == "doc-39 second part" and cache.missed == 1


# ------------------------------------------------------------------ text with the candidates
def test_a_one_kind_search_over_few_nodes_gets_text_with_its_candidates_and_fetches_nothing() -> None:
    async def scenario() -> tuple[list[Hit], Cluster]:
        cluster = Cluster()
        engine = search(cluster, inline_text_max_nodes=3)  # "x" holds nothing: a, b and c answer
        gathered = await engine.gather(plan(kinds=("dense",)))
        final = sorted(gathered.lists["dense"], key=lambda c: -c.score)[:3]
        return await engine.fetch(final, gathered.holders, 1.0, gathered.texts), cluster

    (hits, cluster), _ = run_virtual(scenario)
    assert [h.partition for h in hits] == [7, 6, 5]
    assert [h.score for h in hits] == [0.7, 0.6, 0.5]  # scored as the candidates are
    assert all(h.text.startswith(f"text of doc{h.partition} from ") for h in hits)
    assert not [call for call in cluster.calls if call[1] == msg.HITS_PATH], "no fetch round trip"


def test_text_comes_inline_only_for_one_kind_small_k_searches_that_ask_few_other_nodes() -> None:
    async def scenario() -> list[bool]:
        engine = search(Cluster(), inline_text_max_nodes=2)
        three = (await engine.prepare(plan(kinds=("dense",)))).replicas  # a, b and c are asked first
        two = {pid: ["a"] if pid % 2 else ["b"] for pid in range(P)}
        wide = SearchPlan(("dense",), np.ones(4, np.float32), None, 17, None, {}, timeout_s=2.0)
        return [
            engine.inline_text(plan(kinds=("dense",)), two),
            engine.inline_text(plan(kinds=("dense",)), three),
            engine.inline_text(plan(kinds=("dense", "bm25")), two),  # hybrid: 100 candidates a kind
            engine.inline_text(wide, two),
            engine.inline_text(plan(kinds=("dense",)), {pid: ["x"] for pid in range(P)}),  # nobody else
        ]

    answers, _ = run_virtual(scenario)
    assert answers == [True, False, False, False, False]


def test_a_final_candidate_without_text_sent_along_is_fetched_from_its_holder() -> None:
    async def scenario() -> tuple[list[Hit], Cluster, str]:
        cluster = Cluster()
        engine = search(cluster)
        gathered = await engine.gather(plan(kinds=("dense",)))
        final = sorted(gathered.lists["dense"], key=lambda c: -c.score)[:2]
        sent = {final[0].chunk_id: Cluster.hit(final[0], "elsewhere")}
        return await engine.fetch(final, gathered.holders, 1.0, sent), cluster, gathered.holders[final[1].partition]

    (hits, cluster, holder), _ = run_virtual(scenario)
    assert hits[0].text.endswith("from elsewhere")
    assert hits[1].text.endswith(f"from {holder}")
    assert len([call for call in cluster.calls if call[1] == msg.HITS_PATH]) == 1, "one fetch, for the second only"


def test_a_node_sends_the_text_it_read_ahead_for_its_candidates(stored: Any) -> None:
    from meshrag.clock import VirtualClock
    from meshrag.cluster.hit_cache import HitCache
    from meshrag.cluster.search import LocalSearcher
    from tests.store.conftest import DIM, unit_vector

    pool = CountingPool()
    local = LocalSearcher(stored, lambda pids: set(pids), pool.blocking, HitCache(VirtualClock()))

    async def scenario() -> tuple[Any, list[Hit], int]:
        answer = await local.candidates(("dense",), unit_vector(7, DIM), [], 5, None, list(range(P)), None)
        jobs = pool.jobs
        return answer, local.kept_hits(answer), pool.jobs - jobs

    (answer, sent, jobs), _ = run_virtual(scenario)
    ids = sorted(c.chunk_id for per in answer.partitions.values() for c in per["dense"])
    assert sorted(h.chunk_id for h in sent) == ids and len(ids) == 5
    assert jobs == 0 and all(h.text.startswith(h.doc_id) for h in sent)
