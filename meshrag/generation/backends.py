"""Which backend a generator node runs: built from [generation], imported only when chosen.

llama.cpp is the CPU default; vllm needs the gpu extra and a GPU; openai talks
to any OpenAI-compatible server. Each is imported here and only here, so a node
without the generator role (or with another backend) never imports torch's
CUDA stack or vllm.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from pathlib import Path

from meshrag.config import GenerationConfig
from meshrag.generation.base import GeneratorBackend


def build_backend(config: GenerationConfig, data_dir: Path, llama_thread: Executor) -> GeneratorBackend:
    """The configured backend, not loaded yet (``load`` blocks: call it from an executor)."""
    if config.backend == "vllm":
        from meshrag.generation.vllm import VllmBackend

        return VllmBackend(
            config.model, context_tokens=config.context_tokens, gpu_memory_utilization=config.gpu_memory_utilization,
            parallel=config.parallel, stall_timeout_s=config.stall_timeout_s,
        )
    if config.backend == "openai":
        from meshrag.generation.openai import OpenAIBackend

        return OpenAIBackend(
            config.openai_base_url, config.openai_model, api_key=os.environ.get(config.openai_api_key_env) or None,
            api=config.openai_api, context_tokens=config.context_tokens, parallel=config.parallel,
            stall_timeout_s=config.stall_timeout_s,
        )
    from meshrag.generation.llamacpp import LlamaCppBackend, assemble_default_model

    model_path = Path(config.model) if config.model else assemble_default_model(data_dir)
    return LlamaCppBackend(
        model_path, executor=llama_thread, n_threads=config.threads, n_ctx=config.context_tokens,
        stall_timeout_s=config.stall_timeout_s, first_piece_timeout_s=config.first_token_timeout_s,
    )
