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
