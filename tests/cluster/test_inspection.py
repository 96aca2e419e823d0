"""cluster/inspection.py in-process: a coordinator gathering reports from real storage on two nodes,
over the wire encoding, with one member dead in gossip and one that does not answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

from meshrag import wire
from meshrag.cluster.inspection import ClusterInspector
from meshrag.cluster.repair import RateLimiter, Repairer
from meshrag.cluster.ringstate import ClusterSettings, RingState
from meshrag.cluster.rpc import PeerError
from meshrag.cluster.messages import wire_size
from meshrag.ring import RingEntry, RingStatus, RingTable, partition_for
from meshrag.store.engine import StorageEngine
from meshrag.store.hints import HintStore
from tests.store.conftest import DIM, make_doc

P, N = 8, 2
NODES = ("a", "b", "dead", "silent")


async def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)  # tiny test data: inline keeps the test single-threaded


def _inspector(root: Path, node: str, call: Callable[[str, str, dict[str, Any], float], Awaitable[dict[str, Any]]]) -> ClusterInspector:
    state = RingState(root / node, node)
    (root / node).mkdir(parents=True, exist_ok=True)
    state.adopt_settings(ClusterSettings(P, N, "model", DIM))
    state.merge(RingEntry(n, n, "z", RingStatus.NORMAL, 1) for n in NODES)
    engine = StorageEngine(root / node / "partitions", P, DIM)
    engine.open()
    hints = HintStore(root / node / "hints.sqlite")
    hints.open()
    repairer = Repairer(node, lambda: state.ring, lambda n: True, None, None, RateLimiter(0), wire_size, lambda s: None)  # type: ignore[arg-type]
    return ClusterInspector(node_id=node, ring_state=state, engine=engine, hints=hints, repairer=repairer,
                            is_alive=lambda n: n != "dead", name_of=lambda n: n.upper(), blocking=_blocking, call=call)


def _close(inspector: ClusterInspector) -> None:
    inspector._engine.close()
    inspector._hints.close()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[ClusterInspector]:
    inspectors: dict[str, ClusterInspector] = {}

    async def call(node: str, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if node == "silent":
            raise PeerError("127.0.0.1:9", f"no answer within {timeout_s:.1f} s")
        report = await inspectors[node].local_report(body["partitions"], body["counts"])
        return wire.unpack(wire.pack(report.to_wire()))  # what /_mesh/cluster/inspect sends back

    inspectors["a"] = _inspector(tmp_path, "a", call)
    inspectors["b"] = _inspector(tmp_path, "b", call)
    yield inspectors["a"]
    for inspector in inspectors.values():
        _close(inspector)


def _owned_by_a_and_b_only(inspector: ClusterInspector) -> int:
    ring = inspector._ring_state.ring
    return next(pid for pid in range(P) if set(ring.read_owners(pid)) == {"a", "b"})


async def test_verify_names_dead_and_silent_replicas_unreachable_and_compares_the_rest(coordinator: ClusterInspector) -> None:
    report = await coordinator.verify()
    ring = coordinator._ring_state.ring
    for partition in report["partitions"]:
        owners = set(ring.read_owners(partition["partition"]))
        assert partition["state"] == ("in sync" if owners == {"a", "b"} else "unreachable"), partition
    errors = {r["node"]: r.get("error") for p in report["partitions"] for r in p["replicas"] if r["digest"] is None}
    assert errors == {"DEAD": "not alive in gossip", "SILENT": "no answer within 20.0 s"}
    assert report["summary"]["unreachable_nodes"] == ["DEAD", "SILENT"] and report["checked_by"] == "A"


async def test_a_document_on_one_replica_only_is_diverged_with_its_counts(coordinator: ClusterInspector, tmp_path: Path) -> None:
    pid = _owned_by_a_and_b_only(coordinator)
    doc = next(make_doc(f"d{i}") for i in range(1000) if partition_for(f"d{i}", P) == pid)
    coordinator._engine.upsert([doc])
    report = await coordinator.verify()
    [entry] = [p for p in report["partitions"] if p["partition"] == pid]
    assert entry["state"] == "diverged"
    assert {r["node"]: (r["documents"], r["held"]) for r in entry["replicas"]} == {"A": (1, True), "B": (0, False)}


async def test_status_reports_every_ring_node_and_hints_held_here(coordinator: ClusterInspector) -> None:
    coordinator._hints.add("b", b"packed documents", documents=1)
    status = await coordinator.status()
    assert [(p["node"], p["reachable"]) for p in status["peers"]] == [("A", True), ("B", True), ("DEAD", False), ("SILENT", False)]
    assert status["hints"]["B"]["documents"] == 1 and status["hints"]["B"]["from"] == {"A": 1}
    assert sum(n["copies"] for n in status["balance"]["nodes"]) == P * N
    assert {u["partition"] for u in status["replication"]["under_replicated"]} == {
        pid for pid in range(P) if {"dead", "silent"} & set(coordinator._ring_state.ring.read_owners(pid))}


async def test_peers_are_asked_concurrently_within_the_bound(tmp_path: Path) -> None:
    in_flight, peak = 0, 0

    async def call(node: str, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        raise PeerError(node, "refused")

    inspector = _inspector(tmp_path, "a", call)
    inspector._slots = asyncio.Semaphore(1)
    try:
        reports = await inspector.gather({n: [] for n in ("a", "b", "silent")}, counts=False, timeout_s=1.0)
    finally:
        _close(inspector)
    assert peak == 1 and [r.reachable for r in reports.values()] == [True, False, False]
