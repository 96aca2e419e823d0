"""Text analysis for BM25: the one definition of a "term", for chunks and queries alike.

Steps, in order: case folding, compatibility decomposition with combining marks
dropped (so "Café", "CAFE" and "café" are one term, as FTS5's
``remove_diacritics`` did), word runs ``[^\\W_]+`` (letters and digits, the
characters FTS5's unicode61 keeps), stop words removed, then a Snowball stemmer
(PyStemmer). Stop words are matched before stemming, as Lucene and bm25s do.

The stop word list is Lucene's ``EnglishAnalyzer.ENGLISH_STOP_WORDS_SET``, the
list bm25s uses for ``stopwords="en"`` and so the one the reference figures in
shared/reference were computed with.

Every node of a cluster must analyze the same way, or document frequencies
summed over partitions mix different vocabularies: ``fingerprint`` names the
analysis, partitions record it (a partition indexed under another fingerprint is
re-indexed on open) and the cluster compares it on join.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import Stemmer

# Bump when a rule above changes: every partition re-indexes its chunks on open.
ANALYSIS_VERSION = 1
MAX_QUERY_TERMS = 64

ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such "
    "that the their then there these they this to was will with".split()
)
STOP_WORD_LISTS: dict[str, frozenset[str]] = {"english": ENGLISH_STOP_WORDS, "none": frozenset()}
NO_STEMMER = "none"

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Analyzer:
    """Thread-safe: PyStemmer objects must not be shared between threads, so each
    thread gets its own (with PyStemmer's own per-object cache of recent stems)."""

    language: str = "english"  # a Snowball algorithm (Stemmer.algorithms()) or "none"
    stopwords: str = "english"  # "english" | "none"
    _local: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.language != NO_STEMMER and self.language not in Stemmer.algorithms():
            raise ValueError(
                f"unknown stemmer language {self.language!r}: use {NO_STEMMER!r} or one of {', '.join(Stemmer.algorithms())}"
            )
        if self.stopwords not in STOP_WORD_LISTS:
            raise ValueError(f"unknown stop word list {self.stopwords!r}: use one of {', '.join(STOP_WORD_LISTS)}")

    def fingerprint(self) -> str:
        stemmer = "none" if self.language == NO_STEMMER else f"snowball-{self.language}"
        return f"{stemmer}/stop-{self.stopwords}/v{ANALYSIS_VERSION}"

    def terms(self, text: str) -> list[str]:
        """The analyzed terms of ``text``, in order, repeats kept (a chunk's term frequencies)."""
        stop = STOP_WORD_LISTS[self.stopwords]
        words = [word for word in _WORD.findall(fold(text)) if word not in stop]
        stemmer = self._stemmer()
        return words if stemmer is None else stemmer.stemWords(words)

    def query_terms(self, text: str, limit: int = MAX_QUERY_TERMS) -> list[str]:
        """Distinct terms of a query, in order of first appearance, at most ``limit``."""
        return list(dict.fromkeys(self.terms(text)))[:limit]

    def _stemmer(self) -> Any:
        if self.language == NO_STEMMER:
            return None
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer(self.language)
        return stemmer


def fold(text: str) -> str:
    """Case-folded, with diacritics and compatibility forms reduced ("ﬁ" -> "fi", "²" -> "2")."""
    text = text.casefold()
    if text.isascii():  # nothing to decompose: the common case, kept cheap
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    # NFC afterwards recomposes what is not a diacritic (Hangul syllables, for one).
    return unicodedata.normalize("NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))
