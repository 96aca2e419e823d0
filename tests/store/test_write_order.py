"""The stores' write order (store.types.write_order) as a property, on two real partitions.

Whatever order two replicas receive the same upserts and deletes in, and
whatever repair applies they exchange in between (a replica's current copy,
exported with its vectors and applied on the other), once both have seen
every write they hold the same state: the same version, content, deletion
flag and chunks for every document. Version ties are generated on purpose
(two coordinators can stamp one version): a tombstone beats a document, and
the larger content hash beats the smaller.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrag.store.partition import Partition
from meshrag.store.types import DocumentWrite
from tests.store.conftest import DIM, make_doc

DOC_IDS = ("a", "b", "c")

# One write: (doc id, version, tombstone?, which text). Few versions, so ties are common.
writes = st.lists(
    st.tuples(st.sampled_from(DOC_IDS), st.integers(1, 4), st.booleans(), st.integers(0, 2)),
    min_size=1, max_size=12,
)


def _document(doc_id: str, version: int, deleted: bool, text: int) -> DocumentWrite:
    if deleted:
        return DocumentWrite(doc_id, version, "", "", {}, (), deleted=True)
    return make_doc(doc_id, version, texts=[f"{doc_id} text {text}", f"{doc_id} more {text}"])


def _state(partition: Partition) -> dict[str, Any]:
    state = {}
    for doc_id in DOC_IDS:
        doc = partition.get(doc_id)
        if doc is not None:
            state[doc_id] = (doc.version, doc.deleted, doc.content_hash, doc.text, [c.chunk_id for c in doc.chunks])
    return state


def _repair(source: Partition, target: Partition, doc_id: str) -> None:
    """What anti-entropy does for one document: the source's copy, as stored, applied on the target."""
    target.upsert(source.export([doc_id]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=writes,
    order_b=st.randoms(use_true_random=False),
    repairs=st.lists(st.tuples(st.integers(0, 24), st.booleans(), st.sampled_from(DOC_IDS)), max_size=6),
)
def test_any_interleaving_of_writes_and_repair_applies_converges_on_both_replicas(
    ops: list[tuple[str, int, bool, int]], order_b: Any, repairs: list[tuple[int, bool, str]],
) -> None:
    docs = [_document(*op) for op in ops]
    shuffled = list(docs)
    order_b.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as root:
        a, b = Partition(Path(root) / "a", 0, DIM), Partition(Path(root) / "b", 0, DIM)
        a.open()
        b.open()
        try:
            for step in range(max(len(docs), 25)):
                if step < len(docs):
                    a.upsert([docs[step]])
                    b.upsert([shuffled[step]])
                for at, a_to_b, doc_id in repairs:
                    if at == step:
                        _repair(a, b, doc_id) if a_to_b else _repair(b, a, doc_id)
            assert _state(a) == _state(b)
        finally:
            a.close()
            b.close()
