"""Balanced placement (pure): partitions -> N distinct nodes, every node within one copy of even.

Why not vnode tokens (ring.py's first placement): a node's share follows where its random
tokens fall, and with P=64 partitions the fullest node held 1.2x to 2x the even share P*N/n
at 3 to 20 nodes (scripts/bench_placement.py). Here every node holds floor(P*N/n) or
ceil(P*N/n) copies, and a join or a leave moves about 1.1x (3-5 nodes) to 2x (20 nodes) the
copies the newcomer must take, against about 1x for vnodes (the price of the balance, measured
in the same script).

How, in two steps:

1. Rendezvous ranking (highest random weight): every (node, partition) pair has a score hashed
   from both, so a node's rank in a partition does not depend on any other node. A partition
   takes its N highest-ranked nodes, one per zone first, then any. Alone, this moves only the
   copies a joining node wins (or a leaving node held), but loads are binomial around even.
2. The loads are brought into the band [floor, ceil] by single-copy moves, the cheapest first
   (the smallest loss of score, so the result stays close to step 1 and moves little when the
   ring changes): nodes above the ceiling give to nodes below the floor, then to any below the
   ceiling, then nodes above the floor give to those still below it. A move never lowers the
   number of distinct zones of a partition: zones are failure domains and come before balance
   (with a zone of one node and N = number of zones, that node holds every partition); when
   zones make the band unreachable, the others are levelled among themselves instead.

Only node ids and zones are inputs, taken in sorted order, and ties are broken by node id, so
every node computes the same lists from the same ring whatever order it learnt the entries in.
The score function is part of the placement's definition: changing it is a new placement.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Callable, Mapping

LoadTest = Callable[[int], bool]
TakerTest = Callable[[int, int], bool]  # (giver's load, taker's load)


def score(node_id: str, pid: int) -> int:
    """The rendezvous weight of a node for a partition: stable across processes and versions."""
    return int.from_bytes(hashlib.blake2b(f"{node_id}/{pid}".encode(), digest_size=8).digest(), "big")


def balanced_lists(zones: Mapping[str, str], partitions: int, replicas: int) -> list[list[str]]:
    """Owners of every partition, best-ranked first; ``zones`` maps node id -> zone."""
    if not zones:
        return [[] for _ in range(partitions)]
    ids = sorted(zones)
    wanted = min(replicas, len(ids))
    scores = [{node: score(node, pid) for node in ids} for pid in range(partitions)]
    ranked = [_best_first(ids, s) for s in scores]
    lists = [_zones_first(order, zones, wanted) for order in ranked]
    _Rebalancer(lists, ranked, scores, zones).run()
    return [_best_first(owners, s) for owners, s in zip(lists, scores)]


def _best_first(nodes: list[str], scores: Mapping[str, int]) -> list[str]:
    return sorted(nodes, key=lambda node: (-scores[node], node))


def _zones_first(ranked: list[str], zones: Mapping[str, str], wanted: int) -> list[str]:
    chosen: list[str] = []
    seen: set[str] = set()
    for node in ranked:  # one node per zone first
        if len(chosen) < wanted and zones[node] not in seen:
            chosen.append(node)
            seen.add(zones[node])
    for node in ranked:  # then the next best of any zone
        if len(chosen) < wanted and node not in chosen:
            chosen.append(node)
    return chosen


class _Rebalancer:
    """Moves single copies, cheapest first, until every load is within [low, high] (or no move
    that keeps the zones is left). Each move lowers the total distance from the band (the last
    phase: the sum of squared loads), so it ends."""

    def __init__(self, lists: list[list[str]], ranked: list[list[str]], scores: list[dict[str, int]],
                 zones: Mapping[str, str]) -> None:
        self.lists, self.ranked, self.scores, self.zones = lists, ranked, scores, zones
        self.loads = {node: 0 for node in zones}
        for owners in lists:
            for node in owners:
                self.loads[node] += 1
        total = sum(self.loads.values())
        self.low, extra = divmod(total, len(zones))
        self.high = self.low + (1 if extra else 0)

    def run(self) -> None:
        self._phase(lambda load: load > self.high, lambda _, load: load < self.low)
        self._phase(lambda load: load > self.high, lambda _, load: load < self.high)
        self._phase(lambda load: load > self.low, lambda _, load: load < self.low)
        # Zones held some node out of the band: level the others pairwise. A taker can become a
        # giver here (it was not queued as one), hence the repeat until nothing moves.
        while (least := min(self.loads.values())) + 2 <= max(self.loads.values()):
            if not self._phase(lambda load: load >= least + 2, lambda giver, load: load <= giver - 2):
                break

    def _phase(self, gives: LoadTest, takes: TakerTest) -> int:
        """Apply the cheapest allowed moves from givers to takers until none is left; how many."""
        moves = 0
        heap: list[tuple[int, int, str, str]] = []
        for pid, owners in enumerate(self.lists):
            for node in owners:
                if gives(self.loads[node]):
                    self._push(heap, pid, node, takes)
        while heap:
            _, pid, node, to = heapq.heappop(heap)
            if not gives(self.loads[node]) or node not in self.lists[pid]:
                continue
            if not self._allowed(pid, node, to, takes):  # stale: the best taker changed since
                self._push(heap, pid, node, takes)
                continue
            self.lists[pid] = [to if owner == node else owner for owner in self.lists[pid]]
            self.loads[node] -= 1
            self.loads[to] += 1
            moves += 1
        return moves

    def _push(self, heap: list[tuple[int, int, str, str]], pid: int, node: str, takes: TakerTest) -> None:
        """Queue the best move of ``node``'s copy of ``pid``: to the best-ranked node allowed now."""
        for to in self.ranked[pid]:
            if self._allowed(pid, node, to, takes):
                heapq.heappush(heap, (self.scores[pid][node] - self.scores[pid][to], pid, node, to))
                return

    def _allowed(self, pid: int, node: str, to: str, takes: TakerTest) -> bool:
        if not takes(self.loads[node], self.loads[to]) or to in self.lists[pid]:
            return False
        # The partition keeps its number of zones if ``node``'s zone stays or ``to`` brings a new one.
        rest = [self.zones[owner] for owner in self.lists[pid] if owner != node]
        return self.zones[node] in rest or self.zones[to] not in rest
