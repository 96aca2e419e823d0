"""`python -m meshrag.setup_check`: prove the models load offline on this machine.

scripts/setup.sh runs it after installing, so a broken install fails at setup
with a clear message instead of at the first request. It loads the embedder
and encodes one sentence; when llama-cpp-python is installed (the cpu extra)
it also assembles the bundled GGUF into the data directory (where nodes look
for it, so they start without assembling again) and generates a few tokens.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshrag.generation.base import GenerationRequest
from meshrag.generation.llamacpp import LlamaCppBackend, assemble_default_model

DATA_DIR_ENV = "MESHRAG_DATA_DIR"
DEFAULT_DATA_DIR = "./meshrag-data"  # the default of `meshrag start --data-dir`


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def check_embedder() -> None:
    from meshrag.rag.embedder import Embedder, default_model_path

    started = time.perf_counter()
    embedder = Embedder(default_model_path(), threads=1)
    embedder.load()
    vectors = embedder.encode(["MeshRAG checks that its embedding model loads."])
    if vectors.shape != (1, embedder.dim):
        raise RuntimeError(f"the embedder returned shape {vectors.shape}, expected (1, {embedder.dim})")
    _report(f"embedder {embedder.model_name}: dim {embedder.dim}, {time.perf_counter() - started:.1f} s")


def llama_cpp_installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def check_generator(data_dir: Path) -> None:
    started = time.perf_counter()
    model_path = assemble_default_model(data_dir)
    _report(f"generation model {model_path} ({model_path.stat().st_size / 2**20:.0f} MiB, sha256 verified)")
    # A one-shot check in its own process, not a node: it owns the generation thread itself.
    with ThreadPoolExecutor(1, thread_name_prefix="llama") as thread:
        backend = LlamaCppBackend(model_path, executor=thread, n_threads=1, n_ctx=512)
        backend.load()
        text = asyncio.run(_generate_a_little(backend))
    _report(f"llama.cpp generated {text!r} (prompt format {backend.prompt_format}), {time.perf_counter() - started:.1f} s")


async def _generate_a_little(backend: LlamaCppBackend) -> str:
    request = GenerationRequest(messages=[{"role": "user", "content": "Question: What colour is the sky?"}], max_tokens=4, temperature=0)
    try:
        return "".join([piece async for piece in backend.stream(request)])
    finally:
        await backend.close()


def _report(line: str) -> None:
    print(f"[setup-check] {line}", flush=True)


def main() -> int:
    try:
        check_embedder()
        if llama_cpp_installed():
            check_generator(default_data_dir())
        else:
            _report("llama-cpp-python is not installed: skipping the generator (install the cpu extra for it)")
    except Exception as exc:  # the point of this command is to explain the failure
        print(f"[setup-check] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    _report("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
