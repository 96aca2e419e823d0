"""What this node answers on the /_mesh/ replica, repair, search and ring routes.

api/internal.py calls a handler here once a request has passed the cluster
secret and the size limit and its msgpack body is unpacked; the handler parses
the body (a KeyError, TypeError or ValueError is answered 400 there), does its
storage work through the node's ClusterService and returns the reply map. The
bodies are cluster/messages.py's, which also names the routes; the senders are
cluster/service.py (apply, get, states), cluster/repair_adapters.py (roots,
entries, fetch), cluster/search.py (search, term statistics, hits) and
cluster/loops.py and node.py (ring), cluster/inspection.py (inspect).

Kept apart from internal.py, which is transport (secret, limits, codec, routing):
these are a replica's answers and change with the storage, not the wire. Every
read that touches SQLite runs as one step in the storage executor, so a request
costs one hop off the event loop, not one per partition or per document.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from meshrag.cluster import messages as msg
from meshrag.cluster.repair import differing_buckets, root_hash
from meshrag.cluster import search as wire_search
from meshrag.cluster.service import ClusterService
from meshrag.errors import ValidationError
from meshrag.ring import RingEntry
from meshrag.store.digest import BUCKETS
from meshrag.store.filters import parse_filter
from meshrag.store.lexical import TermStats
from meshrag.store.types import DocumentWrite

T = TypeVar("T")

FETCH_STEP = 16  # documents exported at a time while filling a fetch reply
MAX_SEARCH_K = 100_000
MAX_QUERY_TERMS = 64


async def handle_apply(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    """Per document: applied (created/updated/deleted), unchanged, or stale with the
    newer version held here, so the coordinator never reports a write nobody kept."""
    docs = await _in_storage(cluster, msg.docs_from_wire, body.get("documents"))
    results = await cluster.apply_owned(docs, "write")
    return {"results": [msg.result_to_wire(result) for result in results]}


async def handle_get(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    doc = await cluster.get_local(_text(body, "id"))
    return {"doc": None if doc is None else msg.stored_to_wire(doc)}


async def handle_states(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    ids = [str(i) for i in body.get("ids", [])]
    states = await _in_storage(cluster, cluster.engine.doc_states, ids)
    return {"states": {doc_id: msg.state_to_wire(state) for doc_id, state in states.items()}}


async def handle_roots(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    pids = [int(pid) for pid in body.get("partitions", [])]
    engine = cluster.engine

    def read() -> dict[str, str]:  # msgpack map keys are strings on this wire
        return {str(pid): root_hash(engine.bucket_hashes(pid)) for pid in pids}

    return {"roots": await _in_storage(cluster, read)}


async def handle_entries(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    pid, theirs = int(body["partition"]), list(body["hashes"])
    if len(theirs) != BUCKETS:
        raise ValidationError(f"hashes must list {BUCKETS} buckets", field="hashes")
    engine = cluster.engine

    def read() -> dict[str, Any]:  # only the differing buckets' entries are read
        differing = differing_buckets(engine.bucket_hashes(pid), theirs)
        entries = engine.digest_entries(pid, differing) if differing else []
        return {"buckets": differing, "entries": [msg.entry_to_wire(e) for e in entries]}

    return await _in_storage(cluster, read)


async def handle_fetch(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    """The documents asked for, as many as fit one /_mesh/ message; ``more``: the ids
    left for another request (the puller asks again). Read and converted in one
    storage step."""
    pid, ids = int(body["partition"]), [str(i) for i in body.get("ids", [])]
    budget = msg.message_budget(cluster.settings.max_message_bytes)
    engine = cluster.engine

    def fill() -> dict[str, Any]:
        docs: list[DocumentWrite] = []
        size, position = 0, 0
        while position < len(ids):
            exported = engine.export(pid, ids[position : position + FETCH_STEP])
            fitting = msg.fitting_prefix(exported, budget - size, at_least_one=not docs)
            docs.extend(fitting)
            size += sum(map(msg.wire_size, fitting))
            if len(fitting) < len(exported):
                position += _position_after(ids, position, fitting)
                break
            position += FETCH_STEP
        return {"documents": [msg.doc_to_wire(d) for d in docs], "more": ids[position:]}

    return await _in_storage(cluster, fill)


async def handle_ring(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the sender's ring table and answer ours (with the cluster settings, which a
    joining node adopts from its seed)."""
    cluster.ring_state.merge(RingEntry.from_dict(item) for item in body.get("ring") or [])
    cluster.merge_shared_state(body)
    return {**cluster.ring_state.to_wire(), **cluster.shared_state()}


async def handle_inspect(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    """This node's report for a coordinator's `meshrag status` or `verify` (cluster/inspection.py):
    digests of the asked partitions (with counts if asked), holdings, repair progress, hints."""
    pids = [int(pid) for pid in body.get("partitions", [])]
    report = await cluster.inspector.local_report(pids, bool(body.get("counts", False)))
    return report.to_wire()


async def _in_storage(cluster: ClusterService, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the storage executor: SQLite and bulk conversions stay off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(cluster.executor, fn, *args)


def _position_after(ids: list[str], start: int, taken: list[DocumentWrite]) -> int:
    """How many ids from ``start`` on were answered: taken ones, and absent ones before the last taken."""
    if not taken:
        return 0
    return ids.index(taken[-1].doc_id, start) - start + 1


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ValidationError(f"{key} must be a string", field=key)
    return value


# ------------------------------------------------------------------ search
async def handle_search(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    """Phase one: ids and scores of the asked partitions this node holds, per partition;
    the others named as unheld."""
    kinds = [str(kind) for kind in body.get("kinds", [])]
    if not set(kinds) <= set(wire_search.KINDS):
        raise ValidationError(f"kinds must be among {wire_search.KINDS}, got {kinds}", field="kinds")
    vector = body.get("vector")
    stats = body.get("stats")
    answer = await cluster.search.local.candidates(
        kinds, None if vector is None else np.asarray(vector, np.float32).reshape(-1), _terms(body),
        _bounded_int(body, "k", 1, MAX_SEARCH_K), parse_filter(body["filter"]) if body.get("filter") is not None else None,
        _partitions(cluster, body), None if stats is None else TermStats.from_wire(stats),
    )
    reply = wire_search.answer_to_wire(answer)
    if body.get("text") is True:  # the coordinator saves the fetch: the text read ahead goes along
        reply["texts"] = [msg.hit_to_wire(hit) for hit in cluster.search.local.kept_hits(answer)]
    return reply


async def handle_term_stats(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    """The DFS pre-pass: chunk count, total length and document frequency of the terms,
    per asked partition this node holds."""
    answer = await cluster.search.local.term_stats(_terms(body), _partitions(cluster, body))
    return wire_search.stats_to_wire(answer)


async def handle_hits(cluster: ClusterService, body: Mapping[str, Any]) -> dict[str, Any]:
    """Phase two: text and metadata of the final candidates that this node holds."""
    candidates = [msg.candidate_from_wire(raw) for raw in body.get("candidates", [])]
    hits = await cluster.search.local.hits(candidates)
    return {"hits": [msg.hit_to_wire(hit) for hit in hits]}


def _terms(body: Mapping[str, Any]) -> list[str]:
    terms = body.get("terms") or []
    if not isinstance(terms, list) or not all(isinstance(term, str) for term in terms) or len(terms) > MAX_QUERY_TERMS:
        raise ValidationError(f"terms must be a list of at most {MAX_QUERY_TERMS} strings", field="terms")
    return terms


def _partitions(cluster: ClusterService, body: Mapping[str, Any]) -> list[int]:
    total = cluster.ring().partitions
    pids = [int(pid) for pid in body.get("partitions", [])]
    if any(not 0 <= pid < total for pid in pids):
        raise ValidationError(f"partitions must be in 0..{total - 1}", field="partitions")
    return pids


def _bounded_int(body: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(f"{key} must be an integer {low}..{high}", field=key)
    return value
