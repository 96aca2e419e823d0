"""The coordinator's cache of cluster-wide BM25 term statistics.

BM25 scores a chunk with the corpus' chunk count and average length and each
query term's document frequency. Scored with one partition's own numbers, a
term rare in that partition looks rare everywhere, and scores from different
partitions (and nodes) do not compare. So a coordinator first asks one
replica of every partition for the statistics of the query's terms and sends
the sum with the search, a DFS pre-pass as Elasticsearch's
``dfs_query_then_fetch``; every partition then scores exactly as a single
index over the whole corpus would (store/lexical.py).

Why a pre-pass with a cache, rather than statistics every node gossips:

* document frequency is per term, and only the query's terms matter; the
  vocabulary of a corpus is millions of terms per partition, far too much to
  gossip or keep in every node's memory, while a query has a handful;
* the pre-pass is paid only for terms not seen within ``ttl_s``: repeated and
  related queries (the common case) find their terms here and cost no round;
* document frequencies and totals move slowly (a term's df changes by the
  share of the corpus written meanwhile), so 30-second-old statistics change
  scores negligibly, and never which chunks match.

Totals (chunk count, total length) come with every answer and are refreshed on
every ``store``, so they are never older than the freshest term. Statistics
from a pre-pass that missed partitions must not be stored (they would serve
undercounts for the whole TTL); the coordinator uses them for that one query.

Not thread-safe: it lives on the coordinator's event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from meshrag.clock import Clock
from meshrag.store.lexical import TermStats


class TermStatsCache:
    def __init__(self, clock: Clock, ttl_s: float = 30.0, max_terms: int = 100_000) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        if max_terms < 1:
            raise ValueError(f"max_terms must be >= 1, got {max_terms}")
        self._clock = clock
        self.ttl_s = ttl_s
        self.max_terms = max_terms
        self._totals: tuple[int, int, float] | None = None  # chunks, terms, stored at
        self._df: OrderedDict[str, tuple[int, float]] = OrderedDict()  # term -> (df, stored at), oldest first

    def __len__(self) -> int:
        return len(self._df)

    def missing(self, terms: Iterable[str]) -> list[str]:
        """The distinct ``terms`` without a fresh entry, in order: what a pre-pass must ask."""
        now = self._clock.now()
        return [term for term in dict.fromkeys(terms) if not self._fresh_df(term, now)]

    def store(self, stats: TermStats, asked_terms: Iterable[str]) -> None:
        """Record a complete pre-pass: its totals, and the df of every term it was asked for
        (a term it does not mention occurs nowhere: df 0)."""
        now = self._clock.now()
        self._totals = (stats.chunks, stats.terms, now)
        for term in dict.fromkeys(asked_terms):
            self._df[term] = (stats.df.get(term, 0), now)
            self._df.move_to_end(term)
        self._evict(now)

    def global_stats(self, terms: Iterable[str]) -> TermStats | None:
        """Cluster-wide statistics for ``terms``, or None when the totals or any term are
        missing or expired (then a pre-pass is due, for ``missing(terms)`` at least)."""
        now = self._clock.now()
        if self._totals is None or not self._fresh(self._totals[2], now):
            return None
        wanted = list(dict.fromkeys(terms))
        if not all(self._fresh_df(term, now) for term in wanted):
            return None
        return TermStats(self._totals[0], self._totals[1], {term: self._df[term][0] for term in wanted})

    def known_df(self, terms: Iterable[str]) -> dict[str, int]:
        """The fresh document frequencies among ``terms`` (those a pre-pass need not ask again)."""
        now = self._clock.now()
        return {term: self._df[term][0] for term in dict.fromkeys(terms) if self._fresh_df(term, now)}

    def _fresh(self, stored_at: float, now: float) -> bool:
        return now - stored_at < self.ttl_s

    def _fresh_df(self, term: str, now: float) -> bool:
        entry = self._df.get(term)
        return entry is not None and self._fresh(entry[1], now)

    def _evict(self, now: float) -> None:
        """Drop expired entries and, past ``max_terms``, the oldest: entries are kept in the order
        they were stored, which with one TTL is also the order they expire in."""
        while self._df:
            term, (_, stored_at) = next(iter(self._df.items()))
            if len(self._df) <= self.max_terms and self._fresh(stored_at, now):
                return
            del self._df[term]
