"""Node-to-node message bodies: storage values <-> plain msgpack-able dicts.

Vectors travel as one float32 array per document (wire.py packs numpy arrays
as raw bytes), so replication and repair move embeddings without re-embedding
and without per-number boxing.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from meshrag.errors import ValidationError
from meshrag.store.types import Candidate, ChunkInfo, ChunkWrite, DigestEntry, DocState, DocumentWrite, Hit, StoredDocument, WriteResult, WriteStatus

# The /_mesh/ routes these bodies travel on (api/internal.py serves them).
APPLY_PATH = "/_mesh/replica/apply"
GET_PATH = "/_mesh/replica/get"
STATES_PATH = "/_mesh/replica/states"
SEARCH_PATH = "/_mesh/search"
TERM_STATS_PATH = "/_mesh/search/term-stats"
HITS_PATH = "/_mesh/search/hits"
ROOTS_PATH = "/_mesh/repair/roots"
ENTRIES_PATH = "/_mesh/repair/entries"
FETCH_PATH = "/_mesh/repair/fetch"
RING_PATH = "/_mesh/ring"
INSPECT_PATH = "/_mesh/cluster/inspect"  # a node's report for `meshrag status` / `verify` (cluster/node_report.py)
GENERATE_PATH = "/_mesh/generate"  # streamed: msgpack frames, see generation/remote.py
EMBED_PATH = "/_mesh/embed"  # see embedding/remote.py

# Share of cluster.max_message_bytes a batch may fill by wire_size's estimate: the
# estimate leaves out msgpack framing and metadata encoding.
MESSAGE_FILL = 0.75


def doc_to_wire(doc: DocumentWrite) -> dict[str, Any]:
    vectors = np.stack([np.asarray(c.vector, dtype=np.float32) for c in doc.chunks]) if doc.chunks else np.zeros((0, 0), np.float32)
    return {
        "id": doc.doc_id, "v": doc.version, "h": doc.content_hash, "t": doc.text, "m": doc.metadata, "d": doc.deleted,
        "c": [[c.chunk_id, c.seq, c.text, c.start, c.end] for c in doc.chunks], "x": vectors,
    }


def apply_body(docs: list[DocumentWrite]) -> dict[str, Any]:
    """The body of an apply (replication, hints, repair pushes)."""
    return {"documents": [doc_to_wire(d) for d in docs]}


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


def message_budget(max_message_bytes: int) -> int:
    return int(max_message_bytes * MESSAGE_FILL)


def fitting_prefix(docs: list[DocumentWrite], budget: int, at_least_one: bool) -> list[DocumentWrite]:
    """The longest prefix of ``docs`` within ``budget`` bytes (at least one document if asked:
    a document larger than a whole message must still move, alone)."""
    taken: list[DocumentWrite] = []
    used = 0
    for doc in docs:
        size = wire_size(doc)
        if used + size > budget and (taken or not at_least_one):
            break
        taken.append(doc)
        used += size
    return taken


def split_to_fit(docs: list[DocumentWrite], max_message_bytes: int) -> list[list[DocumentWrite]]:
    """Consecutive batches of ``docs``, each within one /_mesh/ message (by wire_size)."""
    budget = message_budget(max_message_bytes)
    batches: list[list[DocumentWrite]] = []
    rest = docs
    while rest:
        batch = fitting_prefix(rest, budget, at_least_one=True)
        batches.append(batch)
        rest = rest[len(batch):]
    return batches


def result_to_wire(result: WriteResult) -> list[Any]:
    return [result.doc_id, result.status.value, result.version]


def results_from_wire(reply: Any, docs: list[DocumentWrite]) -> list[WriteResult]:
    """A replica's per-document answer to an apply, checked against what was sent."""
    raw = reply.get("results") if isinstance(reply, Mapping) else None
    if not isinstance(raw, list) or len(raw) != len(docs):
        raise ValueError(f"apply reply must list a result for each of the {len(docs)} documents sent")
    results = [WriteResult(str(item[0]), WriteStatus(item[1]), int(item[2])) for item in raw]
    if [r.doc_id for r in results] != [d.doc_id for d in docs]:
        raise ValueError("apply reply names other documents than were sent")
    return results


def state_to_wire(state: DocState) -> list[Any]:
    return [state.version, state.content_hash, state.deleted]


def state_from_wire(raw: list[Any]) -> DocState:
    return DocState(int(raw[0]), str(raw[1]), bool(raw[2]))


def entry_to_wire(entry: DigestEntry) -> list[Any]:
    return [entry.doc_id, entry.version, entry.deleted, entry.content_hash]


def entry_from_wire(raw: list[Any]) -> DigestEntry:
    return DigestEntry(str(raw[0]), int(raw[1]), bool(raw[2]), str(raw[3]))


def candidate_to_wire(candidate: Candidate) -> list[Any]:
    return [candidate.chunk_id, candidate.doc_id, candidate.score, candidate.version, candidate.partition]


def candidate_from_wire(raw: list[Any]) -> Candidate:
    return Candidate(str(raw[0]), str(raw[1]), float(raw[2]), int(raw[3]), int(raw[4]))


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
