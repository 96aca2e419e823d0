"""Talking to the seeds at start: the cluster's settings and ring before a node joins, and
this node's ring entry right after (gossip would carry it too, a little later)."""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from meshrag.cluster.messages import RING_PATH
from meshrag.cluster.ringstate import ClusterSettings, RingState
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.ring import RingEntry

log = logging.getLogger(__name__)

SEED_CALL_TIMEOUT_S = 5.0


async def fetch_cluster(peers: PeerClient, seeds: Sequence[str]) -> tuple[ClusterSettings, list[RingEntry]]:
    """Ask the seeds for the cluster's settings and ring until one answers (they may still be starting)."""
    attempt = 0
    while True:
        for seed in seeds:
            try:
                reply = await peers.call(seed, RING_PATH, {"ring": []}, timeout_s=SEED_CALL_TIMEOUT_S)
            except PeerError as exc:
                if attempt % 10 == 0:
                    log.info("waiting for seed %s to share the cluster settings: %s", seed, exc.reason)
                continue
            if reply.get("settings"):
                entries = [RingEntry.from_dict(item) for item in reply.get("ring") or []]
                return ClusterSettings.from_dict(reply["settings"]), entries
        attempt += 1
        await asyncio.sleep(1.0)


async def announce_ring(peers: PeerClient, seeds: Sequence[str], ring_state: RingState) -> None:
    """Tell the seeds at once that this node is in the ring; merge what they answer."""
    for seed in seeds:
        try:
            reply = await peers.call(seed, RING_PATH, {"ring": ring_state.table.to_list()}, timeout_s=SEED_CALL_TIMEOUT_S)
            ring_state.merge(RingEntry.from_dict(item) for item in reply.get("ring") or [])
        except PeerError as exc:
            log.info("could not announce this node to seed %s yet: %s", seed, exc.reason)
