"""A partition's searches: phase one (dense and BM25 candidates) and phase two (hits).

Split from partition.py, which owns the partition's lifecycle, transactions and
writes; these methods only read, through its pooled readers. Nothing here reads
chunk text or metadata in phase one: candidates carry ids and scores.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from typing import Any, Iterable, Sequence

import numpy as np

from meshrag.store.analysis import MAX_QUERY_TERMS
from meshrag.store.filters import Filter, to_sql
from meshrag.store.lexical import TermStats, bm25_scores, ranked_windows
from meshrag.store.node_index import PartitionIndex
from meshrag.store.schema import CHUNKS_WITH_DOCS, read_candidate_texts, read_candidates, read_postings, read_term_stats
from meshrag.store.types import Candidate, Hit
from meshrag.store.vector_index import IndexSettings, Scored, exact_top_k, unit_query_vector


class PartitionSearch:
    """Mixed into Partition, which provides these."""

    pid: int
    dim: int
    settings: IndexSettings

    def _reader(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _read_snapshot(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _require_index(self) -> PartitionIndex:
        raise NotImplementedError

    def search_dense(self, vector: np.ndarray, k: int, flt: Filter | None = None) -> list[Candidate]:
        """Top-k chunks by cosine similarity, optionally restricted by a metadata filter, best
        first, ties by chunk id. Phase one of a search: no text or metadata is read (``hits``).

        A selective filter (few matching chunks) is answered exactly from the
        vectors in SQLite; a broad one by ANN, oversampled and post-filtered.
        (The engine searches many partitions at once in the node's index instead.)
        """
        query = unit_query_vector(vector, self.dim)
        if k <= 0:
            return []
        where = to_sql(flt, "d.metadata") if flt is not None else None
        rows = None if where is None else self.filtered_vectors(where, self.settings.exact_search_threshold)
        if rows is not None:
            return best_first(self.candidates(exact_top_k(query, k, rows, self.dim), None))[:k]

        def resolve(scored: list[Scored]) -> list[Candidate]:
            return best_first(self.candidates(scored, where))

        return self._require_index().search(query, k, resolve, oversample=where is not None)

    def filtered_vectors(self, where: tuple[str, list[Any]], limit: int) -> list[tuple[int, bytes]] | None:
        """(chunk key, vector) of every chunk whose document passes the SQL filter ``where``;
        None if more than ``limit`` do (then ANN with post-filtering is the cheaper way)."""
        sql = f"SELECT c.key, c.vector FROM {CHUNKS_WITH_DOCS} WHERE {where[0]} LIMIT ?"
        with self._reader() as conn:
            rows = conn.execute(sql, (*where[1], limit + 1)).fetchall()
        return rows if len(rows) <= limit else None

    def candidates(
        self, scored: Sequence[Scored], where: tuple[str, list[Any]] | None, texts: dict[str, Hit] | None = None,
    ) -> list[Candidate]:
        """Candidates of scored chunk keys, in the given order, dropping keys gone or filtered
        out; reads chunk id, doc id and version only, unless ``texts`` is given: then the same
        query reads their text and metadata too and puts their hits there (by chunk id)."""
        if not scored:
            return []
        keys = np.fromiter((key for key, _ in scored), dtype=np.int64, count=len(scored))
        condition = where if where is not None else ("1", [])
        if texts is None:
            with self._reader() as conn:
                rows = read_candidates(conn, keys, condition)
            return self._found(rows, scored)
        with self._reader() as conn:
            full = read_candidate_texts(conn, keys, condition)
        found = []
        for key, score in scored:
            if (row := full.get(key)) is not None:
                chunk_id, doc_id, version, text, metadata = row
                found.append(Candidate(chunk_id, doc_id, score, version, self.pid))
                texts[chunk_id] = Hit(chunk_id, doc_id, score, text, json.loads(metadata), version, self.pid)
        return found

    def _found(self, rows: dict[int, tuple[str, str, int]], scored: Iterable[tuple[int, float]]) -> list[Candidate]:
        """Candidates of the scored keys that ``rows`` (read_candidates) holds, in the given order."""
        return [Candidate(*rows[key][:2], score, rows[key][2], self.pid) for key, score in scored if key in rows]

    def hits(self, candidates: Sequence[Candidate]) -> list[Hit]:
        """Phase two: the hits (text, metadata) of those candidates still stored (the same chunk
        id), in the given order, scored as the candidates are."""
        if not candidates:
            return []
        sql = (
            f"SELECT c.chunk_id, c.doc_id, c.text, d.metadata, d.version FROM {CHUNKS_WITH_DOCS} "
            "WHERE c.chunk_id IN (SELECT value FROM json_each(?))"
        )
        with self._reader() as conn:
            rows = {row[0]: row for row in conn.execute(sql, (json.dumps([c.chunk_id for c in candidates]),))}
        return [
            Hit(c.chunk_id, row[1], c.score, row[2], json.loads(row[3]), row[4], self.pid)
            for c in candidates
            if (row := rows.get(c.chunk_id)) is not None
        ]

    def term_stats(self, terms: Sequence[str]) -> TermStats:
        """Chunk count, total terms and the df of each term (analyzed terms), read in O(terms)."""
        with self._read_snapshot() as conn:
            return read_term_stats(conn, _distinct(terms))

    def search_bm25(
        self, terms: Sequence[str], k: int, flt: Filter | None = None, stats: TermStats | None = None
    ) -> list[Candidate]:
        """Top-k chunks by BM25 over analyzed ``terms`` (Analyzer.query_terms), scored with
        ``stats``: the cluster's, summed over every partition, make scores comparable across
        partitions; None uses this partition's own. Best first, ties by chunk id. Phase one
        of a search: no chunk text or metadata is read.

        Every chunk holding a term is scored (exhaustive, exact); the filter then runs in
        SQLite over the best of them, widening until k pass or none are left.
        """
        terms = _distinct(terms)
        if not terms or k <= 0:
            return []
        where = to_sql(flt, "d.metadata") if flt is not None else ("1", [])
        with self._read_snapshot() as conn:
            postings, lengths = read_postings(conn, terms)
            if not postings:
                return []
            stats = stats if stats is not None else read_term_stats(conn, terms)
            keys, scores = bm25_scores(postings, lengths, stats)
            found = self._best_passing(conn, keys, scores, k, where, filtered=flt is not None)
        return best_first(found)[:k]

    def _best_passing(
        self, conn: sqlite3.Connection, keys: np.ndarray, scores: np.ndarray, k: int, where: tuple[str, list[Any]], filtered: bool
    ) -> list[Candidate]:
        """Candidates of the best-scored keys that pass ``where``: at least k of them, unless
        fewer pass at all. A filter reads 4k first (most are expected to fail), then more."""
        found: list[Candidate] = []
        for window in ranked_windows(scores, 4 * k if filtered else k):
            rows = read_candidates(conn, keys[window], where)
            found.extend(self._found(rows, zip(keys[window].tolist(), scores[window].tolist())))
            if len(found) >= k:
                break
        return found


def _distinct(terms: Sequence[str]) -> list[str]:
    """Query terms once each, in order; more than a query can have is a caller's bug."""
    if isinstance(terms, str):  # a str is a Sequence[str] too: its letters would be searched
        raise TypeError("BM25 takes analyzed terms (Analyzer.query_terms), not query text")
    distinct = list(dict.fromkeys(terms))
    if len(distinct) > MAX_QUERY_TERMS:
        raise ValueError(f"{len(distinct)} distinct query terms: at most {MAX_QUERY_TERMS}")
    return distinct


def best_first(found: Iterable[Candidate]) -> list[Candidate]:
    """Candidates by score, ties by chunk id: the order every replica agrees on."""
    return sorted(found, key=lambda c: (-c.score, c.chunk_id))
