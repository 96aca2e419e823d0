"""Every tunable of the membership protocol, with HashiCorp memberlist's LAN values as the anchor.

`GossipSettings()` are MeshRAG's defaults; `GossipSettings.memberlist_lan()`
runs the same code with memberlist's DefaultLANConfig values (and without our
additions), so the simulator measures both in one run. Derived values
(suspicion timeouts, retransmit limit, push-pull interval) are methods here,
so the protocol, the tests and the benchmark share one definition.

Where the defaults leave memberlist, and why (figures: scripts/bench_gossip.py):

- Detection budget. memberlist's SuspicionMult 4 gives a minimum suspicion
  timeout of 7.2 s at 64 nodes: ~9.2 s median until a crashed node is dead
  everywhere. The goal is <= 6 s without killing a member whose event loop
  stalls for up to 5 s. A silent member is first suspected >= 1 probe interval
  after it went quiet, then declared dead after min timeout + one verifying
  probe interval. With min = 3 s (floor; 1.66 * log10 N * interval beyond 64
  nodes) that is >= 1 + 3 + 1 = 5 s of silence: a 2-5 s stall survives, a
  crash is dead everywhere after ~5.5 s (slotted probing finds it within
  ~1.5 s on average, confirmations reach the minimum within one interval, the
  verdict is sent straight to everyone).
- Loss. Shorter timeouts need refutations that arrive: a second direct ping
  stands in for memberlist's TCP fallback, updates are retransmitted 6 *
  ceil(log10(N+1)) times instead of 4, a last verifying probe catches members
  the refutation missed, and stale-view notices (memberlist.py) repair views
  whenever the wrongly suspected member talks to the holder. At 30 % loss, 64
  nodes, 10 simulated minutes: no false death.
- Healing. Dead members are retried (Serf's reconnect rule); memberlist alone
  never heals a partition longer than its suspicion timeout.
- Push-pull interval scales linearly above 32 nodes, keeping bytes per node flat.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from meshrag.errors import ConfigError


@dataclass(frozen=True)
class GossipSettings:
    # --- failure detection (SWIM) -------------------------------------------------
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.5
    indirect_checks: int = 3
    # Choose probe targets by wall-clock slot on the id-sorted ring (see probe.py) rather
    # than memberlist's shuffled round robin: every member is probed once per interval.
    slotted_probing: bool = True
    # memberlist pings over TCP alongside the indirect probes; without a stream ping
    # we send the target a second datagram at that moment (fewer failed probes under
    # loss, and with them fewer suspicions to refute).
    fallback_ping: bool = True
    # --- suspicion (Lifeguard LHA-Suspicion) --------------------------------------
    # memberlist: 4 (see the module docstring for the detection budget behind 1.66).
    suspicion_mult: float = 1.66
    suspicion_max_timeout_mult: float = 6.0
    # memberlist derives this as SuspicionMult - 2; a separate knob here because our
    # lower multiplier must not also mean fewer confirmations.
    suspicion_confirmations: int = 3
    # Floor of the minimum timeout in seconds: the max(1, log10 N) scale makes small
    # clusters aggressive, and a stalled process must get its 5 s (module docstring).
    suspicion_min_floor_s: float = 3.0
    # Members that hear of a new suspicion probe the suspect at once, about this many in
    # all: confirmations of a real failure arrive within one probe interval, so the
    # timeout reaches its minimum, while a live suspect hears of it (buddy) and refutes.
    confirmation_probes: int = 5
    # Whoever declares a death, or leaves, also sends it straight to this many members,
    # not only by gossip: the verdict is the slow part already, its spread need not be,
    # and a leaving process may be gone before gossip has carried its goodbye.
    announce_fanout: int = 64
    # Before declaring a suspect dead, probe it once more (with the suspicion
    # piggybacked). A live node missed by the refutation gossip answers and refutes.
    verify_before_dead: bool = True
    # --- local health (Lifeguard LHA-Probe) ---------------------------------------
    awareness_max_multiplier: int = 8
    lifeguard: bool = True  # False = plain SWIM: fixed suspicion timeout, no LHM, nacks or buddy
    # --- dissemination -------------------------------------------------------------
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_s: float = 30.0
    # memberlist: 4. At 30 % loss a node misses an update with odds ~e^-(0.7*2*mult) at
    # 64 nodes; 6 cuts missed refutations ~16x for 1.5x the (small) broadcast traffic.
    retransmit_mult: int = 6
    packet_limit_bytes: int = 1400
    max_queued_broadcasts: int = 1024
    # --- anti-entropy, joining, healing -------------------------------------------
    push_pull_interval_s: float = 30.0
    # memberlist scales the interval by log2 above 32 nodes, which lets full-state
    # bytes per node grow ~N/log N; we scale linearly so the cluster as a whole still
    # does about one sync per (interval/32) seconds and per-node bytes stay flat.
    push_pull_scale_threshold: int = 32
    push_pull_scale: str = "linear"  # or "log2": memberlist's ceil(log2 N - log2 32) + 1
    push_pull_timeout_s: float = 10.0
    push_pull_limit_bytes: int = 8 * 1024 * 1024
    # Dead (not left) members are retried: each node, every interval, push-pulls with a
    # random dead member with probability min(1, dead/alive) (Serf's reconnect rule),
    # so a healed partition is found within about one interval whatever its length.
    # 0 turns retries off (memberlist's behaviour).
    reconnect_interval_s: float = 10.0
    join_backoff_initial_s: float = 1.0
    join_backoff_max_s: float = 30.0
    # How often a node tells a member "I hold you as dead/suspect" when that member
    # talks to it; the member refutes or resends its alive.
    stale_view_notice_interval_s: float = 1.0
    leave_timeout_s: float = 3.0
    metadata_limit_bytes: int = 512

    def __post_init__(self) -> None:
        positive = ("probe_interval_s", "probe_timeout_s", "gossip_interval_s", "push_pull_interval_s", "push_pull_timeout_s",
                    "join_backoff_initial_s", "join_backoff_max_s", "suspicion_mult",
                    "stale_view_notice_interval_s", "leave_timeout_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"gossip.{name} = {getattr(self, name)!r}: must be > 0", field=f"gossip.{name}")
        if self.reconnect_interval_s < 0:
            raise ConfigError("gossip.reconnect_interval_s must be >= 0 (0 = never retry dead members)",
                              field="gossip.reconnect_interval_s")
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ConfigError("gossip.probe_timeout_s must be smaller than gossip.probe_interval_s", field="gossip.probe_timeout_s")
        if self.suspicion_max_timeout_mult < 1:
            raise ConfigError("gossip.suspicion_max_timeout_mult must be >= 1", field="gossip.suspicion_max_timeout_mult")
        if not 1 <= self.awareness_max_multiplier <= 64:
            raise ConfigError("gossip.awareness_max_multiplier must be 1..64", field="gossip.awareness_max_multiplier")
        if not 512 <= self.packet_limit_bytes <= 65507:
            raise ConfigError("gossip.packet_limit_bytes must be 512..65507 (one UDP datagram)", field="gossip.packet_limit_bytes")
        if not 64 <= self.metadata_limit_bytes <= self.packet_limit_bytes // 2:
            raise ConfigError("gossip.metadata_limit_bytes must be 64..packet_limit_bytes/2", field="gossip.metadata_limit_bytes")
        if self.push_pull_scale not in ("linear", "log2"):
            raise ConfigError("gossip.push_pull_scale must be linear or log2", field="gossip.push_pull_scale")
        for name in ("indirect_checks", "suspicion_confirmations", "gossip_nodes", "retransmit_mult",
                     "confirmation_probes", "announce_fanout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"gossip.{name} must be >= 0", field=f"gossip.{name}")

    @classmethod
    def memberlist_lan(cls, **overrides: object) -> GossipSettings:
        """memberlist's DefaultLANConfig failure-detection values, for comparison runs."""
        values: dict[str, object] = dict(
            suspicion_mult=4.0, suspicion_confirmations=2, suspicion_min_floor_s=0.0, verify_before_dead=False,
            retransmit_mult=4, slotted_probing=False, confirmation_probes=0, announce_fanout=0, reconnect_interval_s=0.0,
            push_pull_scale="log2",
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> GossipSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # --- derived values --------------------------------------------------------------
    def suspicion_timeouts(self, cluster_size: int) -> tuple[float, float, int]:
        """(min, max, expected confirmations) for a suspicion raised in a cluster of this size.

        memberlist: min = SuspicionMult * max(1, log10 N) * ProbeInterval, max = min *
        SuspicionMaxTimeoutMult, and no confirmations are expected when fewer than k
        other members could give them. Without Lifeguard the timeout is fixed at min.
        """
        scale = max(1.0, math.log10(max(1, cluster_size)))
        minimum = max(self.suspicion_min_floor_s, self.suspicion_mult * scale * self.probe_interval_s)
        if not self.lifeguard:
            return minimum, minimum, 0
        confirmations = self.suspicion_confirmations if cluster_size - 2 >= self.suspicion_confirmations else 0
        return minimum, minimum * self.suspicion_max_timeout_mult, confirmations

    def retransmit_limit(self, cluster_size: int) -> int:
        """How many times one node piggybacks an update: RetransmitMult * ceil(log10(N + 1))."""
        return max(1, self.retransmit_mult * math.ceil(math.log10(cluster_size + 1)))

    def push_pull_interval(self, cluster_size: int) -> float:
        """Full-state sync period for one node, growing with N past the threshold."""
        threshold = max(1, self.push_pull_scale_threshold)
        if cluster_size <= threshold:
            return self.push_pull_interval_s
        if self.push_pull_scale == "log2":
            return self.push_pull_interval_s * (math.ceil(math.log2(cluster_size) - math.log2(threshold)) + 1)
        return self.push_pull_interval_s * cluster_size / threshold
