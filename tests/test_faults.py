"""Deliberate faults for tests of the chaos checker (meshrag/faults.py): how they are switched on, and what each does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshrag.clock import ClockDrift, VirtualClock, pack_hlc
from meshrag.errors import ConfigError
from meshrag.faults import (
    ACK_BEFORE_COMMIT_DELAY_S, ENV, NO_FAULTS, ForgetfulClock, InjectedFaults, SkippingTombstones, acknowledge_then_commit,
)
from meshrag.store.types import DocumentWrite, WriteStatus
from tests.virtual_loop import run_virtual


def _doc(doc_id: str, deleted: bool = False) -> DocumentWrite:
    return DocumentWrite(doc_id, pack_hlc(1_700_000_000_000, 0), "h", "" if deleted else "text", {}, (), deleted)


def test_no_variable_means_no_fault() -> None:
    assert InjectedFaults.from_env({}, dev=False) == NO_FAULTS and not NO_FAULTS.any


def test_faults_are_named_in_one_comma_separated_variable() -> None:
    faults = InjectedFaults.from_env({ENV: "ack_before_commit, repair_skips_tombstones"}, dev=True)
    assert faults.ack_before_commit and faults.repair_skips_tombstones and not faults.stamp_without_observing


def test_an_unknown_fault_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown fault 'lose_everything'.*ack_before_commit"):
        InjectedFaults.from_env({ENV: "lose_everything"}, dev=True)


def test_a_node_outside_dev_mode_refuses_to_start_with_a_fault() -> None:
    with pytest.raises(ConfigError, match="needs --dev"):
        InjectedFaults.from_env({ENV: "ack_before_commit"}, dev=False)


def test_the_forgetful_clock_folds_nothing_in_but_still_checks_the_drift_bound() -> None:
    clock = VirtualClock()
    forgetful = ForgetfulClock(clock, max_drift_s=60)
    ahead = pack_hlc(int((clock.wall() + 30) * 1000), 0)
    forgetful.observe(ahead)
    assert forgetful.now() < ahead
    with pytest.raises(ClockDrift):
        forgetful.observe(pack_hlc(int((clock.wall() + 600) * 1000), 0))


def test_acknowledged_at_once_and_committed_only_after_the_delay() -> None:
    committed: list[float] = []
    tasks: list[asyncio.Task[Any]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def commit() -> None:
            committed.append(loop.time())

        start = loop.time()
        results = acknowledge_then_commit([_doc("a"), _doc("b", deleted=True)], commit, lambda c: tasks.append(loop.create_task(c)))
        assert [r.status for r in results] == [WriteStatus.UPDATED, WriteStatus.DELETED]
        assert committed == []  # the bug: acknowledged, nothing durable yet
        await asyncio.gather(*tasks)
        assert committed == [start + ACK_BEFORE_COMMIT_DELAY_S]

    run_virtual(scenario)


class _Side:
    def __init__(self) -> None:
        self.applied: list[str] = []
        self.pushed: list[str] = []

    async def apply(self, docs: list[DocumentWrite]) -> None:
        self.applied += [d.doc_id for d in docs]

    async def push(self, node_id: str, docs: list[DocumentWrite]) -> None:
        self.pushed += [d.doc_id for d in docs]

    async def hashes(self, pid: int) -> list[str]:
        return ["passed through"]


def test_repair_that_skips_tombstones_moves_upserts_only() -> None:
    side = _Side()
    skipping = SkippingTombstones(side)

    async def scenario() -> list[str]:
        docs = [_doc("kept"), _doc("gone", deleted=True)]
        await skipping.apply(docs)
        await skipping.push("peer", docs)
        return await skipping.hashes(0)

    assert asyncio.run(scenario()) == ["passed through"]
    assert side.applied == ["kept"] and side.pushed == ["kept"]
