"""Node-to-node message bodies: storage values <-> plain msgpack-able dicts.

Vectors travel as one float32 array per document (wire.py packs numpy arrays
as raw bytes), so replication and repair move embeddings without re-embedding
and without per-number boxing.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from meshrag.errors import ValidationError
from meshrag.store.types import ChunkWrite, DigestEntry, DocState, DocumentWrite, Hit, StoredDocument, ChunkInfo


def doc_to_wire(doc: DocumentWrite) -> dict[str, Any]:
    vectors = np.stack([np.asarray(c.vector, dtype=np.float32) for c in doc.chunks]) if doc.chunks else np.zeros((0, 0), np.float32)
    return {
        "id": doc.doc_id, "v": doc.version, "h": doc.content_hash, "t": doc.text, "m": doc.metadata, "d": doc.deleted,
        "c": [[c.chunk_id, c.seq, c.text, c.start, c.end] for c in doc.chunks], "x": vectors,
    }


def doc_from_wire(raw: Mapping[str, Any]) -> DocumentWrite:
    try:
        vectors = raw["x"]
        chunks = tuple(
            ChunkWrite(str(cid), int(seq), str(text), int(start), int(end), np.asarray(vectors[i], dtype=np.float32))
            for i, (cid, seq, text, start, end) in enumerate(raw["c"])
        )
        return DocumentWrite(str(raw["id"]), int(raw["v"]), str(raw["h"]), str(raw["t"]), dict(raw["m"]), chunks, bool(raw["d"]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValidationError(f"malformed replicated document: {exc!r}", field="documents") from None


def docs_from_wire(raw: Any) -> list[DocumentWrite]:
    if not isinstance(raw, list):
        raise ValidationError("documents must be a list", field="documents")
    return [doc_from_wire(item) for item in raw]


def wire_size(doc: DocumentWrite) -> int:
    """Approximate bytes a document takes on the wire (for rate limits and progress)."""
    return len(doc.text) + 64 + sum(len(c.text) + 4 * int(np.asarray(c.vector).size) + 48 for c in doc.chunks)


def state_to_wire(state: DocState) -> list[Any]:
    return [state.version, state.content_hash, state.deleted]


def state_from_wire(raw: list[Any]) -> DocState:
    return DocState(int(raw[0]), str(raw[1]), bool(raw[2]))


def entry_to_wire(entry: DigestEntry) -> list[Any]:
    return [entry.doc_id, entry.version, entry.deleted, entry.content_hash]


def entry_from_wire(raw: list[Any]) -> DigestEntry:
    return DigestEntry(str(raw[0]), int(raw[1]), bool(raw[2]), str(raw[3]))


def hit_to_wire(hit: Hit) -> list[Any]:
    return [hit.chunk_id, hit.doc_id, hit.score, hit.text, hit.metadata, hit.version, hit.partition]


def hit_from_wire(raw: list[Any]) -> Hit:
    return Hit(str(raw[0]), str(raw[1]), float(raw[2]), str(raw[3]), dict(raw[4]), int(raw[5]), int(raw[6]))


def stored_to_wire(doc: StoredDocument) -> dict[str, Any]:
    return {
        "id": doc.doc_id, "v": doc.version, "h": doc.content_hash, "t": doc.text, "m": doc.metadata, "d": doc.deleted,
        "c": [[c.chunk_id, c.seq, c.text, c.start, c.end] for c in doc.chunks], "p": doc.partition,
    }


def stored_from_wire(raw: Mapping[str, Any]) -> StoredDocument:
    chunks = tuple(ChunkInfo(str(c[0]), int(c[1]), str(c[2]), int(c[3]), int(c[4])) for c in raw["c"])
    return StoredDocument(str(raw["id"]), int(raw["v"]), str(raw["h"]), str(raw["t"]), dict(raw["m"]), bool(raw["d"]), chunks, int(raw["p"]))
