"""How a storage node becomes a ring member, and how a node without storage checks the cluster.

A node with no saved ring creates the cluster (no seeds) or adopts the settings
and ring table the seeds send. Either way it then refuses a cluster it cannot
serve before it computes any ring or stores anything: another placement than
this build implements, another embedding model or dimension, another BM25 text
analysis. A node new to the ring enters it as ``joining`` when others already
hold data (repair then streams its partitions to it) and as ``normal`` when it
is the first, announces itself to the seeds, and saves the ring before it
serves as a member.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

from meshrag.cluster.ringstate import UNRECORDED_ANALYSIS, ClusterSettings, RingState
from meshrag.cluster.rpc import PeerClient
from meshrag.cluster.seeds import announce_ring, fetch_cluster
from meshrag.errors import ConfigError
from meshrag.ring import CURRENT, RingStatus

log = logging.getLogger(__name__)


async def join_ring(
    ring_state: RingState, *, peers: PeerClient, seeds: Sequence[str], new_cluster: ClusterSettings,
    name: str, zone: str, now: Callable[[], int],
) -> None:
    """Load or adopt the cluster's settings and ring into ``ring_state`` (``new_cluster``
    when there are no seeds: this node creates it), refuse what this node cannot serve,
    and add this node to the ring if it is not in it yet."""
    if not ring_state.load():
        if seeds:
            settings, entries = await fetch_cluster(peers, seeds)
            refuse_unknown_placement(settings)  # before the first ring is computed from it
        else:
            settings, entries = new_cluster, []
            log.info("creating a new cluster: %s", settings)
        ring_state.settings = settings
        ring_state.merge(entries)
        ring_state.adopt_settings(settings)
    assert ring_state.settings is not None
    refuse_unknown_placement(ring_state.settings)
    if ring_state.settings.analysis == UNRECORDED_ANALYSIS:
        # A cluster from before text analysis was a cluster setting: it takes this node's.
        ring_state.adopt_settings(dataclasses.replace(ring_state.settings, analysis=new_cluster.analysis))
    refusal = ring_state.settings.refusal(new_cluster.model, new_cluster.dim, new_cluster.analysis)
    if refusal:
        field = "embedder.model" if "embeds with" in refusal else "search.stemmer"
        raise ConfigError(f"refusing to join the cluster: {refusal}", field=field)
    if ring_state.self_entry is None:
        others_hold_data = any(e.status in CURRENT for e in ring_state.table.entries())
        ring_state.add_self(name, zone, RingStatus.JOINING if others_hold_data else RingStatus.NORMAL, now())
        await announce_ring(peers, seeds, ring_state)
    await ring_state.flush()  # on disk before this node serves as a member


async def check_cluster_without_storage(peers: PeerClient, seeds: Sequence[str], model: str, dim: int) -> ClusterSettings:
    """A node without the storage role (an embedder or generator host) joins gossip, not the
    ring. It still refuses to serve a cluster of another embedding model: its vectors would
    sit in the index beside incomparable ones."""
    if not seeds:
        raise ConfigError("a node without the storage role needs node.join: it serves a cluster that others hold", field="node.join")
    settings, _ = await fetch_cluster(peers, seeds)
    refusal = settings.refusal(model, dim)
    if refusal:
        raise ConfigError(f"refusing to join the cluster: {refusal}", field="embedder.model")
    return settings


def refuse_unknown_placement(settings: ClusterSettings) -> None:
    refusal = settings.placement_refusal()
    if refusal:
        raise ConfigError(f"refusing to join the cluster: {refusal}")
