"""Plain values that cross the storage boundary.

Frozen, slotted dataclasses: cheap to create by the thousand, safe to hand to
other threads, and free of any SQLite or usearch detail.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class ChunkWrite:
    """One chunk to store; ``vector`` is float32 [dim], L2-normalised by the embedder."""

    chunk_id: str
    seq: int
    text: str
    start: int
    end: int
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """A whole document version: applying it replaces every chunk the document had.

    ``deleted=True`` is a tombstone (empty text, no chunks): replicas and repair
    carry deletes in the same stream as upserts.
    """

    doc_id: str
    version: int
    content_hash: str
    text: str
    metadata: dict[str, Any]
    chunks: tuple[ChunkWrite, ...]
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    chunk_id: str
    seq: int
    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document as stored; a tombstone has ``deleted=True``, empty text and no chunks."""

    doc_id: str
    version: int
    content_hash: str
    text: str
    metadata: dict[str, Any]
    deleted: bool
    chunks: tuple[ChunkInfo, ...]
    partition: int


def write_order(version: int, deleted: bool, content_hash: str) -> tuple[int, bool, str]:
    """The one last-writer-wins order that stores (on write) and repair (on compare) apply:
    the newer version wins; at one version a tombstone beats a document, and between two
    documents the larger content hash (two coordinators can stamp one HLC version on
    different content), so every replica settles a tie the same way."""
    return (version, deleted, "" if deleted else content_hash)


@dataclass(frozen=True, slots=True)
class DocState:
    """What a coordinator needs to decide whether a write is new, stale or a no-op."""

    version: int
    content_hash: str
    deleted: bool


@dataclass(frozen=True, slots=True)
class DigestEntry:
    """What anti-entropy compares: a replica's view of one document (or tombstone)."""

    doc_id: str
    version: int
    deleted: bool
    content_hash: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """Phase one of a search: a chunk's identity and score, without its text or metadata
    (those are fetched for the final top-k only, see ``Hit``); a higher score is better."""

    chunk_id: str
    doc_id: str
    score: float
    version: int
    partition: int


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result; a higher ``score`` is better (cosine similarity or -bm25)."""

    chunk_id: str
    doc_id: str
    score: float
    text: str
    metadata: dict[str, Any]
    version: int
    partition: int


class WriteStatus(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    STALE = "stale"  # an older or equal version arrived and was ignored
    DELETED = "deleted"
    # Coordinator's verdict: the write lost to a newer version a replica holds
    # (``version`` is the winner); never reported as updated.
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of one write. ``version`` is the version stored afterwards: the new
    one for CREATED/UPDATED/DELETED, the winning stored one for UNCHANGED/STALE."""

    doc_id: str
    status: WriteStatus
    version: int
