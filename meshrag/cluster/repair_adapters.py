"""This node's storage and its peers, as cluster/repair.py's LocalReplica and PeerReplicas.

The repair protocol takes these two as injected parts; here they are built on
the real storage engine (every blocking call through ``blocking``, the storage
executor) and the peer client over the /_mesh/repair routes. Applies go through
the service's ``apply`` (the ownership fence and the clock-drift bound), and
pushes through its ``send_docs`` (split to the message limit, typed refusals).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Awaitable, Callable

from meshrag.cluster import messages as msg
from meshrag.cluster.fence import PartitionFence
from meshrag.cluster.holdings import Holdings
from meshrag.cluster.messages import ENTRIES_PATH, FETCH_PATH, ROOTS_PATH
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.store.engine import StorageEngine
from meshrag.store.types import DigestEntry, DocumentWrite, WriteResult

Blocking = Callable[..., Awaitable[Any]]
Apply = Callable[[list[DocumentWrite], str, bool], Awaitable[list[WriteResult]]]


class LocalStore:
    """This node's storage as repair.py's LocalReplica."""

    def __init__(
        self, *, engine: StorageEngine, holdings: Holdings, fence: PartitionFence, blocking: Blocking, apply: Apply,
        owns: Callable[[int], bool] = lambda pid: True,
    ) -> None:
        self._engine = engine
        self._owns = owns  # does this node take writes for the partition in its ring as it is now
        self._holdings = holdings
        self._fence = fence
        self._blocking = blocking
        self._apply = apply

    async def held(self) -> list[int]:
        return self._engine.local_partitions()

    async def hashes(self, pid: int) -> list[str]:
        return list(await self._blocking(self._engine.bucket_hashes, pid))

    async def entries(self, pid: int, buckets: list[int]) -> list[DigestEntry]:
        return list(await self._blocking(self._engine.digest_entries, pid, buckets))

    async def export(self, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        return list(await self._blocking(self._engine.export, pid, doc_ids))

    async def apply(self, docs: list[DocumentWrite]) -> None:
        """Documents pulled from a peer; any stamped beyond the clock-drift bound are
        skipped (and counted), the rest applied."""
        if docs:
            await self._apply(docs, "repair", True)

    async def claim(self, pid: int) -> None:
        """This node answers for ``pid`` from now on (created empty if no write reached it yet)."""
        if pid in self._holdings:
            return

        def create_and_mark() -> None:
            if self._owns(pid):  # the pass's ring may be older than the node's (holdings.mark checks again)
                self._engine.partition(pid, True)
                self._holdings.mark(pid, self._owns)

        await self._blocking(create_and_mark)

    def fenced(self, pid: int) -> AbstractAsyncContextManager[None]:
        return self._fence.exclusive(pid)

    async def drop(self, pid: int) -> None:
        def forget_and_drop() -> None:
            self._holdings.forget(pid)
            self._engine.drop_partition(pid)

        await self._blocking(forget_and_drop)


class PeerStores:
    """Other nodes as repair.py's PeerReplicas."""

    def __init__(
        self, *, peers: PeerClient, address_of: Callable[[str], str], blocking: Blocking,
        send_docs: Callable[[str, list[DocumentWrite]], Awaitable[list[WriteResult]]],
    ) -> None:
        self._peers = peers
        self._address_of = address_of
        self._blocking = blocking
        self._send_docs = send_docs

    async def _call(self, node_id: str, path: str, body: dict[str, Any]) -> Any:
        return await self._peers.call(self._address_of(node_id), path, body)

    async def roots(self, node_id: str, pids: list[int]) -> dict[int, str]:
        reply = await self._call(node_id, ROOTS_PATH, {"partitions": pids})
        return {int(pid): str(root) for pid, root in reply["roots"].items()}

    async def entries(self, node_id: str, pid: int, hashes: list[str]) -> tuple[list[int], list[DigestEntry]]:
        reply = await self._call(node_id, ENTRIES_PATH, {"partition": pid, "hashes": hashes})
        # A bootstrap gets every entry of the partition: convert them off the loop.
        entries = await self._blocking(lambda: [msg.entry_from_wire(e) for e in reply["entries"]])
        return [int(b) for b in reply["buckets"]], list(entries)

    async def fetch(self, node_id: str, pid: int, doc_ids: list[str]) -> list[DocumentWrite]:
        """All of ``doc_ids`` the peer holds, in as many requests as its message limit needs."""
        fetched: list[DocumentWrite] = []
        wanted = list(doc_ids)
        while wanted:
            reply = await self._call(node_id, FETCH_PATH, {"partition": pid, "ids": wanted})
            fetched.extend(msg.docs_from_wire(reply["documents"]))
            more = [str(i) for i in reply.get("more", [])]
            if len(more) >= len(wanted):  # no progress: a peer that cannot send one document
                raise PeerError(node_id[:12], f"fetch of partition {pid} made no progress")
            wanted = more
        return fetched

    async def push(self, node_id: str, docs: list[DocumentWrite]) -> None:
        await self._send_docs(node_id, docs)
