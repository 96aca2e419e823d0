"""How long OpenMP workers spin after a parallel region: bounded, before any library loads OpenMP.

A node loads two copies of GNU libgomp: torch's (the embedder) and the one usearch
links through numkong (its SIMD kernels). Each reads ``GOMP_SPINCOUNT`` once, when
it is loaded. libgomp's default (300,000 spins) keeps a worker burning a core for
milliseconds after every embedding or index search, which on a node is exactly
when its event loop, storage threads and neighbour processes need the CPU.
Measured on 2 cores (scripts/bench_search.py --only latency, Cranfield queries,
p50): search 15.2 -> 12.2 ms on one node and 18.6 -> 13.6 ms through three; a
single query's embedding alone is as fast as with the default (7.5-7.9 ms), and
batch throughput is the same. OMP_WAIT_POLICY=PASSIVE (no spinning) costs 2 ms
per query instead.

So the bound is set when the ``meshrag`` package is imported (meshrag/__init__.py).
Setting it when the embedder loads was too late in any process that had imported
usearch first: a node (node.py imports the storage engine), and the benchmark
client once meshrag.config imported the index settings, whose spinning workers
then took a core from the node it measured (one node's HTTP p50 16.3 against
11.9 ms). An operator's own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
"""

from __future__ import annotations

import os

OPENMP_SPIN_COUNT = "20000"


def bound_openmp_spin() -> None:
    """Effective only before the first libgomp loads (torch, usearch): see the module docstring."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)
