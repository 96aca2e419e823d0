#!/usr/bin/env python3
"""Fuzz gossip datagrams: in-process through the codec, then at a real node's UDP port.

    .venv/bin/python scripts/fuzz_gossip.py [--datagrams 100000] [--node-datagrams 100000] [--seed 1]

Datagrams of five kinds, seeded: random bytes; valid packets sealed with the
cluster's key, then bit-flipped or truncated; packets sealed with another
cluster secret; packets sealed with the right key around random msgpack
bodies (authentic, but nonsense inside); and replays of a valid packet.

In-process: every datagram through ``Codec.open_datagram`` must either open
or raise ``Rejected`` with a reason (never another exception); counts by
reason. Against a real node (not in dev mode, its own secret, loopback): the
same mix sent to its gossip port; afterwards it must answer /health and
/ready, list only itself as a member (no datagram made up a member), show no
traceback in its log, and count what it dropped by reason in /metrics.
Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshrag.client import MeshClient  # noqa: E402
from meshrag.clock import SystemClock  # noqa: E402
from meshrag.gossip.codec import Codec, Rejected, encode_ping  # noqa: E402
from meshrag.localcluster import STORAGE_ROLES  # noqa: E402
from meshrag.localnode import LocalNode  # noqa: E402
from meshrag.security.keyring import Keyring  # noqa: E402

SECRET = "fuzz-gossip-cluster-secret-0001"
LIMIT = 65_000


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds: list[Callable[[], Any]] = [
        lambda: rng.randint(-2**63, 2**64 - 1), lambda: rng.random(), lambda: None, lambda: rng.random() < 0.5,
        lambda: "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 20))).encode("utf-8", "surrogatepass"),
        lambda: "x" * rng.randint(0, 3000),
    ]
    if depth < 4:
        kinds += [lambda: [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 6))],
                  lambda: {str(i): _random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}]
    return rng.choice(kinds)()


def datagrams(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    clock = SystemClock()
    right, wrong = Codec("meshrag", Keyring([SECRET]), clock=clock), Codec("meshrag", Keyring(["another-cluster-secret-01"]), clock=clock)
    prefix = Codec.sender_prefix("fuzzer-node-id", 1, 0)
    # Replayed: one authentic packet, sent again and again (the first may open; every copy is refused).
    valid = right.seal_datagram(prefix, [encode_ping(7, "target", 42)])
    for _ in range(count):
        kind = rng.choice(("random", "flipped", "truncated", "other_key", "nonsense_body", "replay"))
        if kind == "random":
            data = rng.randbytes(rng.randint(0, 1500))
        elif kind in ("flipped", "truncated"):
            fresh = bytearray(right.seal_datagram(prefix, [encode_ping(rng.randint(0, 2**31), "t", rng.randint(0, 2**31))]))
            if kind == "flipped":
                for _ in range(rng.randint(1, 4)):
                    fresh[rng.randrange(len(fresh))] ^= 1 << rng.randrange(8)
            data = bytes(fresh if kind == "flipped" else fresh[: rng.randrange(len(fresh))])
        elif kind == "other_key":
            data = wrong.seal_datagram(prefix, [encode_ping(1, "t", 1)])
        elif kind == "nonsense_body":
            data = right.seal(1, msgpack.packb(_random_value(rng), use_bin_type=True))
        else:
            data = valid
        yield kind, data


def fuzz_in_process(count: int, seed: int) -> Counter[str]:
    clock = SystemClock()
    codec = Codec("meshrag", Keyring([SECRET]), clock=clock, window_s=60.0)
    outcomes: Counter[str] = Counter()
    for _, data in datagrams(random.Random(seed), count):
        try:
            codec.open_datagram(data, LIMIT)
            outcomes["opened"] += 1
        except Rejected as rejected:
            outcomes[f"rejected:{rejected.reason}"] += 1
    return outcomes


def fuzz_node(count: int, seed: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshrag-fuzz-gossip-") as tmp:
        node = LocalNode(Path(tmp) / "n1", name="n1", dev=False,
                         extra_args=[*STORAGE_ROLES, "--partitions", "4", "--replicas", "1", "--secret", SECRET]).start()
        try:
            node.wait_ready()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            started, sent = time.monotonic(), Counter[str]()
            for i, (kind, data) in enumerate(datagrams(random.Random(seed), count)):
                sock.sendto(data, ("127.0.0.1", node.port))
                sent[kind] += 1
                if i % 500 == 0:  # paced, so the node's socket buffer is not what drops them
                    time.sleep(max(0.0, started + i / rate - time.monotonic()))
            time.sleep(2.0)
            client = MeshClient(node.url, timeout=10)
            members = [m["name"] for m in client.cluster()["members"]]
            rejected = _rejected_by_reason(client)
            log = node.log_path.read_text(errors="replace")
            return {"sent": dict(sent), "seconds": round(time.monotonic() - started, 1), "health": client.health(),
                    "members": members, "rejected": rejected, "tracebacks": log.count("Traceback")}
        finally:
            node.stop()


def _rejected_by_reason(client: MeshClient) -> dict[str, float]:
    import urllib.request

    text = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(client.base_url + "/metrics", timeout=10).read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("meshrag_gossip_rejected_packets_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datagrams", type=int, default=100_000, help="in-process")
    parser.add_argument("--node-datagrams", type=int, default=100_000, help="to a real node (0: skip)")
    parser.add_argument("--rate", type=float, default=5000.0, help="datagrams/s to the node")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.monotonic()
    outcomes = fuzz_in_process(args.datagrams, args.seed)
    print(f"in-process: {args.datagrams} datagrams in {time.monotonic() - started:.1f} s: {dict(sorted(outcomes.items()))}")
    ok = True
    if args.node_datagrams:
        report = fuzz_node(args.node_datagrams, args.seed + 1, args.rate)
        print(f"real node: {report}")
        ok = report["members"] == ["n1"] and report["tracebacks"] == 0 and report["health"].get("status") == "ok"
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
