"""The chaos suite's checker: what a history and the healed cluster's state say went wrong.

Pure: it reads a recorded history and what every replica holds after heal and
repair, and judges; it starts nothing and reads no clock. Unit-tested on
hand-made histories (tests/chaos/test_checker.py).

The model is Jepsen's, for a last-writer-wins register per key:

* Every operation has a real-time interval [start, end] on the runner's clock
  and an outcome: ``ok`` (acknowledged), ``failed`` (definitely not applied: a
  refusal before anything was written) or ``unknown`` (a timeout, a 503
  ``write_outcome_unknown``, a cut connection: it may or may not have landed).
* Write ``a`` precedes write ``b`` when ``a.end < b.start``. The acknowledged
  writes that no other acknowledged write follows are the key's *last*
  writes. A replica may legitimately end with the value of a last write, or of
  any write that may have landed (ok or unknown) and does not precede every
  last write: such a write was concurrent with the last ones (or came after
  them), and last-writer-wins may have ordered it after them. Anything else a
  replica holds for that key is an anomaly, named by what it looks like:

  - **lost**: the key's last acknowledged writes are upserts and the replica
    holds nothing for it (no document, no tombstone);
  - **resurrected**: every value the replica may hold is a deletion, and it
    holds a live document;
  - **stale**: the replica holds a value that a later acknowledged write
    superseded and nothing concurrent could have brought back.

* Replicas that each hold a value the model allows may still disagree with one
  another on the version: after heal and repair they must converge.
* Replica counts: a key whose admissible final state is a live document must
  be held by every owner (N of them) and by nobody else.
* Membership: after heal every node's view of the members must be the same.
* Session reads: a read made with the session token of a client's earlier
  acknowledged write must see that write or a value that may have come after
  it (read-your-writes).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Sequence

Outcome = Literal["ok", "failed", "unknown"]
Kind = Literal["upsert", "delete", "read", "search", "ask"]

ABSENT = "<absent>"  # what a read or a replica shows for a key it knows nothing of
DELETED = "<deleted>"  # a tombstone, or a read answered "not found" after a delete


@dataclass(frozen=True)
class Op:
    """One recorded operation of the workload."""

    id: int
    client: int
    kind: Kind
    key: str
    start: float
    end: float
    outcome: Outcome
    value: str | None = None  # the upsert's value token; None for deletes and reads
    observed: str | None = None  # a read's result: a value token, ABSENT or DELETED
    session: str | None = None  # the session this op carried (reads) or extended (writes)
    node: str = ""  # the node that coordinated it
    error: str = ""  # why it was not ok: the error code, for the report

    @property
    def written(self) -> str:
        """The state this write leaves behind: its value, or DELETED."""
        return DELETED if self.kind == "delete" else str(self.value)

    def precedes(self, other: "Op") -> bool:
        return self.end < other.start


@dataclass(frozen=True)
class Stored:
    """What one replica holds for a key, read by exact id: a value token, or DELETED for a tombstone."""

    value: str
    version: int


# node -> key -> what it holds (a key it lacks is simply not there)
ReplicaStates = Mapping[str, Mapping[str, Stored]]


@dataclass(frozen=True)
class Anomaly:
    kind: str  # lost | stale | resurrected | diverged | replica_count | membership | read_your_writes
    key: str
    node: str
    detail: str


@dataclass
class Verdict:
    anomalies: list[Anomaly] = field(default_factory=list)
    keys_checked: int = 0
    replicas_checked: int = 0

    def of(self, kind: str) -> list[Anomaly]:
        return [a for a in self.anomalies if a.kind == kind]

    def counts(self) -> dict[str, int]:
        kinds = ("lost", "stale", "resurrected", "diverged", "replica_count", "membership", "read_your_writes")
        return {kind: len(self.of(kind)) for kind in kinds}

    @property
    def passed(self) -> bool:
        return not self.anomalies


# ------------------------------------------------------------------ the register model
def writes_by_key(history: Iterable[Op]) -> dict[str, list[Op]]:
    keyed: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        if op.kind in ("upsert", "delete"):
            keyed[op.key].append(op)
    return keyed


def last_acknowledged(writes: Sequence[Op]) -> list[Op]:
    """The acknowledged writes no other acknowledged write follows in real time."""
    acked = [w for w in writes if w.outcome == "ok"]
    return [w for w in acked if not any(w.precedes(other) for other in acked)]


def admissible(writes: Sequence[Op]) -> set[str]:
    """Every final state a replica may hold for the key without an anomaly."""
    last = last_acknowledged(writes)
    maybe_landed = [w for w in writes if w.outcome != "failed"]
    if not last:  # nothing acknowledged: nothing at all, or anything that may have landed
        return {ABSENT} | {w.written for w in maybe_landed}
    allowed = {w.written for w in last}
    allowed |= {w.written for w in maybe_landed if not all(w.precedes(l) for l in last)}
    return allowed


def superseded_values(writes: Sequence[Op]) -> set[str]:
    """Values of writes that precede every last acknowledged write: a replica showing one is stale."""
    last = last_acknowledged(writes)
    return {w.written for w in writes if last and w.outcome != "failed" and all(w.precedes(l) for l in last)}


# ------------------------------------------------------------------ the checks
def check_replicas(history: Sequence[Op], states: ReplicaStates, owners: Mapping[str, Sequence[str]]) -> Verdict:
    """Lost, stale and resurrected values, diverged versions and replica counts, per key and replica.

    ``owners``: each key's replicas after heal (the ring's N owners of its partition)."""
    verdict = Verdict()
    for key, writes in sorted(writes_by_key(history).items()):
        verdict.keys_checked += 1
        allowed = admissible(writes)
        for node in owners.get(key, ()):
            verdict.replicas_checked += 1
            held = states.get(node, {}).get(key)
            anomaly = _judge_replica(key, node, held, allowed, superseded_values(writes))
            if anomaly is not None:
                verdict.anomalies.append(anomaly)
        verdict.anomalies.extend(_divergence(key, states, owners.get(key, ())))
        verdict.anomalies.extend(_replica_count(key, states, owners.get(key, ())))
    return verdict


def _judge_replica(key: str, node: str, held: Stored | None, allowed: set[str], superseded: set[str]) -> Anomaly | None:
    shown = ABSENT if held is None else held.value
    if shown in allowed or (shown == ABSENT and DELETED in allowed):
        return None  # a purged tombstone reads as absent, which is what the delete meant
    if shown == ABSENT:
        return Anomaly("lost", key, node, f"holds nothing; the last acknowledged state is one of {sorted(allowed)}")
    if shown != DELETED and allowed <= {DELETED, ABSENT}:
        return Anomaly("resurrected", key, node, f"holds {shown!r} after an acknowledged delete")
    if shown in superseded:
        return Anomaly("stale", key, node, f"holds {shown!r}, superseded by an acknowledged {sorted(allowed)}")
    return Anomaly("stale", key, node, f"holds {shown!r}, which no write may have left (allowed {sorted(allowed)})")


def _divergence(key: str, states: ReplicaStates, owners: Sequence[str]) -> list[Anomaly]:
    held = {node: states[node][key] for node in owners if key in states.get(node, {})}
    if len({(s.value, s.version) for s in held.values()}) <= 1:
        return []
    shown = ", ".join(f"{node}: {s.value!r} v{s.version}" for node, s in sorted(held.items()))
    return [Anomaly("diverged", key, node, f"replicas disagree: {shown}") for node in sorted(held)]


def _replica_count(key: str, states: ReplicaStates, owners: Sequence[str]) -> list[Anomaly]:
    """A live document on exactly its owners; a copy anywhere else is one too many."""
    live = {node for node, held in states.items() if key in held and held[key].value != DELETED}
    anomalies = [Anomaly("replica_count", key, node, "holds a live copy but is not an owner") for node in sorted(live - set(owners))]
    live_owners = live & set(owners)
    if live_owners and len(live_owners) < len(owners):  # the document survived, but not everywhere
        without = ",".join(node for node in owners if node not in live_owners)
        anomalies.append(Anomaly("replica_count", key, without, f"{len(live_owners)} live copies of {len(owners)}"))
    return anomalies


def check_membership(views: Mapping[str, Mapping[str, str]]) -> Verdict:
    """Every node's view (member -> state) must be the same after heal."""
    verdict = Verdict()
    distinct = {tuple(sorted(view.items())) for view in views.values()}
    if len(distinct) > 1:
        reference = max(distinct, key=lambda v: sum(1 for view in views.values() if tuple(sorted(view.items())) == v))
        for node, view in sorted(views.items()):
            if tuple(sorted(view.items())) != reference:
                differs = {m: s for m, s in view.items() if dict(reference).get(m) != s}
                verdict.anomalies.append(Anomaly("membership", "", node, f"sees {differs}, the others {dict(reference)}"))
    return verdict


def check_session_reads(history: Sequence[Op]) -> Verdict:
    """A session read must see its session's last acknowledged write, or what may have followed it."""
    verdict = Verdict()
    writes = writes_by_key(history)
    for read in (op for op in history if op.kind == "read" and op.session and op.outcome == "ok"):
        own = [w for w in writes.get(read.key, []) if w.session == read.session and w.outcome == "ok" and w.precedes(read)]
        if not own:
            continue
        latest = [w for w in own if not any(w.precedes(other) for other in own)]
        may_see = {w.written for w in latest}
        may_see |= {w.written for w in writes[read.key] if w.outcome != "failed" and not all(w.precedes(l) for l in latest)}
        seen = DELETED if read.observed == ABSENT and DELETED in may_see else read.observed
        if seen not in may_see:
            verdict.anomalies.append(Anomaly(
                "read_your_writes", read.key, read.node,
                f"read {read.observed!r} at {read.start:.3f} after its session wrote {sorted(may_see)}",
            ))
    return verdict


def check(history: Sequence[Op], states: ReplicaStates, owners: Mapping[str, Sequence[str]],
          views: Mapping[str, Mapping[str, str]]) -> Verdict:
    """Every check at once."""
    verdict = check_replicas(history, states, owners)
    verdict.anomalies.extend(check_membership(views).anomalies)
    verdict.anomalies.extend(check_session_reads(history).anomalies)
    return verdict


# ------------------------------------------------------------------ availability and latency
@dataclass(frozen=True)
class Availability:
    ops: int
    ok: int
    failed: int
    unknown: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def share_ok(self) -> float | None:
        return self.ok / self.ops if self.ops else None


def availability(history: Sequence[Op], windows: Sequence[tuple[float, float]] | None = None) -> Availability:
    """Outcomes and latency of acknowledged ops; with ``windows``, only ops overlapping one of them
    (the intervals a fault was in force)."""
    chosen = [op for op in history if windows is None or any(op.start < end and op.end > start for start, end in windows)]
    latencies = sorted((op.end - op.start) * 1000 for op in chosen if op.outcome == "ok")
    return Availability(
        ops=len(chosen),
        ok=sum(op.outcome == "ok" for op in chosen),
        failed=sum(op.outcome == "failed" for op in chosen),
        unknown=sum(op.outcome == "unknown" for op in chosen),
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
    )


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return round(sorted_values[index], 2)


def availability_report(history: Sequence[Op], windows: Sequence[tuple[float, float]]) -> dict[str, object]:
    """Outcomes and latency of ``history`` overall and while a fault was in force, as the report gives them."""
    whole, during = availability(history), availability(history, windows)
    return {"ops": whole.ops, "ok": whole.ok, "failed": whole.failed, "unknown": whole.unknown,
            "during_faults": {"ops": during.ops, "ok_share": during.share_ok, "p50_ms": during.p50_ms, "p99_ms": during.p99_ms},
            "p50_ms": whole.p50_ms, "p99_ms": whole.p99_ms}
