"""store/hints.py: a durable, per-replica FIFO of missed writes (real SQLite)."""

from __future__ import annotations

from pathlib import Path

from meshrag.store.hints import HintStore


def open_store(path: Path) -> HintStore:
    store = HintStore(path / "hints.sqlite")
    store.open()
    return store


def test_hints_come_back_per_target_oldest_first_and_limited(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(5):
        store.add("b", f"b{i}".encode(), 1)
    store.add("c", b"c0", 2)
    assert [h.body for h in store.next_for("b", 3)] == [b"b0", b"b1", b"b2"]
    assert [h.body for h in store.next_for("c", 10)] == [b"c0"]
    assert store.next_for("nobody", 10) == []


def test_removed_hints_are_gone_and_the_rest_stay_in_order(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    ids = [store.add("b", bytes([i]), 1) for i in range(4)]
    assert store.remove(ids[:2]) == 2
    assert [h.hint_id for h in store.next_for("b", 10)] == ids[2:]


def test_pending_counts_hints_documents_bytes_and_age_per_target(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add("b", b"x" * 10, 3)
    store.add("b", b"y" * 5, 2)
    store.add("c", b"z", 1)
    pending = store.pending()
    assert (pending["b"].hints, pending["b"].documents, pending["b"].bytes) == (2, 5, 15)
    assert (pending["c"].hints, pending["c"].documents) == (1, 1)
    assert pending["b"].oldest <= pending["c"].oldest


def test_a_removed_nodes_hints_can_be_dropped(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add("b", b"1", 1)
    store.add("c", b"2", 1)
    assert store.drop_target("b") == 1
    assert set(store.pending()) == {"c"}


def test_hints_survive_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add("b", b"payload", 4)
    store.close()
    again = open_store(tmp_path)
    [hint] = again.next_for("b", 10)
    assert (hint.body, hint.documents) == (b"payload", 4)


def test_committed_hints_are_visible_without_a_clean_close(tmp_path: Path) -> None:
    """As after kill -9: nothing closed, another process opens the file."""
    crashed = open_store(tmp_path)
    crashed.add("b", b"committed", 1)
    survivor = open_store(tmp_path)
    assert [h.body for h in survivor.next_for("b", 10)] == [b"committed"]


# ------------------------------------------------------------------ bounds
def test_a_target_over_its_byte_budget_gets_no_more_hints_until_some_are_delivered(tmp_path: Path) -> None:
    store = HintStore(tmp_path / "hints.sqlite", max_bytes_per_target=100)
    store.open()
    assert store.add("b", b"x" * 60, 2) is not None
    assert store.add("b", b"y" * 60, 3) is None, "60 + 60 bytes is over the 100-byte budget"
    assert store.add("c", b"z" * 60, 1) is not None, "the budget is per target"
    assert store.dropped["over_budget"] == 3
    [first] = store.next_for("b", 10)
    store.remove([first.hint_id])
    assert store.add("b", b"y" * 60, 3) is not None, "delivered hints give the budget back"


def test_the_byte_budget_survives_a_restart(tmp_path: Path) -> None:
    store = HintStore(tmp_path / "hints.sqlite", max_bytes_per_target=100)
    store.open()
    store.add("b", b"x" * 80, 1)
    store.close()
    reopened = HintStore(tmp_path / "hints.sqlite", max_bytes_per_target=100)
    reopened.open()
    assert reopened.add("b", b"y" * 30, 1) is None


def test_hints_older_than_the_window_expire_and_are_counted(tmp_path: Path) -> None:
    now = [1000.0]
    store = HintStore(tmp_path / "hints.sqlite", wall=lambda: now[0])
    store.open()
    store.add("b", b"old", 4)
    now[0] = 5000.0
    store.add("b", b"new", 1)
    assert store.expire(older_than=4000.0) == 4
    assert [h.body for h in store.next_for("b", 10)] == [b"new"]
    assert store.dropped["expired"] == 4
    assert store.pending()["b"].bytes == 3


def test_an_undeliverable_hint_is_discarded_and_counted(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.add("b", b"poison", 2)
    store.add("b", b"fine", 1)
    poison = store.next_for("b", 1)[0]
    store.discard(poison, "undeliverable")
    assert [h.body for h in store.next_for("b", 10)] == [b"fine"]
    assert store.dropped["undeliverable"] == 2
