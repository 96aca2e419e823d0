"""embedding/remote.py, embedding/local.py and api/mesh_embed.py: the /_mesh/embed contract.

The embedder node's route runs in an aiohttp test server over the real
all-MiniLM-L6-v2 behind a real LocalEmbedding; the coordinator's side is the
real RemoteEmbedders over a real PeerClient. What is tested is the wire:
vectors equal to what the coordinator would compute itself, 503 with
Retry-After before any work when the queue is full, the model check, the
cluster secret and body validation.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Iterator

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from meshrag.api.errors import error_middleware
from meshrag.api.mesh_embed import EmbedRoute
from meshrag.cluster.rpc import PeerClient
from meshrag.security import mesh_auth
from tests.security.helpers import rpc_auth
from meshrag.config import Config
from meshrag.embedding.base import DEFAULT_RATE, EmbedderInfo, EmbedFailed
from meshrag.embedding.local import LocalEmbedding, RateMeter
from meshrag.embedding.remote import MAX_TEXTS, RemoteEmbedders, request_from_wire
from meshrag.errors import EmbedderBusy, ValidationError
from meshrag.rag.embedder import Embedder, default_model_path

pytestmark = pytest.mark.slow  # loads the real model
SECRET = "a-cluster-secret-of-some-length"


def passages(n: int, prefix: str = "passage") -> list[str]:
    return [f"{prefix} {i}: the boundary layer thickens downstream of station {i}, where the shock meets it." for i in range(n)]


@pytest.fixture(scope="module")
def loaded() -> Iterator[Embedder]:
    with ThreadPoolExecutor(1, thread_name_prefix="embedder") as thread:
        model = Embedder(default_model_path(), threads=1, max_batch=16, executor=thread)
        model.load()
        yield model


class EmbedderNode:
    def __init__(self, embedder: Embedder, limit: int) -> None:
        self.config = Config()
        self.config.node.secret = SECRET
        self.local_embedding: LocalEmbedding | None = LocalEmbedding(embedder, limit, RateMeter())


@pytest.fixture
async def served(loaded: Embedder) -> AsyncIterator[tuple[EmbedderNode, EmbedderInfo, RemoteEmbedders]]:
    await loaded.start()
    node = EmbedderNode(loaded, limit=48)
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(EmbedRoute(node).routes())
    mesh_auth.install(app, rpc_auth(SECRET, 'served-node'))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    target = EmbedderInfo("n2", "n2", f"127.0.0.1:{server.port}", loaded.model_name, loaded.dim, DEFAULT_RATE, 0, 48)
    try:
        yield node, target, RemoteEmbedders(PeerClient(session, rpc_auth(SECRET), timeout_s=30.0))
    finally:
        await session.close()
        await server.close()
        await loaded.close()


async def test_remote_vectors_equal_what_the_coordinator_computes_itself(served: tuple[EmbedderNode, EmbedderInfo, RemoteEmbedders], loaded: Embedder) -> None:
    _, target, remote = served
    texts = passages(24)
    reply = await remote.send(target, texts)
    own = loaded.encode(texts)  # another batch composition: one 16-row batch plus 8, vs one of 24 here
    assert reply.vectors.shape == (24, 384) and reply.vectors.dtype == np.float32
    cosines = np.sum(reply.vectors * own, axis=1)
    assert cosines.min() >= 0.99999
    assert reply.queued == 0 and reply.rate and reply.rate > 0


async def test_a_full_queue_answers_503_with_retry_after_before_any_work(served: tuple[EmbedderNode, EmbedderInfo, RemoteEmbedders], loaded: Embedder) -> None:
    node, target, remote = served
    backlog = asyncio.ensure_future(loaded.embed(passages(64, "backlog")))  # over the limit of 48
    await asyncio.sleep(0)  # queued, not finished
    texts_before = loaded.stats()["texts"]
    with pytest.raises(EmbedderBusy) as caught:
        await remote.send(target, passages(16))
    assert caught.value.retry_after_s >= 0.5
    await backlog
    assert loaded.stats()["texts"] - texts_before == 64  # the refused part never reached the model


async def test_an_empty_queue_takes_a_part_larger_than_its_limit(served: tuple[EmbedderNode, EmbedderInfo, RemoteEmbedders]) -> None:
    _, target, remote = served
    reply = await remote.send(target, passages(60))  # limit 48: nothing waits, so it is embeddable here
    assert reply.vectors.shape == (60, 384)


async def test_another_model_is_refused_not_embedded(served: tuple[EmbedderNode, EmbedderInfo, RemoteEmbedders]) -> None:
    _, target, remote = served
    other = EmbedderInfo(target.node_id, target.name, target.address, "other-model@000000000000", 384, 20.0, 0, 48)
    with pytest.raises(EmbedFailed, match="409.*embeds with"):
        await remote.send(other, passages(2))


async def test_a_wrong_secret_is_refused(served: tuple[EmbedderNode, EmbedderInfo, RemoteEmbedders]) -> None:
    _, target, _ = served
    async with aiohttp.ClientSession() as session:
        intruder = RemoteEmbedders(PeerClient(session, rpc_auth("not-the-secret"), timeout_s=5.0))
        with pytest.raises(EmbedFailed, match="401"):
            await intruder.send(target, passages(1))


async def test_a_dead_embedder_is_an_embed_failure(loaded: Embedder) -> None:
    async with aiohttp.ClientSession() as session:
        remote = RemoteEmbedders(PeerClient(session, rpc_auth(SECRET), timeout_s=2.0))
        gone = EmbedderInfo("n9", "n9", "127.0.0.1:9", loaded.model_name, 384, 20.0, 0, 48)
        with pytest.raises(EmbedFailed, match="n9"):
            await remote.send(gone, passages(1))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"texts": ["a"]}, "model"),
        ({"model": "m", "texts": []}, "texts"),
        ({"model": "m", "texts": "a"}, "texts"),
        ({"model": "m", "texts": ["a"] * (MAX_TEXTS + 1)}, "texts"),
        ({"model": "m", "texts": ["a", 3]}, "texts[1]"),
        ({"model": "m", "texts": ["a", "x" * 101]}, "texts[1]"),
        ({"model": "m", "texts": ["nul\x00byte"]}, "texts[0]"),
        ({"model": "m", "texts": ["lone \ud800 surrogate"]}, "texts[0]"),
    ],
)
def test_bad_requests_name_the_field(body: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        request_from_wire(body, max_text_chars=100)
    assert caught.value.field == field


def test_rate_meter_follows_recent_batches_weighted_by_size() -> None:
    meter = RateMeter()
    meter.observe(64, 2.0)  # 32 texts/s: the first sample is taken as it is
    assert meter.rate == 32.0
    meter.observe(1, 1.0)  # a lone query, slow per text: moves the mean very little
    assert 31.0 < meter.rate < 32.0
    for _ in range(30):
        meter.observe(64, 8.0)  # the CPU got busy: 8 texts/s
    assert meter.rate == pytest.approx(8.0, rel=0.01)
    meter.observe(0, 1.0)
    meter.observe(5, 0.0)
    assert meter.rate == pytest.approx(8.0, rel=0.01)
