"""Typed requests the pipeline serves, whatever interface they came through.

api/schema.py builds them from HTTP bodies; the cluster's internal routes will
build the same ones, so the pipeline never sees raw JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from meshrag.store.filters import Filter


@dataclass(frozen=True)
class IncomingDocument:
    doc_id: str | None
    text: str
    metadata: dict[str, Any]
    vector: np.ndarray | None


@dataclass(frozen=True)
class UpsertRequest:
    documents: list[IncomingDocument]
    consistency: str
    session: str | None


@dataclass(frozen=True)
class SearchRequest:
    query: str | None
    vector: np.ndarray | None
    k: int
    mode: str
    filter: Filter | None
    session: str | None
    timeout_ms: int | None = None        # None: the node's search.timeout_ms
    require_full_coverage: bool = False  # 503 naming the partitions instead of a partial answer


@dataclass(frozen=True)
class AskRequest:
    query: str
    k: int
    filter: Filter | None
    stream: bool
    max_tokens: int
    session: str | None
