"""The GPU generator: vLLM in-process (the gpu extra), many generations batched at once.

vLLM's AsyncLLM runs the model in an engine-core process of its own and
batches every request it holds, so unlike llama.cpp this backend runs
``parallel`` generations together (vLLM's max_num_seqs); the node's admission
queue (generation/admission.py) bounds what reaches it.

vllm and torch's CUDA stack are imported inside load(), never at module level:
backends.py imports this module only for backend = "vllm", and even then a
host without vllm or without a GPU gets a ConfigError that says what to do
instead of an ImportError from deep inside.

Prompts are rendered and tokenised here, as in llamacpp.py, and handed to vLLM
as token ids: message text (passages, questions) is tokenised with special
tokens split, so "<eos>" in a passage is read as characters; only the chat
template's own markup is special. A model whose tokenizer has no chat template
gets llamacpp's plain format. The continuation of a request (generation/base.py)
is appended to the rendered prompt as plain text, so greedy decoding picks up
where another generator of the same model left off.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import uuid
from typing import Any, AsyncIterator

from meshrag.errors import ConfigError, MeshragError, Unavailable
from meshrag.generation.base import BackendCounters, GenerationFailed, GenerationRequest
from meshrag.generation.llamacpp import PLAIN_FORMAT, PLAIN_STOPS, render_plain_prompt

log = logging.getLogger(__name__)

GPU_EXTRA = "install the gpu extra: MESHRAG_EXTRAS=cpu,gpu,dev scripts/setup.sh"

# Stands in for a message's text while the chat template renders, so the result can be split
# into the template's markup (special tokens on) and message text (off). Private-use characters:
# no template produces them and no tokenizer treats them as markup.
_SLOT = "\ue000meshrag-message-{}\ue000"
_SLOT_PATTERN = re.compile("\ue000meshrag-message-(\\d+)\ue000")


class VllmBackend:
    name = "vllm"
    supports_continuation = True

    def __init__(
        self, model: str, *, context_tokens: int, gpu_memory_utilization: float, parallel: int, stall_timeout_s: float,
    ) -> None:
        if parallel < 1 or stall_timeout_s <= 0 or not 0 < gpu_memory_utilization <= 1:
            raise ValueError("parallel must be >= 1, stall_timeout_s > 0 and gpu_memory_utilization in (0, 1]")
        self.model = model  # a Hugging Face id or a local directory, advertised as given
        self.context_tokens = context_tokens
        self.parallel = parallel
        self.prompt_format = ""
        self._gpu_memory_utilization = gpu_memory_utilization
        self._stall_timeout_s = stall_timeout_s
        self._engine: Any = None  # vllm.v1.engine.async_llm.AsyncLLM
        self._tokenizer: Any = None  # the engine's Hugging Face tokenizer
        self._prefix: list[int] = []  # what the tokenizer puts before a text (BOS, for most models)
        self._sampling: Any = None  # (SamplingParams, RequestOutputKind, TokensPrompt), imported by load()
        self._running: set[str] = set()  # request ids, to abort them on close
        self._counters = BackendCounters()
        self._closed = False

    # -------------------------------------------------------------- loading
    def load(self) -> None:
        """Start the engine (blocking, minutes for a large model: call it from an executor)."""
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"generation.backend = 'vllm' needs the vllm package ({exc}); {GPU_EXTRA}", field="generation.backend") from None
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "generation.backend = 'vllm' needs a CUDA GPU and this host has none; use backend 'llama.cpp' "
                "(CPU, in-process) or 'openai' (an OpenAI-compatible server elsewhere)", field="generation.backend",
            )
        if not self.model:
            raise ConfigError("generation.backend = 'vllm' needs generation.model: a Hugging Face model id or a local directory", field="generation.model")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=self.model, max_model_len=self.context_tokens, gpu_memory_utilization=self._gpu_memory_utilization,
            max_num_seqs=self.parallel, disable_log_stats=True,
        )
        # Built off the event loop: AsyncLLM starts its output handler on the first request,
        # on whichever loop makes it.
        engine = AsyncLLM.from_engine_args(args)
        try:
            tokenizer = engine.get_tokenizer()
            if inspect.isawaitable(tokenizer):  # a coroutine (with nothing to wait for) in older vLLM
                tokenizer = asyncio.run(tokenizer)
        except BaseException:
            engine.shutdown()
            raise
        self._engine, self._tokenizer = engine, tokenizer
        self._prefix = _leading_special_tokens(tokenizer)
        self._sampling = (SamplingParams, RequestOutputKind, TokensPrompt)
        self.prompt_format = "template" if getattr(tokenizer, "chat_template", None) else PLAIN_FORMAT
        log.info("vLLM loaded %s (context %d, %d at once, prompt format %s)", self.model, self.context_tokens, self.parallel, self.prompt_format)

    # ------------------------------------------------------------ streaming
    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Text pieces as vLLM detokenises them, after the continuation if the request has one."""
        engine = self._engine
        if engine is None or self._closed:
            raise Unavailable("the vLLM engine is not loaded", retry_after_s=5)
        SamplingParams, RequestOutputKind, TokensPrompt = self._sampling
        prompt, stop = self.render(request)
        room = self.context_tokens - len(prompt)
        if room < 1:
            raise GenerationFailed(f"the prompt ({len(prompt)} tokens) fills the model's context of {self.context_tokens}", retryable=False)
        params = SamplingParams(
            max_tokens=min(request.max_tokens, room), temperature=request.temperature, stop=list(stop) or None,
            output_kind=RequestOutputKind.DELTA,  # each output carries only the new text and tokens
        )
        request_id = f"meshrag-{uuid.uuid4().hex}"
        outputs = engine.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id)
        self._running.add(request_id)
        outcome = "failed"
        try:
            while True:
                try:
                    async with asyncio.timeout(self._stall_timeout_s):
                        output = await anext(outputs)
                except StopAsyncIteration:
                    raise self._cut_short() from None
                except TimeoutError:  # the timeout cancelled vLLM's generator, which aborted the request
                    raise Unavailable(f"vLLM produced nothing for {self._stall_timeout_s:g} s", retry_after_s=1) from None
                except MeshragError:
                    raise
                except Exception as exc:
                    raise self._failure(exc) from exc
                completion = output.outputs[0] if output.outputs else None
                if completion is not None:
                    self._counters.tokens_generated += len(completion.token_ids)
                    if completion.text:
                        yield completion.text
                if output.finished:
                    if self._closed or completion is None or completion.finish_reason == "abort":
                        raise self._cut_short()  # aborted (by close()): the answer is not whole
                    outcome = "completed"
                    return
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        finally:
            self._running.discard(request_id)
            self._counters.count(outcome)
            # Recent vLLM aborts a request whose generator is closed; older releases only on
            # cancellation, so abort explicitly too (a no-op for a finished or unknown id).
            try:
                await outputs.aclose()
                if outcome != "completed" and not self._closed:
                    await engine.abort(request_id)
            except Exception:  # a dead engine has nothing left to abort
                log.warning("could not abort vLLM request %s", request_id, exc_info=True)

    def _cut_short(self) -> Unavailable:
        reason = "the generator is shutting down" if self._closed else "vLLM ended the request before it finished"
        return Unavailable(reason, retry_after_s=1)

    def _failure(self, exc: Exception) -> MeshragError:
        if self._closed or getattr(self._engine, "errored", False):
            return Unavailable(f"the vLLM engine is down: {exc!r}", retry_after_s=5)
        # vLLM validates requests with ValueError subclasses: the request itself is at fault.
        return GenerationFailed(f"vLLM failed: {exc!r}", retryable=not isinstance(exc, ValueError))

    def render(self, request: GenerationRequest) -> tuple[list[int], tuple[str, ...]]:
        """The prompt as token ids, and the stop strings of its format."""
        tokenizer = self._tokenizer
        if self.prompt_format == PLAIN_FORMAT:
            text = render_plain_prompt(request.messages) + request.continuation
            return self._prefix + _encode(tokenizer, text, markup=False), PLAIN_STOPS
        tokens: list[int] = []
        for text, markup in _render_template(tokenizer, request.messages) + [(request.continuation, False)]:
            if text:
                tokens += _encode(tokenizer, text, markup=markup)
        # The end of a turn is the model's EOS, which vLLM stops at by itself.
        return tokens, ()

    # ---------------------------------------------------------------- state
    def stats(self) -> dict[str, Any]:
        return dict(self._counters.as_dict(), running=len(self._running))

    async def close(self) -> None:
        """Abort what is running (those streams fail with Unavailable) and stop the engine."""
        if self._closed:
            return
        self._closed = True
        engine, self._engine = self._engine, None
        if engine is None:
            return
        for request_id in list(self._running):  # one by one: older vLLM aborts one id per call
            try:
                await engine.abort(request_id)
            except Exception:
                log.warning("could not abort vLLM request %s", request_id, exc_info=True)
        # Stops the engine-core process and frees the GPU; the node is closing, so the seconds this
        # may block the loop are spent on nothing else.
        engine.shutdown()


def _encode(tokenizer: Any, text: str, *, markup: bool) -> list[int]:
    """Token ids of text: markup with its special tokens parsed, message text with them split
    into ordinary characters (split_special_tokens, transformers' tokenizers)."""
    if markup:
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _leading_special_tokens(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS for Llama or Gemma, none for
    Qwen), found by tokenising with and without them. Only the leading ones: a prompt must not
    end in whatever some tokenizers append (EOS, SEP)."""
    marked = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(marked) - len(plain) + 1):
        if marked[start : start + len(plain)] == plain:
            return marked[:start]
    return []


def _render_template(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The chat template rendered around placeholder contents, as (text, is_markup) segments."""
    placeholders = [{"role": m.get("role", "user"), "content": _SLOT.format(i)} for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(placeholders, tokenize=False, add_generation_prompt=True)
    segments: list[tuple[str, bool]] = []
    position = 0
    for match in _SLOT_PATTERN.finditer(rendered):
        segments.append((rendered[position : match.start()], True))
        segments.append((str(messages[int(match.group(1))].get("content") or ""), False))
        position = match.end()
    segments.append((rendered[position:], True))
    return segments
