"""cluster/handoff.py: hints stored within their bounds, replayed in order, poison ones dropped.

A real HintStore (SQLite in tmp_path); the peer client is an in-process stand-in
that answers, fails or refuses per hint body, and the membership a small table
of member states on a virtual clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from meshrag.clock import VirtualClock
from meshrag.cluster.handoff import HintedHandoff, typed_refusal
from meshrag.cluster.rpc import PeerError
from meshrag.cluster.writes import NotOwnerReply, Refused
from meshrag.config import ClusterConfig
from meshrag.gossip.state import MemberState
from meshrag.ring import RingTable
from meshrag.store.hints import HintStore
from tests.store.conftest import make_doc


@dataclass
class FakeMember:
    state: MemberState
    since: float


class FakeMembers:
    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.table: dict[str, FakeMember] = {}

    def member(self, node_id: str) -> FakeMember | None:
        return self.table.get(node_id)


class FakePeers:
    """Answers each apply by the first document id in the body: ``refuse``/``fail`` name ids."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.refuse: dict[str, int] = {}  # doc id -> HTTP status
        self.fail: set[str] = set()

    async def call_packed(self, address: str, path: str, payload: bytes, timeout_s: float | None = None) -> Any:
        from meshrag import wire

        first = wire.unpack(payload)["documents"][0]["id"]
        if first in self.refuse:
            raise PeerError(address, "refused", self.refuse[first])
        if first in self.fail:
            raise PeerError(address, "no answer within 5.0 s")
        self.delivered.append(first)
        return {"results": []}


async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def make_parts(root: Path, settings: ClusterConfig) -> tuple[HintedHandoff, HintStore, FakePeers, FakeMembers]:
    clock = VirtualClock()
    store = HintStore(root / "hints.sqlite", wall=clock.wall)  # stamped by the node's wall clock
    store.open()
    members, peers = FakeMembers(clock), FakePeers()
    handoff = HintedHandoff(
        hints=store, peers=peers, members=members, settings=settings,  # type: ignore[arg-type]
        ring_table=RingTable, address_of=lambda n: f"{n}:1", name_of=lambda n: n, is_alive=lambda n: True,
        blocking=blocking, apply_path="/_mesh/replica/apply",
    )
    return handoff, store, peers, members


@pytest.fixture
def parts(tmp_path: Path) -> tuple[HintedHandoff, HintStore, FakePeers, FakeMembers]:
    return make_parts(tmp_path, ClusterConfig(max_hint_window_s=3600.0))


async def test_a_hint_refused_for_good_is_dropped_and_the_ones_behind_it_delivered(parts: Any) -> None:
    handoff, store, peers, _ = parts
    for doc_id in ("first", "poison", "last"):
        await handoff.store("b", [make_doc(doc_id)])
    peers.refuse["poison"] = 413
    assert await handoff.replay() == 2
    assert peers.delivered == ["first", "last"]
    assert store.pending() == {} and store.dropped["undeliverable"] == 1


async def test_a_replica_that_does_not_answer_pauses_its_queue_in_order(parts: Any) -> None:
    handoff, store, peers, _ = parts
    for doc_id in ("first", "second", "third"):
        await handoff.store("b", [make_doc(doc_id)])
    peers.fail.add("second")
    assert await handoff.replay() == 1
    assert peers.delivered == ["first"] and store.pending()["b"].hints == 2
    peers.fail.clear()
    await handoff.replay()
    assert peers.delivered == ["first", "second", "third"]


async def test_no_hint_for_a_replica_down_longer_than_the_window_and_old_hints_expire(parts: Any) -> None:
    handoff, store, peers, members = parts
    await handoff.store("b", [make_doc("kept-a-while")])
    members.clock.advance(7200)
    members.table["b"] = FakeMember(MemberState.DEAD, members.clock.wall() - 3601)
    await handoff.store("b", [make_doc("never-hinted")])
    assert store.dropped["window"] == 1
    assert await handoff.replay() == 0
    assert store.dropped["expired"] == 1 and store.pending() == {}


async def test_hints_are_split_to_fit_one_mesh_message(tmp_path: Path) -> None:
    mib = 1024 * 1024
    handoff, store, _, _ = make_parts(tmp_path, ClusterConfig(max_message_bytes=mib))
    big = [make_doc(f"d{i}", texts=["x" * 200_000]) for i in range(12)]
    await handoff.store("b", big)
    hints = store.next_for("b", 100)
    assert len(hints) >= 3 and sum(h.documents for h in hints) == 12
    assert max(len(h.body) for h in hints) <= mib


def test_refusals_are_typed_by_status() -> None:
    assert isinstance(typed_refusal(PeerError("b", "not owner", 409)), NotOwnerReply)
    assert isinstance(typed_refusal(PeerError("b", "clock drift", 400)), Refused)
    timeout = PeerError("b", "no answer")
    assert typed_refusal(timeout) is timeout
    assert typed_refusal(PeerError("b", "unavailable", 503)).__class__ is PeerError

