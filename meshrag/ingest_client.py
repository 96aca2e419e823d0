"""`meshrag ingest` over several nodes at once, with backpressure.

Batches of documents are spread over the cluster's ingest nodes: each batch
goes to the node with the fewest batches in flight (ties in turn), up to
``concurrency`` per node. A node that pushes back (503/429 + Retry-After) gets
no new batch until its Retry-After has passed, and the refused batch waits
that long before it is re-sent; a node that cannot be reached is set aside for
a while (5 s, doubling up to 60 s) and its batch goes elsewhere at once.
Re-sending is safe because ingestion is idempotent (same id and content is
"unchanged" on the node).

The decisions live in two small classes with no I/O and no threads, driven by
time passed in: ``Scheduler`` (which node, what a failure does to a node) and
``RetryQueue`` (refused batches and how long each has waited). ``ParallelIngest``
is the thin driver that runs them over a thread pool; it takes ``clock`` and
``sleep`` (and the executor) so tests run it in virtual time.
"""

from __future__ import annotations

import heapq
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from meshrag.client import MeshClientError

Batch = list[dict[str, Any]]
Send = Callable[[str, Batch], dict[str, Any]]
Clock = Callable[[], float]
Sleep = Callable[[float], None]
ExecutorFactory = Callable[[int], Executor]

BUSY_STATUSES = frozenset({429, 503})
DEFAULT_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 30.0
SET_ASIDE_S = 5.0
MAX_SET_ASIDE_S = 60.0
DEFAULT_MAX_WAIT_S = 600.0
INGEST_ROLES = frozenset({"storage", "coordinator"})
RESUME_HINT = "documents sent so far are stored: re-run the same command to resume (re-runs skip unchanged documents)"


class IngestGaveUp(Exception):
    """The run stopped because a batch could not get through within the max-wait bound."""


# ---------------------------------------------------------------- discovery


def ingest_urls(members: Iterable[dict[str, Any]]) -> list[str]:
    """HTTP URLs of the alive members that take ingest traffic (storage or coordinator role)."""
    urls: list[str] = []
    for member in members:
        meta = member.get("meta") or {}
        roles = meta.get("roles") or member.get("roles") or []
        http = meta.get("http")
        if member.get("state") == "alive" and http and INGEST_ROLES.intersection(roles):
            url = f"http://{http}"
            if url not in urls:
                urls.append(url)
    return urls


def discover_nodes(seeds: Sequence[str], cluster_of: Callable[[str], dict[str, Any]]) -> list[str]:
    """The ingest nodes of the cluster that the first answering seed belongs to.

    ``cluster_of(url)`` returns that node's ``GET /v1/cluster`` document. The
    answering node comes first (it is the one the user named). The members'
    advertised addresses replace the seeds: a seed typed as ``localhost`` and
    the same node advertised as ``127.0.0.1`` must not count as two nodes.
    When the view lists no ingest node (gossip not started yet) the seeds are
    used as given. If no seed answers, the last seed's error is raised.
    """
    if not seeds:
        raise ValueError("no node URL to discover the cluster from")
    last_error: MeshClientError | None = None
    for seed in seeds:
        try:
            view = cluster_of(seed)
        except MeshClientError as exc:
            last_error = exc
            continue
        found = ingest_urls(view.get("members") or [])
        own = f"http://{(view.get('node') or {}).get('address')}"
        return sorted(found, key=lambda url: url != own) if found else list(seeds)
    assert last_error is not None
    raise last_error


# ---------------------------------------------------------------- decisions


@dataclass
class NodeState:
    """What the scheduler knows about one node."""

    url: str
    index: int
    in_flight: int = 0
    busy_until: float = 0.0  # Retry-After: no new batch before this time
    down_until: float = 0.0  # set aside as unreachable until this time
    down_since: float | None = None  # start of the current outage (None: reachable)
    set_aside_s: float = SET_ASIDE_S  # length of the next set-aside (doubles per failure)
    batches: int = 0  # batches sent to it, retries included
    ingested: int = 0  # batches it took (answered with results)

    def available_at(self) -> float:
        return max(self.busy_until, self.down_until)


def retry_after(seconds: float | None) -> float:
    """How long a refused batch and its node wait: the node's Retry-After, bounded.

    Absent or non-positive means 1 s: a node that says "0" and keeps refusing
    would otherwise be hammered in a loop that never adds up to the max-wait bound.
    """
    if seconds is None or seconds <= 0:
        return DEFAULT_RETRY_AFTER_S
    return min(seconds, MAX_RETRY_AFTER_S)


class Scheduler:
    """Which node takes the next batch, and what an answer does to a node. Pure: time is an argument."""

    def __init__(self, urls: Sequence[str], concurrency: int) -> None:
        if not urls:
            raise ValueError("no node to ingest through")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.nodes = [NodeState(url, i) for i, url in enumerate(urls)]
        self.concurrency = concurrency
        self._cursor = 0  # round-robin start among nodes tied on in-flight count

    def pick(self, now: float) -> NodeState | None:
        """The available node with the fewest batches in flight; ties go round-robin. None if all are full or waiting."""
        free = [n for n in self.nodes if n.in_flight < self.concurrency and n.available_at() <= now]
        if not free:
            return None
        fewest = min(n.in_flight for n in free)
        count = len(self.nodes)
        return min((n for n in free if n.in_flight == fewest), key=lambda n: (n.index - self._cursor) % count)

    def started(self, node: NodeState) -> None:
        node.in_flight += 1
        node.batches += 1
        self._cursor = (node.index + 1) % len(self.nodes)

    def succeeded(self, node: NodeState) -> None:
        """The node took the batch."""
        self.answered(node)
        node.ingested += 1

    def answered(self, node: NodeState) -> None:
        """The node answered, whatever it said: it is reachable again."""
        node.in_flight -= 1
        node.down_since = None
        node.set_aside_s = SET_ASIDE_S

    def busy(self, node: NodeState, seconds: float | None, now: float) -> float:
        """The node refused (503/429): it takes nothing new for its Retry-After. Returns that wait."""
        self.answered(node)
        delay = retry_after(seconds)
        node.busy_until = max(node.busy_until, now + delay)
        return delay

    def unreachable(self, node: NodeState, now: float) -> None:
        """No answer: set the node aside, longer each time in a row, so a dead node costs few timeouts."""
        node.in_flight -= 1
        if node.down_since is None:
            node.down_since = now
        node.down_until = max(node.down_until, now + node.set_aside_s)
        node.set_aside_s = min(node.set_aside_s * 2, MAX_SET_ASIDE_S)

    def all_down_since(self) -> float | None:
        """Since when every node has been unreachable (None if one is not)."""
        starts = [n.down_since for n in self.nodes]
        return None if any(s is None for s in starts) else max(s for s in starts if s is not None)

    def next_available(self, now: float) -> float | None:
        """The next time a waiting node can take a batch again (None if none is waiting)."""
        times = [n.available_at() for n in self.nodes if n.available_at() > now]
        return min(times, default=None)

    def used(self) -> list[str]:
        """The nodes that took at least one batch."""
        return [n.url for n in self.nodes if n.ingested]


@dataclass(order=True)
class PendingBatch:
    """A batch waiting to be re-sent; heap order is when it may go."""

    ready_at: float
    seq: int
    docs: Batch = field(compare=False)
    waited_s: float = field(default=0.0, compare=False)  # total time spent waiting so far
    queued_at: float = field(default=0.0, compare=False)
    last_error: str = field(default="", compare=False)

    def waited(self, now: float) -> float:
        return self.waited_s + (now - self.queued_at)


class RetryQueue:
    """Refused batches, each with the time it may be re-sent and how long it has waited in all."""

    def __init__(self) -> None:
        self._heap: list[PendingBatch] = []
        self._waited: dict[int, float] = {}  # seq -> wait so far, carried across re-sends

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, seq: int, docs: Batch, now: float, delay: float, error: str) -> None:
        batch = PendingBatch(now + delay, seq, docs, self._waited.get(seq, 0.0), now, error)
        heapq.heappush(self._heap, batch)

    def pop_ready(self, now: float) -> PendingBatch | None:
        """The batch that has been allowed to go the longest, if any may go now."""
        if not self._heap or self._heap[0].ready_at > now:
            return None
        batch = heapq.heappop(self._heap)
        self._waited[batch.seq] = batch.waited(now)
        return batch

    def forget(self, seq: int) -> None:
        """The batch got through: its wait no longer matters."""
        self._waited.pop(seq, None)

    def next_ready(self, now: float) -> float | None:
        return min((b.ready_at for b in self._heap if b.ready_at > now), default=None)

    def overdue(self, now: float, max_wait_s: float) -> PendingBatch | None:
        """A batch that has waited max_wait_s in all, if any."""
        return next((b for b in self._heap if b.waited(now) >= max_wait_s), None)

    def deadline(self, max_wait_s: float) -> float | None:
        """When the first waiting batch will have waited max_wait_s."""
        return min((b.queued_at + max_wait_s - b.waited_s for b in self._heap), default=None)


# ---------------------------------------------------------------- driver


@dataclass
class _Flight:
    node: NodeState
    seq: int
    docs: Batch


class ParallelIngest:
    """Send batches over several nodes, ``concurrency`` in flight per node, honouring backpressure.

    ``run(batches)`` reads ``batches`` lazily (one more only when a node can
    take it) and yields ``(batch, response)`` once per batch, in completion
    order. A 4xx other than 429 (a bad document) and any other error the node
    answers propagate as MeshClientError; IngestGaveUp ends the run when a
    batch has waited ``max_wait_s`` in all or every node has been unreachable
    that long.
    """

    def __init__(
        self,
        urls: Sequence[str],
        send: Send,
        *,
        concurrency: int = 2,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        executor: ExecutorFactory = ThreadPoolExecutor,
    ) -> None:
        self.scheduler = Scheduler(urls, concurrency)
        self.send = send
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.sleep = sleep
        self.executor = executor
        self.retries = 0  # batches re-sent
        self._queue = RetryQueue()
        self._flights: dict[Future[dict[str, Any]], _Flight] = {}

    @property
    def nodes_used(self) -> list[str]:
        return self.scheduler.used()

    def run(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, dict[str, Any]]]:
        """Yield (batch, response) per batch as each completes; one run per instance."""
        source = enumerate(batches)
        exhausted = False
        pool = self.executor(self.scheduler.concurrency * len(self.scheduler.nodes))
        try:
            while True:
                now = self.clock()
                self._check_bounds(now)
                exhausted = self._dispatch(pool, source, exhausted, now)
                if exhausted and not self._flights and not self._queue:
                    return
                for future in self._wait(exhausted, now):
                    yield from self._settle(future)
        finally:
            # On an error the batches still in flight finish (they cannot be
            # recalled); the ones not started yet are dropped.
            pool.shutdown(wait=True, cancel_futures=True)

    def _dispatch(self, pool: Executor, source: Iterator[tuple[int, Batch]], exhausted: bool, now: float) -> bool:
        """Start batches while a node can take one: refused batches first, then new ones. Returns exhausted."""
        while (node := self.scheduler.pick(now)) is not None:
            pending = self._queue.pop_ready(now)
            if pending is not None:
                self.retries += 1
                seq, docs = pending.seq, pending.docs
            elif exhausted:
                break
            else:
                item = next(source, None)
                if item is None:
                    return True
                seq, docs = item
            self.scheduler.started(node)
            self._flights[pool.submit(self.send, node.url, docs)] = _Flight(node, seq, docs)
        return exhausted

    def _wait(self, exhausted: bool, now: float) -> set[Future[dict[str, Any]]]:
        """Block until a batch finishes or the next timed event (a Retry-After ends, a bound is reached)."""
        timeout = self._next_event(exhausted, now)
        if self._flights:
            done, _ = wait(self._flights, timeout=timeout, return_when=FIRST_COMPLETED)
            return done
        # Nothing in flight, yet something is left: a refused batch or a node is waiting out its time.
        assert timeout is not None, "ingest scheduler stalled with nothing in flight and nothing waiting"
        self.sleep(timeout)
        return set()

    def _next_event(self, exhausted: bool, now: float) -> float | None:
        times = [self._queue.next_ready(now), self._queue.deadline(self.max_wait_s)]
        if len(self._queue) or not exhausted:
            times.append(self.scheduler.next_available(now))  # a node coming back only matters with work to give it
        down_since = self.scheduler.all_down_since()
        if down_since is not None:
            times.append(down_since + self.max_wait_s)
        future = [t for t in times if t is not None and t > now]
        return min(future) - now if future else None

    def _settle(self, future: Future[dict[str, Any]]) -> Iterator[tuple[Batch, dict[str, Any]]]:
        flight = self._flights.pop(future)
        try:
            response = future.result()
        except MeshClientError as exc:
            self._setback(flight, exc)
            return
        self.scheduler.succeeded(flight.node)
        self._queue.forget(flight.seq)
        yield flight.docs, response

    def _setback(self, flight: _Flight, exc: MeshClientError) -> None:
        """Queue the batch again after backpressure or no answer; anything else stops the run."""
        now = self.clock()
        if exc.status in BUSY_STATUSES:
            delay = self.scheduler.busy(flight.node, exc.retry_after_s, now)
        elif exc.status == 0:
            self.scheduler.unreachable(flight.node, now)
            delay = 0.0  # another node may take it at once
        else:
            self.scheduler.answered(flight.node)  # the run stops on this error anyway
            raise exc
        self._queue.put(flight.seq, flight.docs, now, delay, f"{flight.node.url}: {exc}")

    def _check_bounds(self, now: float) -> None:
        overdue = self._queue.overdue(now, self.max_wait_s)
        if overdue is not None:
            raise IngestGaveUp(
                f"gave up on a batch of {len(overdue.docs)} documents (first {_first_id(overdue.docs)}) after it waited "
                f"{overdue.waited(now):.0f} s in all (--max-wait {self.max_wait_s:g}); last answer: {overdue.last_error}; {RESUME_HINT}"
            )
        down_since = self.scheduler.all_down_since()
        if down_since is not None and now - down_since >= self.max_wait_s:
            urls = ", ".join(n.url for n in self.scheduler.nodes)
            raise IngestGaveUp(f"every node has been unreachable for {now - down_since:.0f} s ({urls}); {RESUME_HINT}")


def _first_id(docs: Batch) -> str:
    return repr(docs[0].get("id")) if docs else "-"

