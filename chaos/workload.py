"""The chaos workload: concurrent upserts, updates, deletes, session reads and searches over a
bounded key set, through random live nodes, every operation recorded for the checker.

Each write carries a value token unique to it (in the document's metadata and
text), so what a replica holds names the write that put it there. Documents
bring their own vectors: the workload measures the cluster's write and read
paths, not the embedder.

Outcomes (chaos/checker.py's model):
* ``ok``: the node acknowledged (HTTP 200);
* ``failed``: certainly not applied: a 4xx refusal, or a connection refused
  before any byte of the request was read;
* ``unknown``: everything else (a timeout, a cut connection, a 5xx such as
  ``write_outcome_unknown``): it may have landed, so the checker allows it.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from chaos.checker import ABSENT, Op
from meshrag.client import MeshClient, MeshClientError

DIM = 384


@dataclass(frozen=True)
class WorkloadSettings:
    keys: int = 24
    clients: int = 4
    consistencies: tuple[str, ...] = ("quorum", "one")
    delete_share: float = 0.15
    read_share: float = 0.2  # session reads by id
    search_share: float = 0.1
    timeout_s: float = 10.0
    pause_s: float = 0.01  # between one client's operations


def unit_vector(vectors: np.random.Generator) -> np.ndarray:
    vector = vectors.standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def key_name(i: int) -> str:
    return f"chaos/k{i:03d}"


class History:
    """Thread-safe record of operations, times on one monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        self._next_id = 0

    def new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def add(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)


def outcome_of(error: MeshClientError) -> str:
    if 400 <= error.status < 500:
        return "failed"
    if error.status == 0 and error.code == "unreachable" and _refused(error):
        return "failed"
    return "unknown"


def _refused(error: BaseException) -> bool:
    """A connection refused: the node never read the request."""
    cause: BaseException | None = error.__cause__
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or isinstance(getattr(cause, "reason", None), ConnectionRefusedError):
            return True
        cause = cause.__cause__
    return False


class Workload:
    """``clients`` threads, each in a loop until ``stop``: a random operation on a random key
    through a random node among ``targets()`` (the nodes the nemesis has not taken down)."""

    def __init__(self, targets: Callable[[], Sequence[str]], history: History, settings: WorkloadSettings, seed: int) -> None:
        self._targets = targets
        self.record = Recorder(history)
        self._settings = settings
        self._seed = seed
        self._threads: list[threading.Thread] = []
        self._crashes: list[BaseException] = []
        self.stop = threading.Event()

    def start(self) -> None:
        for worker in range(self._settings.clients):
            thread = threading.Thread(target=self._client, args=(worker,), name=f"chaos-client-{worker}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def finish(self, timeout_s: float = 60.0) -> None:
        """Stop the clients; a client that crashed (a bug here, not a fault of the cluster) is raised."""
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        if self._crashes:
            raise RuntimeError(f"a workload client crashed: {self._crashes[0]!r}") from self._crashes[0]

    # ------------------------------------------------------------ one client
    def _client(self, worker: int) -> None:
        rng = random.Random(self._seed * 1000 + worker)
        vectors = np.random.default_rng(self._seed * 1000 + worker)
        session: str | None = None
        try:
            while not self.stop.is_set():
                targets = list(self._targets())
                if targets:
                    client = MeshClient(rng.choice(targets), timeout=self._settings.timeout_s)
                    session = self._one(client, worker, rng, vectors, session)
                time.sleep(self._settings.pause_s)
        except BaseException as exc:  # noqa: BLE001  (re-raised by finish)
            self._crashes.append(exc)
            self.stop.set()

    def _one(self, client: MeshClient, worker: int, rng: random.Random, vectors: np.random.Generator,
             session: str | None) -> str | None:
        s = self._settings
        key = key_name(rng.randrange(s.keys))
        roll = rng.random()
        if roll < s.search_share:
            self.record.search(client, worker, unit_vector(vectors))
            return session
        if roll < s.search_share + s.read_share:
            self.record.read(client, worker, key, session)
            return session
        consistency = rng.choice(s.consistencies)
        if roll < s.search_share + s.read_share + s.delete_share:
            return self.record.delete(client, worker, key, consistency, session)
        return self.record.upsert(client, worker, key, consistency, session, unit_vector(vectors))


class Recorder:
    """Each operation through one node, recorded in the history with its start, end and outcome
    (the workload's clients use it, and so do tests that drive a cluster step by step)."""

    def __init__(self, history: History) -> None:
        self._history = history

    def upsert(self, client: MeshClient, worker: int, key: str, consistency: str, session: str | None,
               vector: np.ndarray) -> str | None:
        op_id = self._history.new_id()
        token = f"w{op_id}"
        document = {"id": key, "text": f"chaos value {token}", "metadata": {"v": token}, "vector": vector.tolist()}
        start = self._history.clock()
        code = ""
        try:
            reply = client.upsert([document], consistency=consistency, session=session)
            outcome, session = "ok", reply.get("session") or session
        except MeshClientError as error:
            outcome, code = outcome_of(error), f"{error.status} {error.code}: {error.message[:60]}"
        self._history.add(Op(op_id, worker, "upsert", key, start, self._history.clock(), outcome,  # type: ignore[arg-type]
                             value=token, session=session, node=client.base_url, error=code))
        return session

    def delete(self, client: MeshClient, worker: int, key: str, consistency: str, session: str | None) -> str | None:
        op_id = self._history.new_id()
        start = self._history.clock()
        code = ""
        try:
            reply = client.delete_document(key, consistency=consistency, session=session)
            outcome, session = "ok", reply.get("session") or session
        except MeshClientError as error:
            outcome = "unknown" if error.status == 404 else outcome_of(error)  # a 404 may still leave a tombstone
            code = f"{error.status} {error.code}: {error.message[:60]}"
        self._history.add(Op(op_id, worker, "delete", key, start, self._history.clock(), outcome,  # type: ignore[arg-type]
                             session=session, node=client.base_url, error=code))
        return session

    def read(self, client: MeshClient, worker: int, key: str, session: str | None) -> None:
        op_id = self._history.new_id()
        start = self._history.clock()
        observed = None
        try:
            observed = str(client.get_document(key, session=session)["metadata"].get("v"))
            outcome = "ok"
        except MeshClientError as error:
            outcome = "ok" if error.status == 404 else "failed"
            observed = ABSENT if error.status == 404 else None
        self._history.add(Op(op_id, worker, "read", key, start, self._history.clock(), outcome,  # type: ignore[arg-type]
                             observed=observed, session=session, node=client.base_url))

    def search(self, client: MeshClient, worker: int, vector: np.ndarray) -> None:
        op_id = self._history.new_id()
        start = self._history.clock()
        try:
            client.search(vector=vector.tolist(), k=5)
            outcome = "ok"
        except MeshClientError as error:
            outcome = "failed" if 400 <= error.status < 500 else "unknown"
        self._history.add(Op(op_id, worker, "search", "", start, self._history.clock(), outcome, node=client.base_url))  # type: ignore[arg-type]
