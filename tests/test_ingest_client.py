"""ingest_client.py: spreading batches over nodes, backpressure and failures, in virtual time.

No servers and no real sleeping: ``send`` is scripted per node, the clock is
virtual (each send takes ``work_s`` of it, ``sleep`` advances it), and an
inline executor runs each send when it is submitted. Its future is collected
only at the driver's next wait, so the batches dispatched together count as
in flight together, as they would on a thread pool.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest

from meshrag.client import MeshClientError
from meshrag.ingest_client import (
    MAX_RETRY_AFTER_S,
    SET_ASIDE_S,
    IngestGaveUp,
    ParallelIngest,
    RetryQueue,
    Scheduler,
    discover_nodes,
    ingest_urls,
    retry_after,
)

A, B, C = "http://a:7070", "http://b:7070", "http://c:7070"
Batch = list[dict[str, Any]]
Script = Callable[[int], MeshClientError | None]  # call number on that node (1-based) -> error to raise, or None


class InlineExecutor(Executor):
    """Runs the call at submit time; the driver sees the result at its next wait."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the driver like a thread pool would
            future.set_exception(exc)
        return future


@dataclass
class Call:
    at: float
    url: str
    ids: list[str]
    error: MeshClientError | None


@dataclass
class FakeCluster:
    """Nodes that answer as scripted, each call taking ``work_s`` of virtual time."""

    scripts: dict[str, Script] = field(default_factory=dict)
    work_s: float = 0.5
    slow_failure_s: float = 0.0  # extra time a failing call takes (a connect timeout)
    now: float = 0.0
    calls: list[Call] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the driver must never spin"
        self.sleeps.append(seconds)
        self.now += seconds

    def send(self, url: str, batch: Batch) -> dict[str, Any]:
        number = sum(1 for c in self.calls if c.url == url) + 1
        error = self.scripts.get(url, lambda n: None)(number)
        self.calls.append(Call(self.now, url, [d["id"] for d in batch], error))
        self.now += self.work_s + (self.slow_failure_s if error else 0.0)
        if error is not None:
            raise error
        return {"results": [{"id": d["id"], "status": "created"} for d in batch]}

    def ingest(self, urls: list[str], concurrency: int = 2, max_wait_s: float = 600.0) -> ParallelIngest:
        return ParallelIngest(urls, self.send, concurrency=concurrency, max_wait_s=max_wait_s,
                              clock=self.clock, sleep=self.sleep, executor=InlineExecutor)

    def calls_to(self, url: str) -> list[Call]:
        return [c for c in self.calls if c.url == url]


def busy(seconds: float | None = 2.0, status: int = 503) -> MeshClientError:
    return MeshClientError(status, "overloaded", "the node is busy", retry_after_s=seconds)


def unreachable() -> MeshClientError:
    return MeshClientError(0, "unreachable", "cannot reach node")


def batches(count: int, size: int = 3) -> list[Batch]:
    return [[{"id": f"d{b:03d}-{i}", "text": "x"} for i in range(size)] for b in range(count)]


def reported_ids(results: Iterator[tuple[Batch, dict[str, Any]]]) -> list[str]:
    return [r["id"] for _, response in results for r in response["results"]]


# ---------------------------------------------------------------- no batch lost or duplicated


def test_every_document_is_reported_exactly_once_through_busy_and_unreachable_nodes() -> None:
    cluster = FakeCluster(scripts={
        B: lambda n: busy(2.0) if n % 3 == 0 else None,
        C: lambda n: unreachable() if n <= 2 else None,
    })
    ingest = cluster.ingest([A, B, C])
    source = batches(40)
    ids = reported_ids(ingest.run(source))
    expected = [d["id"] for batch in source for d in batch]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    failures = sum(1 for c in cluster.calls if c.error is not None)
    assert failures >= 3 and ingest.retries == failures, "every refused batch is re-sent once per refusal"
    assert ingest.nodes_used == [A, B, C]


def test_the_source_is_read_lazily() -> None:
    pulled = 0

    def source() -> Iterator[Batch]:
        nonlocal pulled
        for batch in batches(100):
            pulled += 1
            yield batch

    cluster = FakeCluster()
    run = cluster.ingest([A, B], concurrency=2).run(source())
    next(run)
    assert pulled == 4, "no more batches read than the nodes have room for (2 per node)"
    assert len(reported_ids(run)) == 99 * 3


# ---------------------------------------------------------------- spreading the load


def test_scheduler_picks_the_node_with_fewest_in_flight_ties_in_turn() -> None:
    scheduler = Scheduler([A, B, C], concurrency=2)
    order = []
    while (node := scheduler.pick(0.0)) is not None:
        scheduler.started(node)
        order.append(node.url)
    assert order == [A, B, C, A, B, C], "ties go round-robin, and no node gets more than `concurrency`"
    b = scheduler.nodes[1]
    scheduler.succeeded(b)
    scheduler.succeeded(b)
    assert scheduler.pick(0.0) is b
    scheduler.started(b)
    assert scheduler.pick(0.0) is b, "B still has fewer in flight (1) than A and C (2)"


def test_batches_spread_over_nodes_by_in_flight_count() -> None:
    cluster = FakeCluster()
    ingest = cluster.ingest([A, B, C], concurrency=2)
    assert len(reported_ids(ingest.run(batches(12)))) == 36
    assert [c.url for c in cluster.calls[:6]] == [A, B, C, A, B, C]
    assert {url: len(cluster.calls_to(url)) for url in (A, B, C)} == {A: 4, B: 4, C: 4}


def test_a_node_that_is_full_gets_nothing_more() -> None:
    scheduler = Scheduler([A], concurrency=1)
    node = scheduler.pick(0.0)
    assert node is not None
    scheduler.started(node)
    assert scheduler.pick(0.0) is None


# ---------------------------------------------------------------- backpressure


@pytest.mark.parametrize(("given", "waited"), [(None, 1.0), (0.0, 1.0), (2.0, 2.0), (3600.0, MAX_RETRY_AFTER_S)])
def test_retry_after_defaults_to_one_second_and_is_capped(given: float | None, waited: float) -> None:
    assert retry_after(given) == waited


def test_retry_after_is_honoured_by_the_node_and_the_refused_batch() -> None:
    cluster = FakeCluster(scripts={A: lambda n: busy(2.0) if n == 1 else None})
    ids = reported_ids(cluster.ingest([A, B], concurrency=1).run(batches(10)))
    assert len(ids) == 30 == len(set(ids))
    refused = cluster.calls_to(A)[0]
    assert refused.error is not None
    refused_at = refused.at + cluster.work_s  # the 503 arrives when the call ends
    later_on_a = cluster.calls_to(A)[1:]
    assert later_on_a and all(c.at >= refused_at + 2.0 for c in later_on_a), "A takes no batch during its Retry-After"
    resent = [c for c in cluster.calls[1:] if c.ids == refused.ids]
    assert len(resent) == 1 and resent[0].at >= refused_at + 2.0, "the refused batch waits Retry-After, then goes once"
    assert any(refused_at <= c.at < refused_at + 2.0 for c in cluster.calls_to(B)), "B keeps working meanwhile"


def test_429_is_backpressure_too() -> None:
    cluster = FakeCluster(scripts={A: lambda n: busy(None, status=429) if n == 1 else None})
    ingest = cluster.ingest([A], concurrency=1)
    assert len(reported_ids(ingest.run(batches(2)))) == 6
    # No Retry-After: 1 s, counted from the answer (which took work_s), then the batch goes again.
    assert cluster.sleeps == [1.0] and ingest.retries == 1
    assert cluster.calls[1].at == pytest.approx(cluster.work_s + 1.0) and cluster.calls[1].ids == cluster.calls[0].ids


# ---------------------------------------------------------------- unreachable nodes


def test_an_unreachable_node_is_set_aside_doubling_and_its_batch_goes_elsewhere() -> None:
    cluster = FakeCluster(scripts={B: lambda n: unreachable() if n <= 2 else None}, work_s=1.0)
    ids = reported_ids(cluster.ingest([A, B], concurrency=1).run(batches(40)))
    assert len(ids) == 120 == len(set(ids))
    on_b = cluster.calls_to(B)
    first, second, third = on_b[0], on_b[1], on_b[2]
    assert first.error is not None and second.error is not None and third.error is None
    failed_at = first.at + cluster.work_s
    assert second.at >= failed_at + SET_ASIDE_S, "no batch while set aside"
    assert third.at >= second.at + cluster.work_s + 2 * SET_ASIDE_S, "set aside twice as long after a second failure"
    moved = next(c for c in cluster.calls if c.ids == first.ids and c is not first)
    assert moved.url == A and moved.at < failed_at + SET_ASIDE_S, "its batch went to the other node without waiting"


# ---------------------------------------------------------------- bounds and errors


def test_gives_up_after_a_batch_waited_max_wait_in_all() -> None:
    cluster = FakeCluster(scripts={A: lambda n: busy(2.0), B: lambda n: busy(2.0)})
    with pytest.raises(IngestGaveUp, match=r"waited 10 s in all \(--max-wait 10\).*re-run the same command to resume"):
        for _ in cluster.ingest([A, B], max_wait_s=10).run(batches(3)):
            pass
    # Waiting is the time spent queued for a node (Retry-After), not the time the sends took.
    assert sum(cluster.sleeps) == pytest.approx(10.0) and set(cluster.sleeps) == {2.0}


def test_gives_up_when_every_node_was_unreachable_for_max_wait() -> None:
    # Each failed call takes 10 s (a connect timeout), so the batches themselves
    # wait little between tries: the every-node-unreachable bound ends the run.
    cluster = FakeCluster(scripts={A: lambda n: unreachable(), B: lambda n: unreachable()}, slow_failure_s=10.0)
    with pytest.raises(IngestGaveUp, match=r"every node has been unreachable for \d+ s \(http://a:7070, http://b:7070\)"):
        for _ in cluster.ingest([A, B], max_wait_s=30).run(batches(3)):
            pass
    assert 30.0 <= cluster.now < 30.0 + 2 * (10.0 + cluster.work_s) + 60.0


def test_a_validation_error_stops_the_run_with_the_server_message() -> None:
    bad = MeshClientError(400, "invalid_document", "documents[1].text must be a string", field="documents[1].text")
    cluster = FakeCluster(scripts={A: lambda n: bad if n == 2 else None})
    results = []
    with pytest.raises(MeshClientError) as raised:
        for item in cluster.ingest([A], concurrency=1).run(batches(10)):
            results.append(item)
    assert raised.value is bad and raised.value.field == "documents[1].text"
    assert len(results) == 1 and len(cluster.calls) == 2, "nothing is sent after the bad batch"


def test_retry_queue_counts_wait_across_resends() -> None:
    queue = RetryQueue()
    docs: Batch = [{"id": "x"}]
    queue.put(7, docs, now=0.0, delay=2.0, error="busy")
    assert queue.pop_ready(1.0) is None and queue.next_ready(1.0) == 2.0
    batch = queue.pop_ready(2.5)
    assert batch is not None and batch.seq == 7
    queue.put(7, docs, now=3.0, delay=2.0, error="busy")
    assert queue.overdue(5.0, max_wait_s=5.0) is None
    overdue = queue.overdue(5.5, max_wait_s=5.0)
    assert overdue is not None and overdue.waited(5.5) == pytest.approx(5.0)
    assert queue.deadline(5.0) == pytest.approx(5.5)


# ---------------------------------------------------------------- discovery


def member(name: str, http: str | None, state: str = "alive", roles: tuple[str, ...] = ("storage", "coordinator")) -> dict[str, Any]:
    meta: dict[str, Any] = {"roles": list(roles), "zone": "z"}
    if http:
        meta["http"] = http
    return {"name": name, "state": state, "address": http or "?", "roles": list(roles), "meta": meta}


def test_ingest_urls_keep_alive_members_that_store_or_coordinate() -> None:
    members = [
        member("n1", "10.0.0.1:7070"),
        member("n2", "10.0.0.2:7070", state="suspect"),
        member("n3", "10.0.0.3:7070", state="dead"),
        member("n4", "10.0.0.4:7070", roles=("generator",)),
        member("n5", None),
        member("n6", "10.0.0.6:7070", roles=("coordinator", "generator")),
    ]
    assert ingest_urls(members) == ["http://10.0.0.1:7070", "http://10.0.0.6:7070"]


def test_discovery_asks_the_first_seed_that_answers_and_puts_it_first() -> None:
    view = {"node": {"address": "10.0.0.2:7070"}, "members": [member("n1", "10.0.0.1:7070"), member("n2", "10.0.0.2:7070")]}
    asked = []

    def cluster_of(url: str) -> dict[str, Any]:
        asked.append(url)
        if url == "http://down:7070":
            raise unreachable()
        return view

    assert discover_nodes(["http://down:7070", "http://localhost:7070"], cluster_of) == ["http://10.0.0.2:7070", "http://10.0.0.1:7070"]
    assert asked == ["http://down:7070", "http://localhost:7070"]


def test_discovery_falls_back_to_the_seeds_or_raises_when_none_answers() -> None:
    assert discover_nodes([A, B], lambda url: {"node": {}, "members": []}) == [A, B]

    def nobody(url: str) -> dict[str, Any]:
        raise unreachable()

    with pytest.raises(MeshClientError, match="cannot reach"):
        discover_nodes([A, B], nobody)


def test_nodes_used_lists_only_the_nodes_that_took_batches() -> None:
    cluster = FakeCluster(scripts={B: lambda n: unreachable(), C: lambda n: busy(30.0)})
    ingest = cluster.ingest([A, B, C])
    assert len(reported_ids(ingest.run(batches(6)))) == 18
    assert ingest.nodes_used == [A] and {c.url for c in cluster.calls} == {A, B, C}


def test_an_answer_even_a_refusal_ends_a_node_outage() -> None:
    scheduler = Scheduler([A, B], concurrency=1)
    a, b = scheduler.nodes
    for node in (a, b):
        scheduler.started(node)
        scheduler.unreachable(node, now=0.0)
    assert scheduler.all_down_since() == 0.0 and scheduler.pick(1.0) is None
    assert scheduler.next_available(1.0) == SET_ASIDE_S
    picked = scheduler.pick(SET_ASIDE_S)
    assert picked is a
    scheduler.started(a)
    scheduler.busy(a, 2.0, now=SET_ASIDE_S)
    assert scheduler.all_down_since() is None and a.set_aside_s == SET_ASIDE_S
    assert a.available_at() == SET_ASIDE_S + 2.0
