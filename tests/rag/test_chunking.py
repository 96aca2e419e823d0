from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterator

import pytest

from meshrag.errors import ConfigError
from meshrag.rag.chunking import MODEL_WINDOW, Chunker, ChunkingSettings, TextChunk
from meshrag.rag.embedder import Embedder, default_model_path

CRANFIELD = Path(__file__).resolve().parents[3] / "shared" / "data" / "cranfield" / "corpus.jsonl"


def whitespace_offsets(text: str) -> list[tuple[int, int]]:
    """A trivial tokenizer: every run of non-whitespace is one token."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def character_offsets(text: str) -> list[tuple[int, int]]:
    """One token per non-whitespace character: no word boundaries inside words."""
    return [(i, i + 1) for i, ch in enumerate(text) if not ch.isspace()]


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


def sentences(count: int, words_each: int) -> str:
    return " ".join(words(words_each - 1, start=s * 100) + " end." for s in range(count))


def token_count(text: str) -> int:
    return len(whitespace_offsets(text))


def assert_slices_of(text: str, chunks: list[TextChunk]) -> None:
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip()


def assert_covers_every_visible_character(text: str, chunks: list[TextChunk]) -> None:
    covered = [False] * len(text)
    for chunk in chunks:
        covered[chunk.start : chunk.end] = [True] * (chunk.end - chunk.start)
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert missing == []


def token_overlap(first: TextChunk, second: TextChunk) -> int:
    """Whitespace tokens shared by two consecutive chunks."""
    return token_count(first.text[second.start - first.start :]) if second.start < first.end else 0


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    model = Embedder(default_model_path(), threads=1)
    model.load()
    yield model


# ---------------------------------------------------------------- settings
def test_settings_reject_tiny_chunks() -> None:
    with pytest.raises(ConfigError) as info:
        ChunkingSettings(max_tokens=15, overlap_tokens=0)
    assert info.value.field == "chunking.max_tokens"


@pytest.mark.parametrize("overlap", [-1, 32, 40])
def test_settings_reject_overlap_outside_zero_to_max(overlap: int) -> None:
    with pytest.raises(ConfigError) as info:
        ChunkingSettings(max_tokens=32, overlap_tokens=overlap)
    assert info.value.field == "chunking.overlap_tokens"


def test_fingerprint_is_stable_and_follows_the_settings() -> None:
    a = Chunker(ChunkingSettings(200, 40), whitespace_offsets)
    assert a.fingerprint() == Chunker(ChunkingSettings(200, 40), character_offsets).fingerprint()
    assert a.fingerprint() != Chunker(ChunkingSettings(200, 41), whitespace_offsets).fingerprint()
    assert a.fingerprint() != Chunker(ChunkingSettings(201, 40), whitespace_offsets).fingerprint()
    assert len(a.fingerprint()) < 40


# ------------------------------------------------------------ model window
def test_default_chunk_size_is_the_model_window() -> None:
    # The default follows the model (Cranfield: 254 tokens beat 200 in every mode).
    assert ChunkingSettings().max_tokens == MODEL_WINDOW
    chunker = Chunker(ChunkingSettings(), whitespace_offsets, window=254)
    assert chunker.settings == ChunkingSettings(max_tokens=254, overlap_tokens=40)
    assert chunker.fingerprint() == Chunker(ChunkingSettings(254, 40), whitespace_offsets).fingerprint()


def test_model_window_is_the_chunk_size_unless_one_is_given() -> None:
    assert Chunker(ChunkingSettings(), whitespace_offsets, window=128).settings.max_tokens == 128
    # An explicit size is kept whatever the model's window.
    assert Chunker(ChunkingSettings(64, 8), whitespace_offsets, window=128).settings.max_tokens == 64


def test_model_window_without_a_model_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Chunker(ChunkingSettings(), whitespace_offsets)
    assert info.value.field == "chunking.max_tokens"


def test_overlap_must_fit_the_model_window() -> None:
    with pytest.raises(ConfigError) as info:
        Chunker(ChunkingSettings(overlap_tokens=40), whitespace_offsets, window=40)
    assert info.value.field == "chunking.overlap_tokens"


# ------------------------------------------------------------ small inputs
@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_empty_or_blank_text_gives_no_chunks(text: str) -> None:
    assert Chunker(ChunkingSettings(), whitespace_offsets, window=254).chunk(text) == []


def test_short_text_is_one_trimmed_chunk() -> None:
    text = "  \n Hello there.\n\nSecond paragraph.  \n"
    chunks = Chunker(ChunkingSettings(max_tokens=16, overlap_tokens=4), whitespace_offsets).chunk(text)
    assert chunks == [TextChunk(seq=0, text="Hello there.\n\nSecond paragraph.", start=4, end=35, n_tokens=4)]


def test_text_of_exactly_max_tokens_is_one_chunk() -> None:
    chunks = Chunker(ChunkingSettings(max_tokens=20, overlap_tokens=5), whitespace_offsets).chunk(words(20))
    assert len(chunks) == 1 and chunks[0].n_tokens == 20


# --------------------------------------------------------- long inputs
@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (16, 8), (20, 5), (50, 10), (64, 63)])
def test_long_text_respects_max_tokens_covers_everything_and_overlaps(max_tokens: int, overlap: int) -> None:
    text = "\n\n".join(sentences(count=4 + p % 3, words_each=5 + p % 7) for p in range(12))
    chunks = Chunker(ChunkingSettings(max_tokens, overlap), whitespace_offsets).chunk(text)
    assert len(chunks) > 1
    assert_slices_of(text, chunks)
    assert_covers_every_visible_character(text, chunks)
    for chunk in chunks:
        assert chunk.n_tokens == token_count(chunk.text) <= max_tokens
    for first, second in zip(chunks, chunks[1:]):
        assert first.start < second.start and first.end < second.end
        shared = token_overlap(first, second)
        assert shared <= overlap
        if overlap and first.n_tokens > overlap:
            assert shared >= math.ceil(overlap / 2)


def test_zero_overlap_chunks_meet_without_gaps() -> None:
    text = sentences(count=30, words_each=6)
    chunks = Chunker(ChunkingSettings(max_tokens=16, overlap_tokens=0), whitespace_offsets).chunk(text)
    for first, second in zip(chunks, chunks[1:]):
        assert text[first.end : second.start].strip() == ""
    assert sum(c.n_tokens for c in chunks) == token_count(text)


def test_cuts_prefer_paragraph_breaks() -> None:
    paragraphs = [sentences(count=3, words_each=10) for _ in range(6)]  # 30 tokens each
    text = "\n\n".join(paragraphs)
    chunks = Chunker(ChunkingSettings(max_tokens=45, overlap_tokens=0), whitespace_offsets).chunk(text)
    assert [c.text for c in chunks] == paragraphs


def test_cuts_prefer_sentence_ends_and_overlaps_start_at_sentences() -> None:
    text = sentences(count=40, words_each=7)
    chunks = Chunker(ChunkingSettings(max_tokens=40, overlap_tokens=16), whitespace_offsets).chunk(text)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.text.endswith("end.")
        assert chunk.start == 0 or text[: chunk.start].rstrip().endswith("end.")


def test_line_breaks_count_as_sentence_boundaries() -> None:
    lines = [words(9, start=i * 10) for i in range(12)]  # no full stops at all
    text = "\n".join(lines)
    chunks = Chunker(ChunkingSettings(max_tokens=30, overlap_tokens=0), whitespace_offsets).chunk(text)
    for chunk in chunks:
        assert chunk.text.split("\n")[-1] in lines


def test_sentence_end_inside_quotes_is_a_boundary() -> None:
    text = " ".join(f'{words(7, start=i * 10)} "said so."' for i in range(12))
    chunks = Chunker(ChunkingSettings(max_tokens=24, overlap_tokens=0), whitespace_offsets).chunk(text)
    assert all(chunk.text.endswith('so."') for chunk in chunks)


def test_text_without_boundaries_is_cut_hard_at_max_tokens() -> None:
    text = "x" * 100
    chunks = Chunker(ChunkingSettings(max_tokens=16, overlap_tokens=0), character_offsets).chunk(text)
    assert [c.n_tokens for c in chunks] == [16] * 6 + [4]
    assert "".join(c.text for c in chunks) == text


def test_chunking_is_deterministic() -> None:
    text = "\n\n".join(sentences(count=5, words_each=3 + p) for p in range(10))
    chunker = Chunker(ChunkingSettings(max_tokens=32, overlap_tokens=8), whitespace_offsets)
    assert chunker.chunk(text) == chunker.chunk(text)
    assert Chunker(ChunkingSettings(max_tokens=32, overlap_tokens=8), whitespace_offsets).chunk(text) == chunker.chunk(text)


# ------------------------------------------------------- real tokenizer
def cranfield_texts(count: int) -> list[str]:
    with CRANFIELD.open() as handle:
        return [json.loads(line)["text"] for _, line in zip(range(count), handle)]


def test_real_tokenizer_chunks_stay_within_the_model_window(embedder: Embedder) -> None:
    text = "\n\n".join(cranfield_texts(8))
    chunker = Chunker(ChunkingSettings(max_tokens=64, overlap_tokens=16), embedder.token_offsets)
    chunks = chunker.chunk(text)
    assert len(chunks) > 5
    assert_slices_of(text, chunks)
    assert_covers_every_visible_character(text, chunks)
    for chunk in chunks:
        # Cuts fall between words, so the chunk alone tokenizes the same way.
        assert chunk.n_tokens == len(embedder.token_offsets(chunk.text)) <= 64


def test_real_tokenizer_default_settings_fit_the_embedder(embedder: Embedder) -> None:
    text = " ".join(cranfield_texts(20))
    chunker = Chunker(ChunkingSettings(), embedder.token_offsets, window=embedder.max_seq_tokens)
    chunks = chunker.chunk(text)
    assert chunker.settings.max_tokens == embedder.max_seq_tokens == 254  # all-MiniLM-L6-v2: 256 - [CLS], [SEP]
    assert max(c.n_tokens for c in chunks) <= embedder.max_seq_tokens
    # Each chunk, with the special tokens, is read whole: nothing is truncated away.
    assert all(len(embedder.token_offsets(c.text)) <= embedder.max_seq_tokens for c in chunks)


def test_real_tokenizer_keeps_characters_it_skips(embedder: Embedder) -> None:
    # Zero-width spaces and control characters give no tokens; they must still land in a chunk.
    text = ("alpha\u200bbeta\x00 gamma. " * 40).strip()
    assert embedder.token_offsets("\u200b\x00") == []
    chunks = Chunker(ChunkingSettings(max_tokens=16, overlap_tokens=4), embedder.token_offsets).chunk(text)
    assert len(chunks) > 1
    assert_slices_of(text, chunks)
    assert_covers_every_visible_character(text, chunks)
