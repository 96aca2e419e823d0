"""broadcast.py: the transmit-limited piggyback queue."""

from __future__ import annotations

from meshrag.gossip.broadcast import BroadcastQueue


def test_each_update_is_sent_at_most_the_retransmit_limit() -> None:
    queue = BroadcastQueue(lambda: 3)
    queue.enqueue("a", b"x" * 10)
    sent = [queue.take(1000) for _ in range(5)]
    assert sent == [[b"x" * 10]] * 3 + [[], []]
    assert len(queue) == 0


def test_a_newer_update_about_the_same_member_replaces_the_queued_one() -> None:
    finished: list[str] = []
    queue = BroadcastQueue(lambda: 5)
    queue.enqueue("a", b"suspect-a", on_done=lambda: finished.append("suspect"))
    queue.enqueue("a", b"alive-a")
    assert queue.take(1000) == [b"alive-a"]
    assert finished == ["suspect"]  # the superseded one is finished, not sent


def test_least_sent_then_newest_go_first_within_the_budget() -> None:
    queue = BroadcastQueue(lambda: 10)
    queue.enqueue("old", b"o" * 40)
    assert queue.take(100) == [b"o" * 40]
    queue.enqueue("new1", b"1" * 40)
    queue.enqueue("new2", b"2" * 40)
    assert queue.take(100) == [b"2" * 40, b"1" * 40]  # both unsent, newest first; "old" does not fit
    assert queue.take(100) == [b"2" * 40, b"1" * 40]  # all sent once: newest first again
    assert queue.take(100) == [b"o" * 40, b"2" * 40]  # now "old" is the least sent


def test_overhead_per_message_counts_against_the_budget() -> None:
    queue = BroadcastQueue(lambda: 10)
    for name in "abc":
        queue.enqueue(name, b"m" * 10)
    assert len(queue.take(35, overhead=2)) == 2


def test_queue_is_capped_dropping_the_most_sent_oldest() -> None:
    queue = BroadcastQueue(lambda: 100, max_items=3)
    queue.enqueue("a", b"a")
    queue.take(100)
    for name in "bcd":
        queue.enqueue(name, name.encode())
    assert len(queue) == 3
    assert sorted(queue.take(100)) == [b"b", b"c", b"d"]


def test_on_done_runs_once_the_limit_is_reached() -> None:
    done: list[int] = []
    queue = BroadcastQueue(lambda: 2)
    queue.enqueue("me", b"leave", on_done=lambda: done.append(1))
    queue.take(100)
    assert done == []
    queue.take(100)
    assert done == [1]


def test_confirmations_from_different_accusers_queue_side_by_side() -> None:
    queue = BroadcastQueue(lambda: 5)
    queue.enqueue("x", b"suspect-x-by-a")
    queue.enqueue("x", b"suspect-x-by-b", alongside="b")
    queue.enqueue("x", b"suspect-x-by-c", alongside="c")
    queue.enqueue("x", b"suspect-x-by-c-again", alongside="c")
    assert sorted(queue.take(1000)) == [b"suspect-x-by-a", b"suspect-x-by-b", b"suspect-x-by-c-again"]
    queue.enqueue("x", b"alive-x")  # a refutation replaces the whole suspicion
    assert queue.take(1000) == [b"alive-x"]
