"""The chaos checker on hand-made histories: each anomaly it names, and what it must let pass."""

from __future__ import annotations

from typing import Any

import pytest

from chaos.checker import (ABSENT, DELETED, Op, Stored, admissible, availability, check, check_membership,
                           check_replicas, check_session_reads, last_acknowledged)

OWNERS = {"k": ["n1", "n2"]}
_ids = iter(range(1_000_000))


def upsert(value: str, start: float, end: float, outcome: str = "ok", **extra: Any) -> Op:
    return Op(next(_ids), extra.pop("client", 0), "upsert", extra.pop("key", "k"), start, end, outcome, value=value, **extra)  # type: ignore[arg-type]


def delete(start: float, end: float, outcome: str = "ok", **extra: Any) -> Op:
    return Op(next(_ids), extra.pop("client", 0), "delete", extra.pop("key", "k"), start, end, outcome, **extra)  # type: ignore[arg-type]


def read(observed: str, start: float, end: float, session: str | None = "s1", **extra: Any) -> Op:
    return Op(next(_ids), 1, "read", extra.pop("key", "k"), start, end, "ok", observed=observed, session=session, **extra)


def both(value: str, version: int = 7) -> dict[str, dict[str, Stored]]:
    return {"n1": {"k": Stored(value, version)}, "n2": {"k": Stored(value, version)}}


def kinds(verdict: Any) -> list[str]:
    return sorted(a.kind for a in verdict.anomalies)


# ------------------------------------------------------------------ the register model
def test_the_last_acknowledged_writes_are_those_no_acknowledged_write_follows() -> None:
    a, b, c = upsert("a", 0, 1), upsert("b", 2, 3), upsert("c", 2.5, 4)
    assert set(last_acknowledged([a, b, c])) == {b, c}  # b and c overlap: either may be last


def test_a_write_that_may_have_landed_concurrently_with_the_last_is_admissible() -> None:
    history = [upsert("a", 0, 1), upsert("b", 2, 3), upsert("late", 2.5, 9, "unknown"), upsert("never", 2.6, 2.7, "failed")]
    assert admissible(history) == {"b", "late"}


def test_with_nothing_acknowledged_absence_or_anything_that_may_have_landed_is_admissible() -> None:
    assert admissible([upsert("x", 0, 1, "unknown"), upsert("y", 0, 1, "failed")]) == {ABSENT, "x"}


# ------------------------------------------------------------------ replicas
def test_a_clean_history_passes() -> None:
    history = [upsert("a", 0, 1), upsert("b", 2, 3)]
    verdict = check(history, both("b"), OWNERS, {"n1": {"n1": "alive", "n2": "alive"}, "n2": {"n1": "alive", "n2": "alive"}})
    assert verdict.passed and verdict.keys_checked == 1 and verdict.replicas_checked == 2


def test_an_acknowledged_write_missing_on_a_replica_is_lost() -> None:
    verdict = check_replicas([upsert("a", 0, 1)], {"n1": {"k": Stored("a", 7)}, "n2": {}}, OWNERS)
    assert kinds(verdict) == ["lost", "replica_count"]
    assert verdict.of("lost")[0].node == "n2"


def test_an_older_value_a_later_acknowledged_write_superseded_is_stale() -> None:
    history = [upsert("a", 0, 1), upsert("b", 2, 3)]
    verdict = check_replicas(history, {"n1": {"k": Stored("b", 9)}, "n2": {"k": Stored("a", 7)}}, OWNERS)
    assert kinds(verdict) == ["diverged", "diverged", "stale"]
    assert verdict.of("stale")[0].node == "n2"


def test_a_concurrent_write_of_unknown_outcome_may_win_and_is_not_stale() -> None:
    history = [upsert("a", 0, 3), upsert("b", 1, 10, "unknown")]
    assert check_replicas(history, both("b"), OWNERS).passed


def test_the_value_of_a_failed_write_on_a_replica_is_an_anomaly() -> None:
    history = [upsert("a", 0, 1), upsert("refused", 2, 3, "failed")]
    assert kinds(check_replicas(history, both("refused"), OWNERS)) == ["stale", "stale"]


def test_an_acknowledged_delete_that_comes_back_is_resurrected() -> None:
    history = [upsert("a", 0, 1), delete(2, 3)]
    verdict = check_replicas(history, {"n1": {"k": Stored(DELETED, 9)}, "n2": {"k": Stored("a", 7)}}, OWNERS)
    assert "resurrected" in kinds(verdict)
    assert verdict.of("resurrected")[0].node == "n2"


def test_a_tombstone_or_its_purge_after_a_delete_is_fine() -> None:
    history = [upsert("a", 0, 1), delete(2, 3)]
    assert check_replicas(history, {"n1": {"k": Stored(DELETED, 9)}, "n2": {}}, OWNERS).of("resurrected") == []
    assert check_replicas(history, {"n1": {}, "n2": {}}, OWNERS).passed


def test_a_delete_racing_an_upsert_may_end_either_way_but_replicas_must_agree() -> None:
    history = [upsert("a", 0, 1), delete(2, 5), upsert("b", 3, 4)]
    assert check_replicas(history, both("b"), OWNERS).passed
    assert check_replicas(history, both(DELETED), OWNERS).passed
    split = check_replicas(history, {"n1": {"k": Stored("b", 8)}, "n2": {"k": Stored(DELETED, 9)}}, OWNERS)
    assert "diverged" in kinds(split)


def test_replicas_with_one_value_but_different_versions_diverge() -> None:
    verdict = check_replicas([upsert("a", 0, 1)], {"n1": {"k": Stored("a", 7)}, "n2": {"k": Stored("a", 8)}}, OWNERS)
    assert kinds(verdict) == ["diverged", "diverged"]


def test_a_live_copy_on_a_node_that_does_not_own_the_key_is_a_wrong_replica_count() -> None:
    states = {**both("a"), "n3": {"k": Stored("a", 7)}}
    verdict = check_replicas([upsert("a", 0, 1)], states, OWNERS)
    assert [(a.kind, a.node) for a in verdict.anomalies] == [("replica_count", "n3")]


# ------------------------------------------------------------------ membership
def test_membership_views_that_disagree_after_heal_name_the_odd_node() -> None:
    agreed = {"n1": "alive", "n2": "alive", "n3": "alive"}
    verdict = check_membership({"n1": agreed, "n2": agreed, "n3": {**agreed, "n2": "dead"}})
    assert [(a.kind, a.node) for a in verdict.anomalies] == [("membership", "n3")]
    assert check_membership({"n1": agreed, "n2": dict(agreed)}).passed


# ------------------------------------------------------------------ session reads
def test_a_session_read_that_misses_its_own_acknowledged_write_is_a_violation() -> None:
    history = [upsert("a", 0, 1, session="s0"), upsert("b", 2, 3, session="s1"), read("a", 4, 5)]
    [violation] = check_session_reads(history).anomalies
    assert violation.kind == "read_your_writes"


def test_a_session_read_may_see_a_later_or_concurrent_write_of_another_client() -> None:
    history = [upsert("b", 2, 3, session="s1"), upsert("c", 2.5, 6, "unknown", client=2), read("c", 4, 5)]
    assert check_session_reads(history).passed


@pytest.mark.parametrize("observed", [ABSENT, DELETED])
def test_a_session_read_after_its_delete_may_find_nothing(observed: str) -> None:
    history = [upsert("a", 0, 1, session="s1"), delete(2, 3, session="s1"), read(observed, 4, 5)]
    assert check_session_reads(history).passed


def test_reads_without_a_session_or_before_any_own_write_are_not_judged() -> None:
    history = [upsert("a", 0, 1, session="s0"), upsert("b", 2, 3, session="s0"), read("a", 4, 5, session=None), read("a", 4, 5)]
    assert check_session_reads(history).passed


# ------------------------------------------------------------------ availability
def test_availability_counts_outcomes_and_latency_of_ops_overlapping_the_fault_windows() -> None:
    history = [upsert("a", 0, 0.010), upsert("b", 5, 5.100, "unknown"), upsert("c", 5.2, 5.230), upsert("d", 20, 20.5, "failed")]
    during = availability(history, [(4.0, 6.0)])
    assert (during.ops, during.ok, during.unknown, during.failed) == (2, 1, 1, 0)
    assert during.p50_ms == pytest.approx(30.0) and during.share_ok == 0.5
    overall = availability(history)
    assert (overall.ops, overall.ok, overall.failed) == (4, 2, 1)
    assert availability([], [(0, 1)]).share_ok is None
