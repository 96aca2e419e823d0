"""The text of a node's best candidates, read while it searched, kept for the fetch that follows.

A search's second phase asks the nodes that answered for the text and metadata
of the final top k, a few milliseconds after their candidates went out. Those
final hits are nearly always among the best few candidates each node sent, so
a node reads the text of its best ``PREFETCH`` candidates of each kind in the
same storage job that found them (one SQLite read of a handful of rows, no extra
hand-off between the event loop and a pool thread) and keeps it here. The
fetch is then answered on the event loop without a trip to the storage pool,
which on a busy host is most of that phase's cost.

Nothing crosses the wire early: phase one still sends ids and scores only.
Entries are keyed by partition, chunk id and version, so a fetch gets exactly
the version its candidate named (a newer write makes a new chunk id and
version anyway), and live ``ttl_s`` (2 s): a fetch that comes later, or for a
candidate not kept, reads SQLite as before. A document deleted between the
two phases may still be returned by a fetch inside that window, as if the
search had run a moment earlier; search results are not linearizable anyway.
Thread-safe: storage threads put, the event loop takes (O(k) under a lock).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Iterable, Sequence

from meshrag.clock import Clock
from meshrag.store.types import Candidate, Hit

# Text read ahead per kind and search: the final k (10 by default) of a one-kind
# search comes from each node's best k; a hybrid's fusion mostly from the top few.
PREFETCH = 16

Key = tuple[int, str, int]


def key_of(item: Candidate | Hit) -> Key:
    return item.partition, item.chunk_id, item.version


class HitCache:
    def __init__(self, clock: Clock, ttl_s: float = 2.0, max_entries: int = 4096) -> None:
        if ttl_s < 0 or max_entries < 1:
            raise ValueError(f"ttl_s must be >= 0 and max_entries >= 1, got {ttl_s} and {max_entries}")
        self._clock = clock
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, tuple[Hit, float]] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self.served = 0
        self.missed = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, hits: Iterable[Hit]) -> None:
        now = self._clock.now()
        with self._lock:
            for hit in hits:
                key = key_of(hit)
                self._entries[key] = (hit, now)
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def take(self, candidates: Sequence[Candidate]) -> tuple[dict[Key, Hit], list[Candidate]]:
        """The kept hits of ``candidates`` (scored as the candidates are), and the candidates
        not kept or kept too long ago, which the caller reads from storage."""
        now = self._clock.now()
        found: dict[Key, Hit] = {}
        missing: list[Candidate] = []
        with self._lock:
            for candidate in candidates:
                entry = self._entries.get(key_of(candidate))
                if entry is None or now - entry[1] > self.ttl_s:
                    missing.append(candidate)
                    continue
                found[key_of(candidate)] = dataclasses.replace(entry[0], score=candidate.score)
        self.served += len(found)
        self.missed += len(missing)
        return found, missing


def in_order(candidates: Sequence[Candidate], *found: dict[Key, Hit]) -> list[Hit]:
    """The hits of ``candidates`` in their order, from any of ``found``; a candidate with
    no hit (no longer held here) is left out."""
    merged: dict[Key, Hit] = {}
    for part in found:
        merged.update(part)
    return [merged[key] for c in candidates if (key := key_of(c)) in merged]
