"""BM25 over statistics that need not be local: term statistics and exact scoring.

FTS5's own ``bm25()`` takes the chunk count, average length and document
frequencies of the one table it runs in, so scores from two partitions (or
nodes) are not comparable, and a small partition's idf is noise. Here the
statistics are a value (``TermStats``) that can be summed over partitions and
sent between nodes, and ``bm25_scores`` scores one partition's postings against
whatever statistics it is given: with the sum over every partition, each chunk
gets exactly the score it would get in one index holding the whole corpus.

Lucene's BM25 (the reference figures' variant)::

    idf(t)    = ln(1 + (N - df + 0.5) / (df + 0.5))
    score(c)  = sum over query terms t in c of
                idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

N: chunks, df: chunks containing t, tf: occurrences of t in c, dl: terms in c,
avgdl: terms / chunks. Terms are the analyzer's (analysis.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

K1 = 1.2
B = 0.75


@dataclass(frozen=True)
class TermStats:
    """Chunk count, total analyzed length and per-term document frequency of some chunks."""

    chunks: int
    terms: int
    df: dict[str, int]

    def __add__(self, other: TermStats) -> TermStats:
        df = dict(self.df)
        for term, count in other.df.items():
            df[term] = df.get(term, 0) + count
        return TermStats(self.chunks + other.chunks, self.terms + other.terms, df)

    @classmethod
    def merged(cls, parts: Iterable[TermStats]) -> TermStats:
        total = cls(0, 0, {})
        for part in parts:
            total = total + part
        return total

    @property
    def avgdl(self) -> float:
        return self.terms / self.chunks if self.chunks else 0.0

    def to_wire(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "terms": self.terms, "df": dict(self.df)}

    @classmethod
    def from_wire(cls, raw: Any) -> TermStats:
        """Validated: a peer's malformed statistics must fail here, not as a wrong score."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"term statistics must be a map, got {type(raw).__name__}")
        df = raw.get("df")
        if not isinstance(df, Mapping):
            raise ValueError("term statistics: 'df' must be a map of term to count")
        checked = {}
        for term, count in df.items():
            if not isinstance(term, str):
                raise ValueError(f"term statistics: term {term!r} is not a string")
            checked[term] = _count(count, f"df of {term!r}")
        return cls(_count(raw.get("chunks"), "chunks"), _count(raw.get("terms"), "terms"), checked)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"term statistics: {what} must be an integer >= 0, got {value!r}")
    return value


def idf(df: int, chunks: int) -> float:
    """Lucene's idf; positive for any df <= chunks. math.log, not numpy: one scalar per term,
    bit-identical on every node, whatever SIMD path numpy would take for an array."""
    return math.log(1.0 + (chunks - df + 0.5) / (df + 0.5))


def bm25_scores(
    postings: Mapping[str, np.ndarray], lengths: np.ndarray, stats: TermStats, k1: float = K1, b: float = B
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every chunk in ``postings``: (keys ascending, scores), both arrays.

    ``postings``: per query term an int array of shape (n, 2), rows (chunk key, tf),
    each key at most once per term. ``lengths``: shape (m, 2), rows (chunk key, dl),
    covering every key in the postings. ``stats`` must hold a df for every term.
    A chunk's score adds its terms' contributions in the order of ``postings``, so
    the same chunk, terms and statistics give the same float on any node.
    """
    missing = [term for term in postings if term not in stats.df]
    if missing:
        raise ValueError(f"no document frequency for terms {missing[:8]}")
    arrays = [np.asarray(rows, dtype=np.int64).reshape(-1, 2) for rows in postings.values()]
    keys = np.unique(np.concatenate([rows[:, 0] for rows in arrays])) if arrays else np.zeros(0, np.int64)
    scores = np.zeros(len(keys), dtype=np.float64)
    if len(keys) == 0:
        return keys, scores
    # An empty or stale total (statistics from before these chunks) must not divide by zero.
    avgdl = stats.avgdl or 1.0
    norm = k1 * (1.0 - b + b * _lengths_of(keys, lengths) / avgdl)
    for term, rows in zip(postings, arrays):
        where = np.searchsorted(keys, rows[:, 0])
        tf = rows[:, 1].astype(np.float64)
        scores[where] += idf(stats.df[term], stats.chunks) * (tf * (k1 + 1.0)) / (tf + norm[where])
    return keys, scores


def _lengths_of(keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    table = np.asarray(lengths, dtype=np.int64).reshape(-1, 2)
    table = table[np.argsort(table[:, 0], kind="stable")]
    where = np.searchsorted(table[:, 0], keys)
    found = where < len(table)
    found[found] = table[where[found], 0] == keys[found]
    if not found.all():
        raise ValueError(f"no length for chunk keys {keys[~found][:8].tolist()}")
    return table[where, 1].astype(np.float64)


def ranked_windows(scores: np.ndarray, first: int, growth: int = 4) -> Iterator[np.ndarray]:
    """Indices of ``scores``, best first, in consecutive windows of ``first``, then ``growth``
    times larger each. A window never ends inside a run of equal scores: whoever breaks
    ties (by chunk id) sees every tied chunk, so after any window the best survivors of a
    filter so far are the best overall once there are enough of them."""
    order = np.argsort(-scores, kind="stable")
    descending = -scores[order]  # non-decreasing: searchsorted finds the end of a tie
    start, size = 0, max(1, first)
    while start < len(order):
        stop = min(start + size, len(order))
        stop = int(np.searchsorted(descending, descending[stop - 1], side="right"))
        yield order[start:stop]
        start, size = stop, size * growth
