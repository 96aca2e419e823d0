"""Token-aware chunking: split a document into overlapping passages.

Chunks are measured in the embedding model's own tokens, so a chunk never
exceeds what the model reads (anything past its window would be silently
truncated and lost to search). Cuts prefer paragraph, then sentence, then word
boundaries, so a passage shown to the generator reads as text, not as a
fragment. Every chunk is an exact slice of the original text
(``text == original[start:end]``), which lets callers highlight sources.

The chunker is pure and deterministic: the same text, settings and tokenizer
always give the same chunks, which is what makes content hashes (and so
idempotent upserts) possible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from meshrag.errors import ConfigError

# Character spans of the model's tokens in a text, without special tokens.
TokenOffsets = Callable[[str], list[tuple[int, int]]]

# Bump when the cutting rules change: the fingerprint goes into content
# hashes, so documents chunked by the old rules are re-chunked and re-embedded.
ALGORITHM_VERSION = 1

MIN_MAX_TOKENS = 16

# Strength of a cut between two tokens; a higher one is a better place to cut.
NO_BOUNDARY = 0  # inside a word (sub-word pieces, attached punctuation)
WORD = 1  # whitespace between the tokens
SENTENCE = 2  # after a sentence terminator, or at a line break
PARAGRAPH = 3  # a blank line

_SENTENCE_END = re.compile(r"[.!?…。！？]$")
_CJK_SENTENCE_END = re.compile(r"[。！？]$")
_CLOSERS = "\"')]}”’»"
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


# max_tokens value meaning "the embedding model's window": what the model reads of a
# text before it truncates (Embedder.max_seq_tokens, 254 for all-MiniLM-L6-v2).
MODEL_WINDOW = 0


@dataclass(frozen=True)
class ChunkingSettings:
    # Chunks as long as the model reads: measured on Cranfield (225 queries, nDCG@10), 254
    # tokens against 200 gave dense 0.3726 vs 0.3662, BM25 0.3609 vs 0.3569 and hybrid
    # 0.4026 vs 0.3931. A shorter chunk splits a passage the model could have read whole,
    # and every chunk but a document's first loses its title.
    max_tokens: int = MODEL_WINDOW
    overlap_tokens: int = 40

    def __post_init__(self) -> None:
        if self.max_tokens != MODEL_WINDOW and self.max_tokens < MIN_MAX_TOKENS:
            raise ConfigError(
                f"chunking max_tokens = {self.max_tokens}: must be {MODEL_WINDOW} (the embedding "
                f"model's window) or at least {MIN_MAX_TOKENS}",
                field="chunking.max_tokens",
            )
        if self.overlap_tokens < 0 or (self.max_tokens != MODEL_WINDOW and self.overlap_tokens >= self.max_tokens):
            raise ConfigError(
                f"chunking overlap_tokens = {self.overlap_tokens}: must be >= 0 and smaller than "
                f"max_tokens = {self.max_tokens}",
                field="chunking.overlap_tokens",
            )

    def resolved(self, window: int | None) -> ChunkingSettings:
        """These settings with MODEL_WINDOW replaced by ``window`` (the model's content tokens)."""
        if self.max_tokens != MODEL_WINDOW:
            return self
        if window is None:
            raise ConfigError(
                "chunking max_tokens = 0 (the embedding model's window) needs the model's window; "
                "give the chunker the embedder's max_seq_tokens", field="chunking.max_tokens",
            )
        if window < MIN_MAX_TOKENS or self.overlap_tokens >= window:
            raise ConfigError(
                f"chunking overlap_tokens = {self.overlap_tokens}: must be smaller than the embedding "
                f"model's window of {window} tokens (and the window at least {MIN_MAX_TOKENS})",
                field="chunking.overlap_tokens",
            )
        return ChunkingSettings(max_tokens=window, overlap_tokens=self.overlap_tokens)


@dataclass(frozen=True)
class TextChunk:
    seq: int
    text: str
    start: int  # character offset into the original text
    end: int
    n_tokens: int


class Chunker:
    def __init__(self, settings: ChunkingSettings, token_offsets: TokenOffsets, window: int | None = None) -> None:
        """``window``: the model's content tokens (``Embedder.max_seq_tokens``, as node.py hands
        it), needed for ``max_tokens = MODEL_WINDOW``: the chunk size follows the model loaded."""
        self._settings = settings.resolved(window)
        self._token_offsets = token_offsets

    @property
    def settings(self) -> ChunkingSettings:
        return self._settings

    def fingerprint(self) -> str:
        """Stable identity of the chunking rules and sizes (the resolved ones: a new model with
        another window re-chunks), for content hashes."""
        return f"chunk-v{ALGORITHM_VERSION}:{self._settings.max_tokens}/{self._settings.overlap_tokens}"

    def chunk(self, text: str) -> list[TextChunk]:
        first, last = _content_bounds(text)
        if first >= last:
            return []
        spans = self._token_offsets(text)
        if len(spans) <= self._settings.max_tokens:
            return [TextChunk(seq=0, text=text[first:last], start=first, end=last, n_tokens=len(spans))]
        token_ranges = self._token_ranges(text, spans)
        return [
            _make_chunk(seq, text, spans, begin, stop, first, last)
            for seq, (begin, stop) in enumerate(token_ranges)
        ]

    def _token_ranges(self, text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Half-open token index ranges [begin, stop) of the chunks, in order."""
        strengths = cut_strengths(text, spans)
        max_tokens = self._settings.max_tokens
        ranges: list[tuple[int, int]] = []
        begin = stop = 0
        while True:
            if begin + max_tokens >= len(spans):
                ranges.append((begin, len(spans)))
                return ranges
            stop = self._choose_cut(strengths, begin, previous_stop=stop)
            ranges.append((begin, stop))
            begin = self._choose_next_begin(strengths, begin, stop)

    def _choose_cut(self, strengths: list[int], begin: int, previous_stop: int) -> int:
        """End of the chunk starting at `begin`: the strongest boundary in the window's second half.

        Only the second half is considered so a paragraph break three tokens in
        does not leave a nearly empty chunk; among equally strong boundaries
        the latest wins (fuller chunks, fewer of them). The cut lies past the
        previous chunk's end, or with a large overlap the same strong boundary
        would end both and the second chunk would add nothing. A run of text
        without any boundary (a long URL) is cut hard at max_tokens.
        """
        max_tokens = self._settings.max_tokens
        latest = begin + max_tokens
        earliest = max(begin + max_tokens // 2, previous_stop + 1)
        best = latest
        for cut in range(latest, earliest - 1, -1):
            if strengths[cut] > strengths[best]:
                best = cut
        return best

    def _choose_next_begin(self, strengths: list[int], begin: int, stop: int) -> int:
        """Start of the next chunk: overlap the previous one by at most overlap_tokens.

        Candidates lie between half the overlap and the full overlap back from
        the cut; the strongest boundary wins, and among equals the one giving
        the larger overlap. The result is always past `begin`, so chunking
        makes progress whatever the settings.
        """
        overlap = self._settings.overlap_tokens
        if overlap == 0:
            return stop
        widest = max(begin + 1, stop - overlap)
        narrowest = max(widest, stop - (overlap + 1) // 2)
        best = widest
        for candidate in range(widest, narrowest + 1):
            if strengths[candidate] > strengths[best]:
                best = candidate
        return best


def cut_strengths(text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Strength of cutting before token i, for i in 0..len(spans) (both ends count as paragraphs)."""
    strengths = [PARAGRAPH] * (len(spans) + 1)
    for i in range(1, len(spans)):
        previous_token = text[spans[i - 1][0] : spans[i - 1][1]]
        gap = text[spans[i - 1][1] : spans[i][0]]
        before_previous = text[spans[i - 2][0] : spans[i - 2][1]] if i >= 2 else ""
        strengths[i] = _boundary_strength(previous_token, before_previous, gap)
    return strengths


def _boundary_strength(previous_token: str, before_previous: str, gap: str) -> int:
    if _BLANK_LINE.search(gap):
        return PARAGRAPH
    if "\n" in gap:
        return SENTENCE
    has_space = any(ch.isspace() for ch in gap)
    if _ends_sentence(previous_token, before_previous) and (has_space or _CJK_SENTENCE_END.search(previous_token)):
        return SENTENCE
    return WORD if has_space else NO_BOUNDARY


def _ends_sentence(previous_token: str, before_previous: str) -> bool:
    """A terminator, possibly followed by closing quotes or brackets: `end.`, `end."`, `end.")`."""
    core = previous_token.rstrip(_CLOSERS)
    if not core:  # the closer is a token of its own (BERT splits punctuation)
        core = before_previous
    return bool(_SENTENCE_END.search(core))


def _content_bounds(text: str) -> tuple[int, int]:
    """[first, last) of the text without leading and trailing whitespace."""
    stripped_left = len(text) - len(text.lstrip())
    return stripped_left, len(text.rstrip())


def _skip_whitespace_back(text: str, index: int) -> int:
    """Index just past the last non-whitespace character before `index` (without copying the text)."""
    while index > 0 and text[index - 1].isspace():
        index -= 1
    return index


def _make_chunk(
    seq: int, text: str, spans: list[tuple[int, int]], begin: int, stop: int, first: int, last: int
) -> TextChunk:
    """The character slice of tokens [begin, stop).

    A chunk reaches up to the next token (minus whitespace), so characters the
    tokenizer skips (control characters, say) still belong to some chunk; the
    first and last chunks reach the ends of the trimmed text for the same reason.
    """
    start = first if begin == 0 else spans[begin][0]
    end = last if stop == len(spans) else _skip_whitespace_back(text, spans[stop][0])
    return TextChunk(seq=seq, text=text[start:end], start=start, end=end, n_tokens=stop - begin)
