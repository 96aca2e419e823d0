"""Talking to the seeds at start: the cluster's settings and ring before a node joins, and
this node's ring entry right after (gossip would carry it too, a little later)."""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from meshrag.cluster.messages import RING_PATH
from meshrag.cluster.ringstate import ClusterSettings, RingState
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.errors import ConfigError
from meshrag.ring import RingEntry
from meshrag.security.signing import BAD_SIGNATURE, STALE, UNKNOWN_KEY

log = logging.getLogger(__name__)

SEED_CALL_TIMEOUT_S = 5.0


async def fetch_cluster(peers: PeerClient, seeds: Sequence[str]) -> tuple[ClusterSettings, list[RingEntry]]:
    """Ask the seeds for the cluster's settings and ring until one answers (they may still be starting).
    A seed that refuses this node's signature ends the start with the cause: waiting would not help."""
    attempt = 0
    while True:
        for seed in seeds:
            try:
                reply = await peers.call(seed, RING_PATH, {"ring": []}, timeout_s=SEED_CALL_TIMEOUT_S)
            except PeerError as exc:
                refusal = _refusal(seed, exc)
                if refusal:
                    raise ConfigError(refusal, field="node.secret_file") from None
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


def _refusal(seed: str, exc: PeerError) -> str | None:
    if exc.auth_reason in (UNKNOWN_KEY, BAD_SIGNATURE):
        return (f"the cluster at {seed} refused this node's signature ({exc.auth_reason}: {exc.reason}): "
                "is --secret-file the cluster's?")
    if exc.auth_reason == STALE:
        return f"the cluster at {seed} refused this node's requests as stale ({exc.reason}): is this host's clock right?"
    return None
