"""Repair digests of a partition: what anti-entropy compares, defined once, here.

A partition's documents and tombstones fall into BUCKETS buckets by id; each
entry (id, version, deleted, content hash) stands as a DIGEST_BYTES blake2b
digest, and a bucket is the count and XOR of its entries' digests, so a write
updates its bucket in O(1) (schema.py's triggers do it in the writing
transaction) and the order of entries does not matter. cluster/repair.py
compares these buckets between replicas; both sides must use this definition.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from meshrag.store.types import DigestEntry

BUCKETS = 64
DIGEST_BYTES = 16
EMPTY_HASHES: tuple[str, ...] = ("",) * BUCKETS  # a partition not held here


def bucket_of(doc_id: str, buckets: int = BUCKETS) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=4).digest(), "big") % buckets


def entry_digest(doc_id: str, version: int, deleted: bool, content_hash: str) -> bytes:
    """DIGEST_BYTES standing for one entry. A bucket folds its entries' digests with XOR, which
    is order-independent and lets a write update the bucket in O(1) (XOR the old entry out and
    the new one in): partitions keep their buckets that way, with every write (schema.py)."""
    text = f"{doc_id}\x00{version}\x00{int(deleted)}\x00{content_hash}"
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).digest()


def xor_digests(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(DIGEST_BYTES, "big")


def bucket_hash(count: int, folded: bytes) -> str:
    """A bucket as compared on the wire: '' when it holds no entry, else the XOR of their digests
    (the count tells an empty bucket from one whose digests happen to cancel out)."""
    return folded.hex() if count else ""


def fold_buckets(entries: Iterable[DigestEntry], buckets: int = BUCKETS) -> list[tuple[int, bytes]]:
    """(entry count, XOR of entry digests) per bucket, computed from scratch."""
    counts, folded = [0] * buckets, [0] * buckets
    for e in entries:
        b = bucket_of(e.doc_id, buckets)
        counts[b] += 1
        folded[b] ^= int.from_bytes(entry_digest(e.doc_id, e.version, e.deleted, e.content_hash), "big")
    return [(count, value.to_bytes(DIGEST_BYTES, "big")) for count, value in zip(counts, folded)]


def bucket_hashes(entries: Iterable[DigestEntry], buckets: int = BUCKETS) -> list[str]:
    """One hash per bucket ('' for an empty one), from scratch; entries in any order. What a
    partition's incrementally kept buckets must always equal."""
    return [bucket_hash(count, folded) for count, folded in fold_buckets(entries, buckets)]
