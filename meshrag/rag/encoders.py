"""Sentence encoders: the library that runs the embedding model, one per backend.

rag/embedder.py owns what every backend shares (the micro-batcher, the model's
identity, the chunker's tokenizer); an Encoder only turns texts into vectors.
Two backends read the same local sentence-transformers directory:

- ``sentence-transformers`` (default): in-process torch, CPU or CUDA.
- ``vllm`` (the gpu extra): vLLM's offline pooling runner on a CUDA GPU. It
  batches on the GPU much faster than torch does on a CPU core, and in float32
  its vectors match the CPU backend's (cosine >= 0.99999), so nodes of either
  kind serve one cluster: stored vectors never depend on who embedded them.

Neither library is imported at module level: the CPU hosts have no vllm, and
torch alone takes seconds to import. Configuration mistakes (vllm missing, no
GPU) surface from load() as ConfigError naming the setting to change.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from meshrag.errors import ConfigError, Unavailable

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

SENTENCE_TRANSFORMERS = "sentence-transformers"
VLLM = "vllm"
GPU_EXTRA = "embedder.backend = 'vllm' needs the gpu extra: pip install meshrag[gpu]"

# A window larger than this in a config is "unlimited" (transformers writes 1e30 there).
_UNBOUNDED_WINDOW = 1_000_000


class Encoder(Protocol):
    """Texts to L2-normalised float32 vectors. load() and encode() block: run them in threads."""

    backend: str

    @property
    def loaded(self) -> bool: ...

    @property
    def dim(self) -> int:
        """Length of every vector."""
        ...

    @property
    def max_seq_length(self) -> int:
        """Tokens the model reads per text, special tokens included; the rest is truncated."""
        ...

    @property
    def content_tokens(self) -> int:
        """Tokens of the text itself that fit: max_seq_length less [CLS] and [SEP]."""
        ...

    def load(self) -> None: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], C-contiguous, each row of norm 1."""
        ...

    def tokenizer_copy(self) -> Tokenizer | None:
        """A private copy of the model's tokenizer without truncation or padding, or None if
        the encoder has none to give (the embedder then reads the model directory's)."""
        ...


def build_encoder(
    backend: str, model_path: str | Path, *, threads: int, max_batch: int, device: str, gpu_memory_utilization: float,
) -> Encoder:
    """The encoder for config's ``embedder.backend``; cheap: nothing is imported or loaded yet."""
    if backend == SENTENCE_TRANSFORMERS:
        return SentenceTransformersEncoder(model_path, threads=threads, max_batch=max_batch, device=device)
    if backend == VLLM:
        # vLLM always runs on the GPU and batches by itself: device and max_batch do not apply.
        return VllmEncoder(model_path, gpu_memory_utilization=gpu_memory_utilization)
    raise ConfigError(f"unknown embedder.backend {backend!r}: {SENTENCE_TRANSFORMERS} | {VLLM}", field="embedder.backend")


# ------------------------------------------------------ sentence-transformers
class SentenceTransformersEncoder:
    """sentence-transformers in-process, on the CPU or a CUDA device."""

    backend = SENTENCE_TRANSFORMERS

    def __init__(self, model_path: str | Path, *, threads: int = 1, max_batch: int = 64, device: str = "cpu") -> None:
        if threads < 1 or max_batch < 1:
            raise ValueError("threads and max_batch must be >= 1")
        self._model_path = Path(model_path)
        self._threads = threads
        self._max_batch = max_batch
        self._device = device
        self._model: SentenceTransformer | None = None
        self._dim = 0

    def load(self) -> None:
        """Load the model (seconds; call from an executor, never on the loop)."""
        _stay_offline()  # OpenMP's spin is bounded when meshrag is imported (meshrag/openmp.py)
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bars in node logs

        # torch's intra-op thread count is process-global: the last encoder
        # loaded in a process decides it for every torch user there. It is the
        # CPU budget of embedding, and several nodes may share a 2-core host.
        # Measured there (cranfield chunks, 144 tokens on average): 1 thread
        # 18.7 texts/s, busy neighbour core or not; 2 threads 33 texts/s on an
        # idle host but 12-13 texts/s once the other core is busy.
        torch.set_num_threads(self._threads)
        _require_model_dir(self._model_path)
        if _is_cuda(self._device) and not torch.cuda.is_available():
            raise ConfigError(
                f"embedder.device = {self._device!r} needs a CUDA GPU and torch sees none on this host; "
                "use device 'cpu'", field="embedder.device",
            )
        model = SentenceTransformer(str(self._model_path), device=self._device, local_files_only=True)
        model.eval()
        self._dim = _embedding_dimension(model)
        self._model = model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def dim(self) -> int:
        self._require_model()
        return self._dim

    @property
    def max_seq_length(self) -> int:
        return int(self._require_model().max_seq_length)

    @property
    def content_tokens(self) -> int:
        model = self._require_model()
        return self.max_seq_length - model.tokenizer.num_special_tokens_to_add(pair=False)

    def tokenizer_copy(self) -> Tokenizer:
        # A copy, not the model's own: a Hugging Face tokenizer rewrites its truncation
        # settings on every call, and the copy is used from other threads than encode().
        return _untruncated(self._require_model().tokenizer.backend_tokenizer.to_str())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._require_model()
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        vectors = model.encode(
            list(texts),
            batch_size=self._max_batch,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _require_model(self) -> SentenceTransformer:
        if self._model is None:
            raise Unavailable("the embedding model is not loaded yet", retry_after_s=5)
        return self._model


def _embedding_dimension(model: SentenceTransformer) -> int:
    # sentence-transformers renamed the method in v5; accept both.
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = getter()
    if not dim:
        raise ValueError("the embedding model does not report its dimension")
    return int(dim)


# ----------------------------------------------------------------------- vLLM
class VllmEncoder:
    """vLLM's offline pooling runner (``LLM.embed``) on the same sentence-transformers directory.

    vLLM reads the directory's pooling configuration (modules.json, 1_Pooling) itself. The
    texts are tokenised here, by the directory's own tokenizer truncated to the window
    sentence-transformers uses, and handed over as token ids: a text longer than the window
    is then truncated exactly as on the CPU backend instead of being refused by vLLM.
    """

    backend = VLLM

    def __init__(self, model_path: str | Path, *, gpu_memory_utilization: float = 0.3) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        self._model_path = Path(model_path)
        self._gpu_memory_utilization = gpu_memory_utilization
        self._llm: Any = None  # vllm.LLM
        self._tokenizer: Tokenizer | None = None  # truncates to the window, adds [CLS]/[SEP]
        self._window = 0
        self._dim = 0

    def load(self) -> None:
        """Start vLLM on the GPU (tens of seconds; call from an executor, never on the loop)."""
        _stay_offline()
        llm_class = _import_vllm_llm()
        _require_cuda_for_vllm()
        _require_model_dir(self._model_path)
        window = model_window(self._model_path)
        tokenizer = load_tokenizer(self._model_path)
        tokenizer.enable_truncation(window)
        llm = llm_class(**_llm_arguments(llm_class, self._model_path, window, self._gpu_memory_utilization))
        self._llm, self._tokenizer, self._window = llm, tokenizer, window
        # The dimension as vLLM's pooler delivers it (a Dense module would change it), read off one text.
        self._dim = int(self._embed(["dimension probe"]).shape[1])
        log.info("vLLM embedder loaded %s (dim %d, window %d tokens)", self._model_path, self._dim, window)

    @property
    def loaded(self) -> bool:
        return self._dim > 0

    @property
    def dim(self) -> int:
        self._require_loaded()
        return self._dim

    @property
    def max_seq_length(self) -> int:
        self._require_loaded()
        return self._window

    @property
    def content_tokens(self) -> int:
        tokenizer = self._require_loaded()
        processor = tokenizer.post_processor
        return self._window - (processor.num_special_tokens_to_add(False) if processor is not None else 0)

    def tokenizer_copy(self) -> None:
        return None  # the embedder reads tokenizer.json itself; ours truncates

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self._require_loaded()
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        assert self._tokenizer is not None
        prompts = [{"prompt_token_ids": encoding.ids} for encoding in self._tokenizer.encode_batch(list(texts))]
        outputs = self._llm.embed(prompts, use_tqdm=False)
        return _normalised(np.asarray([output.outputs.embedding for output in outputs], dtype=np.float32))

    def _require_loaded(self) -> Tokenizer:
        if self._tokenizer is None or not self.loaded:
            raise Unavailable("the embedding model is not loaded yet", retry_after_s=5)
        return self._tokenizer


def _import_vllm_llm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(f"{GPU_EXTRA} ({exc})", field="embedder.backend") from None
    return vllm.LLM


def _require_cuda_for_vllm() -> None:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "embedder.backend = 'vllm' needs a CUDA GPU and this host has none; "
            f"use backend '{SENTENCE_TRANSFORMERS}' (device 'cpu')", field="embedder.backend",
        )


def _llm_arguments(llm_class: Any, model_path: Path, window: int, gpu_memory_utilization: float) -> dict[str, Any]:
    """Keyword arguments for vllm.LLM, in whichever spelling this vLLM understands."""
    arguments: dict[str, Any] = {
        "model": str(model_path),
        "dtype": "float32",  # as on the CPU: vLLM's default half precision would not give the same vectors
        "max_model_len": window,  # the same window as sentence-transformers
        "gpu_memory_utilization": gpu_memory_utilization,  # the GPU is shared with the generator
        "enforce_eager": True,  # no CUDA graph capture: faster start, and a small model gains little
    }
    # vLLM 0.10 replaced task="embed" with runner="pooling" (and later dropped task).
    if "runner" in inspect.signature(llm_class.__init__).parameters:
        arguments["runner"] = "pooling"
    else:
        arguments["task"] = "embed"
    return arguments


# --------------------------------------------------------- model directory
def load_tokenizer(model_path: str | Path) -> Tokenizer:
    """The directory's tokenizer.json without the truncation and padding saved in it
    (all-MiniLM-L6-v2 saves both at 128 tokens, half its real window)."""
    path = Path(model_path) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"embedding model directory {model_path} has no tokenizer.json (a fast tokenizer)")
    return _untruncated(path.read_text(encoding="utf-8"))


def model_window(model_path: str | Path) -> int:
    """Tokens per text, special tokens included, as sentence-transformers decides it: the
    max_seq_length of sentence_bert_config.json, else the smaller of the model's positions
    and the tokenizer's limit."""
    directory = Path(model_path)
    configured = _read_json(directory / "sentence_bert_config.json").get("max_seq_length")
    if configured:
        return int(configured)
    limits = [
        _read_json(directory / "config.json").get("max_position_embeddings"),
        _read_json(directory / "tokenizer_config.json").get("model_max_length"),
    ]
    bounded = [int(limit) for limit in limits if isinstance(limit, (int, float)) and 0 < limit < _UNBOUNDED_WINDOW]
    if not bounded:
        raise ConfigError(f"cannot tell the token window of the embedding model in {directory}", field="embedder.model")
    return min(bounded)


def _untruncated(serialized: str) -> Tokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(serialized)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _require_model_dir(model_path: Path) -> None:
    if not model_path.is_dir():
        raise FileNotFoundError(f"embedding model directory {model_path} does not exist")


def _stay_offline() -> None:
    # Never reach for the Hugging Face hub: the model is a local directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _is_cuda(device: str) -> bool:
    return device.split(":", 1)[0].strip().lower() == "cuda"


def _normalised(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to norm 1 (an all-zero row stays zero rather than turning into NaN)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows / np.maximum(norms, np.finfo(np.float32).tiny), dtype=np.float32)
