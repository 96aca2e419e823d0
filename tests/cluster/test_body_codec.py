"""cluster/rpc.py BodyCodec: large /_mesh/ bodies are packed and unpacked in the executor,
small ones inline; the size estimate that decides it stays close to the packed size."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from meshrag import wire
from meshrag.cluster import messages as msg
from meshrag.cluster.rpc import OFFLOAD_BYTES, BodyCodec, estimated_size
from tests.store.conftest import make_doc


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.jobs = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def executor() -> Iterator[CountingExecutor]:
    pool = CountingExecutor()
    yield pool
    pool.shutdown()


def documents(count: int) -> dict[str, Any]:
    return {"documents": [msg.doc_to_wire(make_doc(f"doc{i}", texts=["word " * 100] * 3, dim=384)) for i in range(count)]}


BODIES = {
    "replicated documents": documents(100),
    "a few documents": documents(2),
    "digest entries": {"buckets": list(range(64)), "entries": [[f"cranfield/{i}", 1 << 40, False, "ab" * 32] for i in range(5000)]},
    "states": {"states": {f"d{i}": [1 << 40, "ab" * 32, i % 2 == 0] for i in range(300)}},
    "search": {"kinds": ["dense"], "vector": np.ones(384, np.float32), "query": "lift", "k": 10, "partitions": [1, 2, 3]},
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_the_estimate_is_within_a_factor_of_two_of_the_packed_size(name: str) -> None:
    body = BODIES[name]
    packed = len(wire.pack(body))
    assert packed / 2 <= estimated_size(body) <= packed * 2


async def test_a_large_body_is_packed_and_unpacked_in_the_executor(executor: CountingExecutor) -> None:
    codec = BodyCodec(executor)
    body = BODIES["replicated documents"]
    payload = await codec.pack(body)
    assert len(payload) > OFFLOAD_BYTES and executor.jobs == 1
    back = await codec.unpack(payload)
    assert executor.jobs == 2
    assert back["documents"][7]["id"] == "doc7"
    assert np.array_equal(back["documents"][7]["x"], body["documents"][7]["x"])


async def test_a_small_body_stays_on_the_loop(executor: CountingExecutor) -> None:
    codec = BodyCodec(executor)
    body = BODIES["a few documents"]
    payload = await codec.pack(body)
    assert payload == wire.pack(body)
    assert (await codec.unpack(payload))["documents"][1]["id"] == "doc1"
    assert executor.jobs == 0


async def test_without_an_executor_everything_is_inline() -> None:
    codec = BodyCodec()
    payload = await codec.pack(BODIES["replicated documents"])
    assert (await codec.unpack(payload))["documents"][0]["id"] == "doc0"
