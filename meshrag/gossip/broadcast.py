"""Transmit-limited piggyback queue (memberlist's TransmitLimitedQueue).

Membership updates ride on the packets a node sends anyway (probes, acks,
gossip rounds). Each queued update is sent at most `retransmit_limit(N)`
times, least-sent first and newest first among equals, so a fresh update goes
out at once and an old one stops costing bytes. A newer update about the same
member replaces what is queued about it: nobody needs a superseded suspicion.

One exception to replacement: confirmations of a running suspicion (the same
suspicion from different accusers) queue side by side. memberlist lets each
replace the last, so in a small cluster one can be lost and the suspicion
then waits its long timeout for a confirmation that was dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(slots=True)
class _Item:
    key: tuple[str, str]
    payload: bytes
    seq: int
    transmits: int = 0
    on_done: Callable[[], None] | None = None


class BroadcastQueue:
    def __init__(self, retransmit_limit: Callable[[], int], max_items: int = 1024) -> None:
        self._limit = retransmit_limit
        self._max_items = max_items
        self._items: dict[tuple[str, str], _Item] = {}
        self._keys_by_subject: dict[str, list[tuple[str, str]]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def enqueue(self, subject: str, payload: bytes, on_done: Callable[[], None] | None = None,
                *, alongside: str | None = None) -> None:
        """Queue an encoded message about `subject` (a node id).

        Without `alongside` it replaces everything queued about the subject; with it
        (a confirmation's accuser) it replaces only that accuser's earlier message.
        """
        self._seq += 1
        key = (subject, alongside or "")
        doomed = [key] if alongside is not None else list(self._keys_by_subject.get(subject, ()))
        for old_key in doomed:
            self._drop(old_key)
        self._items[key] = _Item(key, payload, self._seq, on_done=on_done)
        self._keys_by_subject.setdefault(subject, []).append(key)
        if len(self._items) > self._max_items:
            self._prune()

    def take(self, budget: int, overhead: int = 0) -> list[bytes]:
        """Messages that fit in `budget` bytes (each costing len + overhead), counting one transmit each."""
        if not self._items or budget <= 0:
            return []
        limit = self._limit()
        chosen: list[bytes] = []
        for item in sorted(self._items.values(), key=lambda it: (it.transmits, -it.seq)):
            cost = len(item.payload) + overhead
            if cost > budget:
                continue
            budget -= cost
            chosen.append(item.payload)
            item.transmits += 1
            if item.transmits >= limit:
                self._drop(item.key)
            if budget <= overhead:
                break
        return chosen

    def clear(self) -> None:
        for key in list(self._items):
            self._drop(key)

    def _prune(self) -> None:
        """Drop the most-transmitted, oldest items beyond the cap (bounded memory under churn)."""
        ordered = sorted(self._items.values(), key=lambda it: (it.transmits, -it.seq))
        for item in ordered[self._max_items:]:
            self._drop(item.key)

    def _drop(self, key: tuple[str, str]) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        keys = self._keys_by_subject[key[0]]
        keys.remove(key)
        if not keys:
            del self._keys_by_subject[key[0]]
        if item.on_done is not None:
            callback, item.on_done = item.on_done, None
            callback()
