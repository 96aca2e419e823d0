"""The embedding backends (rag/encoders.py) on the bundled all-MiniLM-L6-v2.

The sentence-transformers encoder runs here on the CPU. On a host without a GPU or
vllm (the CPU dev hosts) the vLLM encoder's configuration errors run, and so does
what it does on the CPU: its window and the token ids it would hand vLLM, checked
against sentence-transformers' own. The vLLM vectors themselves need the gpu extra
and a CUDA GPU; that test skips elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pytest

from meshrag.errors import ConfigError, Unavailable
from meshrag.rag import encoders
from meshrag.rag.embedder import Embedder, default_model_path
from meshrag.rag.encoders import (
    SentenceTransformersEncoder,
    VllmEncoder,
    build_encoder,
    load_tokenizer,
    model_window,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None
DIM = 384

# Cranfield-like passages and queries (aerodynamics), plus the edge cases of a window:
# an empty text and one far longer than the model's 256 tokens.
SENTENCES = [
    "experimental investigation of the aerodynamics of a wing in a slipstream",
    "the boundary layer thickens downstream of the leading edge of a flat plate",
    "heat transfer to a blunt body in hypersonic flow at high stagnation temperature",
    "what similarity laws must be obeyed when constructing aeroelastic models of heated high speed aircraft",
    "the lift coefficient of a slender delta wing increases non-linearly with incidence",
    "shock wave boundary layer interaction causes separation ahead of a compression corner",
    "a theory of the buckling of thin cylindrical shells under axial compression",
    "laminar flow over a swept cylinder with suction through a porous surface",
    "transition to turbulence in the boundary layer of a cone at supersonic speeds",
    "the flutter of a panel exposed to supersonic flow on one side",
    "pressure distribution on a circular cylinder in a cross flow at high reynolds number",
    "free molecule flow heat transfer to a rotating satellite",
    "the effect of wall cooling on the stability of a compressible boundary layer",
    "an approximate solution for the hypersonic flow past a slender cone at incidence",
    "vortex shedding behind a bluff body and the resulting oscillating forces",
    "skin friction measurements with a preston tube in adverse pressure gradients",
    "creep buckling of columns at elevated temperatures",
    "the jet flap: lift augmentation by a thin sheet of air blown from the trailing edge",
    "",
    " ".join(["the shock layer ahead of a re-entry vehicle is thin and hot"] * 40),
]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def cpu_encoder() -> SentenceTransformersEncoder:
    encoder = SentenceTransformersEncoder(default_model_path(), threads=1, max_batch=16, device="cpu")
    encoder.load()
    return encoder


@pytest.fixture(scope="module")
def cpu_vectors(cpu_encoder: SentenceTransformersEncoder) -> np.ndarray:
    """SENTENCES through the CPU encoder, once for the module (seconds on one thread)."""
    return cpu_encoder.encode(SENTENCES)


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    """sentence-transformers used directly, as Embedder.encode did before the encoders existed."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_model_path(), device="cpu", local_files_only=True)


# ---------------------------------------------------- sentence-transformers
def test_cpu_encoder_gives_normalised_float32_rows_of_dim_384(cpu_encoder: SentenceTransformersEncoder, cpu_vectors: np.ndarray) -> None:
    vectors = cpu_vectors
    assert cpu_encoder.loaded and cpu_encoder.backend == "sentence-transformers"
    assert cpu_encoder.dim == DIM
    assert vectors.shape == (len(SENTENCES), DIM) and vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_cpu_encoder_matches_sentence_transformers_itself(cpu_vectors: np.ndarray, reference: SentenceTransformer) -> None:
    expected = reference.encode(SENTENCES, batch_size=16, convert_to_numpy=True, normalize_embeddings=True)
    assert cosines(cpu_vectors, expected).min() >= 0.99999


def test_cpu_encoder_reports_the_window(cpu_encoder: SentenceTransformersEncoder) -> None:
    assert cpu_encoder.max_seq_length == 256
    assert cpu_encoder.content_tokens == 254  # less [CLS] and [SEP]


def test_cpu_encoder_of_nothing_is_an_empty_matrix(cpu_encoder: SentenceTransformersEncoder) -> None:
    assert cpu_encoder.encode([]).shape == (0, DIM)


def test_unloaded_encoders_are_unavailable() -> None:
    with pytest.raises(Unavailable):
        SentenceTransformersEncoder(default_model_path()).encode(["x"])
    with pytest.raises(Unavailable):
        VllmEncoder(default_model_path()).encode(["x"])


@pytest.mark.skipif(cuda_available(), reason="this host has a CUDA GPU")
def test_cuda_device_without_a_gpu_is_a_config_error() -> None:
    encoder = SentenceTransformersEncoder(default_model_path(), device="cuda")
    with pytest.raises(ConfigError, match=r"embedder.device = 'cuda' needs a CUDA GPU.*use device 'cpu'") as raised:
        encoder.load()
    assert raised.value.field == "embedder.device" and not encoder.loaded


def test_missing_model_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SentenceTransformersEncoder(tmp_path / "absent").load()


# ------------------------------------------------------- choosing a backend
def test_build_encoder_picks_the_backend() -> None:
    common = {"threads": 1, "max_batch": 8, "device": "cpu", "gpu_memory_utilization": 0.3}
    assert isinstance(build_encoder("sentence-transformers", default_model_path(), **common), SentenceTransformersEncoder)
    assert isinstance(build_encoder("vllm", default_model_path(), **common), VllmEncoder)
    with pytest.raises(ConfigError, match="unknown embedder.backend 'onnx'"):
        build_encoder("onnx", default_model_path(), **common)


@pytest.mark.skipif(VLLM_INSTALLED, reason="vllm is installed: the missing-package error cannot happen")
def test_vllm_backend_without_vllm_names_the_gpu_extra() -> None:
    embedder = Embedder(default_model_path(), backend="vllm")  # through the embedder, as node.py builds it
    assert embedder.backend == "vllm"
    with pytest.raises(ConfigError, match=r"embedder.backend = 'vllm' needs the gpu extra: pip install meshrag\[gpu\]") as raised:
        embedder.load()
    assert raised.value.field == "embedder.backend" and not embedder.loaded


@pytest.mark.skipif(cuda_available(), reason="this host has a CUDA GPU")
def test_vllm_backend_without_a_gpu_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if not VLLM_INSTALLED:  # get past the import check: this test is about the GPU check after it
        monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=object))
    with pytest.raises(ConfigError, match=r"embedder.backend = 'vllm' needs a CUDA GPU.*'sentence-transformers'"):
        VllmEncoder(default_model_path()).load()


# ------------------------------------------- what the vLLM encoder does on the CPU
def test_model_window_is_the_sentence_transformers_one(cpu_encoder: SentenceTransformersEncoder) -> None:
    assert model_window(default_model_path()) == cpu_encoder.max_seq_length == 256


def test_model_window_without_sentence_bert_config_is_the_smaller_limit(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 512}')
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 1000000000000000019884624838656}')
    assert model_window(tmp_path) == 512  # transformers' "no limit" is ignored


def test_vllm_token_ids_are_what_sentence_transformers_feeds_the_model(reference: SentenceTransformer) -> None:
    """The ids VllmEncoder hands vLLM: the directory's tokenizer.json truncated to the window,
    equal to sentence-transformers' own, long text included (truncated, not refused)."""
    tokenizer = load_tokenizer(default_model_path())
    tokenizer.enable_truncation(model_window(default_model_path()))
    features = reference.tokenize(SENTENCES)
    for row, encoding in enumerate(tokenizer.encode_batch(SENTENCES)):
        mask = features["attention_mask"][row].bool()
        assert encoding.ids == features["input_ids"][row][mask].tolist()
    assert len(tokenizer.encode(SENTENCES[-1]).ids) == 256


def test_directory_tokenizer_gives_the_same_offsets_as_the_models(cpu_encoder: SentenceTransformersEncoder) -> None:
    """The vLLM embedder's chunker tokenizer (tokenizer.json) cuts texts like the CPU one's."""
    from_file, from_model = load_tokenizer(default_model_path()), cpu_encoder.tokenizer_copy()
    for text in SENTENCES + ["Hello,   World! Boundary-layers.", "Ünïcödé café, naïve résumé"]:
        assert from_file.encode(text, add_special_tokens=False).offsets == from_model.encode(text, add_special_tokens=False).offsets


class _NewLLM:
    """Stands in for vllm.LLM (>= 0.10: runner=...): records its arguments and prompts."""

    made: list[dict[str, object]] = []
    prompts: list[dict[str, list[int]]] = []

    def __init__(self, model: str, *, runner: str = "auto", **kwargs: object) -> None:
        self.made.append({"model": model, "runner": runner, **kwargs})

    def embed(self, prompts: list[dict[str, list[int]]], *, use_tqdm: bool = True) -> list[object]:
        self.prompts.extend(prompts)
        # Unnormalised on purpose: the encoder must not rely on vLLM's pooler normalising.
        return [types.SimpleNamespace(outputs=types.SimpleNamespace(embedding=[3.0, 4.0])) for _ in prompts]


class _OldLLM(_NewLLM):
    """vllm.LLM before 0.10: task=... instead of runner."""

    def __init__(self, model: str, *, task: str = "auto", **kwargs: object) -> None:
        self.made.append({"model": model, "task": task, **kwargs})


@pytest.mark.parametrize(("llm_class", "mode"), [(_NewLLM, {"runner": "pooling"}), (_OldLLM, {"task": "embed"})])
def test_vllm_encoder_drives_the_llm_api(monkeypatch: pytest.MonkeyPatch, llm_class: type[_NewLLM], mode: dict[str, str]) -> None:
    """The calls VllmEncoder makes, against a stand-in vllm (the real one needs a GPU)."""
    import torch

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=llm_class))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_NewLLM, "made", [])
    monkeypatch.setattr(_NewLLM, "prompts", [])
    encoder = VllmEncoder(default_model_path(), gpu_memory_utilization=0.25)
    encoder.load()
    assert _NewLLM.made == [{
        "model": default_model_path(), "dtype": "float32", "max_model_len": 256, "gpu_memory_utilization": 0.25,
        "enforce_eager": True, **mode,
    }]
    assert (encoder.dim, encoder.max_seq_length, encoder.content_tokens) == (2, 256, 254)
    vectors = encoder.encode(["hello world", SENTENCES[-1]])
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.6, 0.8]], atol=1e-6)
    assert vectors.dtype == np.float32
    hello, long = _NewLLM.prompts[-2:]  # token ids with [CLS] and [SEP], truncated to the window
    assert hello == {"prompt_token_ids": [101, 7592, 2088, 102]}
    assert len(long["prompt_token_ids"]) == 256 and long["prompt_token_ids"][-1] == 102


# ------------------------------------------------ the embedder over any encoder
class _FakeEncoder:
    """An encoder without a tokenizer to give, as VllmEncoder: the embedder reads tokenizer.json."""

    backend = "fake"
    loaded = False
    dim = 3
    max_seq_length = 10
    content_tokens = 8

    def load(self) -> None:
        self.loaded = True

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(np.array([[1.0, 0.0, 0.0]], dtype=np.float32), (len(texts), 1))

    def tokenizer_copy(self) -> None:
        return None


@pytest.fixture(scope="module")
def fake_embedder() -> Embedder:
    embedder = Embedder(default_model_path(), encoder=_FakeEncoder())
    embedder.load()
    return embedder


def test_embedder_delegates_to_its_encoder(fake_embedder: Embedder) -> None:
    assert fake_embedder.backend == "fake" and fake_embedder.dim == 3 and fake_embedder.max_seq_tokens == 8
    assert fake_embedder.encode(["a", "b"]).shape == (2, 3)
    assert fake_embedder.encode([]).shape == (0, 3)


def test_embedder_name_does_not_depend_on_the_backend(fake_embedder: Embedder) -> None:
    cpu = Embedder(default_model_path())
    cpu.load()
    assert fake_embedder.model_name == cpu.model_name
    assert fake_embedder.token_offsets("Hello,   World!") == cpu.token_offsets("Hello,   World!")


# ------------------------------------------------------------------- vLLM
@pytest.mark.slow
@pytest.mark.skipif(not VLLM_INSTALLED, reason="needs the gpu extra (vllm)")
@pytest.mark.skipif(VLLM_INSTALLED and not cuda_available(), reason="needs a CUDA GPU")
def test_vllm_vectors_match_the_cpu_encoder(cpu_vectors: np.ndarray) -> None:
    encoder = VllmEncoder(default_model_path(), gpu_memory_utilization=0.2)
    encoder.load()
    assert (encoder.dim, encoder.max_seq_length, encoder.content_tokens) == (DIM, 256, 254)
    vectors = encoder.encode(SENTENCES)
    assert vectors.shape == (len(SENTENCES), DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, cpu_vectors).min() >= 0.99999
