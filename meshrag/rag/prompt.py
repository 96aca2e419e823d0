"""The answer prompt: numbered passages, a question, and the rules for citing.

Passages carry the number the client sees in `sources`, so a citation such as
[2] in the answer points at sources[n == 2]. The whole prompt is one user
message: Gemma's chat template has no system role (llama-cpp-python's
"gemma" format silently drops system messages, and Google's template folds
them into the first user turn), and a base model prompted as plain text has
no roles at all. One user message reads the same under every template.

The layout (instructions, "Passages:", numbered passages, "Question: ...")
was chosen by trying it on the bundled gemma-3-270m, a small base model that
is sensitive to layout; the generator backend's plain format finishes it
with "Answer:".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

INSTRUCTIONS = (
    "Answer the question using only the numbered passages below. "
    "Cite the passages you use by their number, like [1] or [2]. "
    "If the passages do not contain the answer, say that you don't know."
)
PASSAGE_SEPARATOR = "\n\n"
TRUNCATION_MARK = " …"

_CITATION = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")


@dataclass(frozen=True)
class Passage:
    n: int  # 1-based rank, the number cited in the answer
    doc_id: str
    chunk_id: str
    text: str
    score: float


def build_messages(question: str, passages: Sequence[Passage], *, max_context_chars: int = 6000) -> list[dict[str, str]]:
    """Chat messages asking `question` about `passages` (rank n = 1 is the best).

    At most `max_context_chars` of rendered passages are included: the
    lowest-ranked passages are dropped first and a passage is never cut,
    except the best one alone when even it does not fit.
    """
    ranked = sorted(passages, key=lambda p: p.n)
    rendered = _fit_passages([_render_passage(p) for p in ranked], max_context_chars)
    context = PASSAGE_SEPARATOR.join(rendered) if rendered else "(no passages were found)"
    content = f"{INSTRUCTIONS}\n\nPassages:\n{context}\n\nQuestion: {_one_line(question)}"
    return [{"role": "user", "content": content}]


def cited_numbers(answer: str) -> list[int]:
    """Passage numbers cited in `answer`, in order of first citation, each once.

    Understands [1], [1, 2] and [1][2].
    """
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(answer):
        for number in match.group(1).split(","):
            seen.setdefault(int(number), None)
    return list(seen)


def _render_passage(passage: Passage) -> str:
    # One line per passage: the small model reads a clean list better, and the
    # character budget then counts what the model actually sees.
    return f"[{passage.n}] (doc {passage.doc_id}) {_one_line(passage.text)}"


def _fit_passages(rendered: list[str], budget: int) -> list[str]:
    kept: list[str] = []
    used = 0
    for text in rendered:
        cost = len(text) + (len(PASSAGE_SEPARATOR) if kept else 0)
        if used + cost > budget:
            break
        kept.append(text)
        used += cost
    if not kept and rendered and budget > len(TRUNCATION_MARK):
        kept.append(rendered[0][: budget - len(TRUNCATION_MARK)].rstrip() + TRUNCATION_MARK)
    return kept


def _one_line(text: str) -> str:
    return " ".join(text.split())
