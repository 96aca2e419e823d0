"""What this node answers on the /_mesh/ replica, repair and ring routes.

api/internal.py calls a handler here once a request has passed the cluster
secret and the size limit and its msgpack body is unpacked; the handler parses
the body (a KeyError, TypeError or ValueError is answered 400 there), does its
storage work through the node's ClusterService and returns the reply map. The
bodies are cluster/messages.py's, which also names the routes; the senders are
cluster/service.py (apply, get, states), cluster/repair_adapters.py (roots,
entries, fetch) and cluster/loops.py and node.py (ring).

Kept apart from internal.py, which is transport (secret, limits, codec, routing):
these are a replica's answers and change with the storage, not the wire. Every
read that touches SQLite runs as one step in the storage executor, so a request
costs one hop off the event loop, not one per partition or per document.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping, TypeVar

from meshrag.cluster import messages as msg
from meshrag.cluster.repair import differing_buckets, root_hash
from meshrag.cluster.service import ClusterService
from meshrag.errors import ValidationError
from meshrag.ring import RingEntry
from meshrag.store.digest import BUCKETS
from meshrag.store.types import DocumentWrite

T = TypeVar("T")

FETCH_STEP = 16  # documents exported at a time while filling a fetch reply


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
    return cluster.ring_state.to_wire()


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
