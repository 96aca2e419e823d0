"""chaos/kill_during_ingest.py: its integrity rules, and the kill -9 acceptance check itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from meshrag.sources import SourceDocument

REPO = Path(__file__).resolve().parents[1]
CRANFIELD = REPO.parent / "shared" / "data" / "cranfield" / "corpus.jsonl"


def load_chaos_module() -> ModuleType:
    """chaos/ is a directory of scripts, not a package: load the file by path."""
    path = REPO / "chaos" / "kill_during_ingest.py"
    spec = importlib.util.spec_from_file_location("kill_during_ingest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


chaos = load_chaos_module()
TEXT = "  Alpha beta gamma.\n\nDelta epsilon zeta.  "


def chunk(seq: int, start: int, end: int, text: str = TEXT) -> dict[str, Any]:
    return {"seq": seq, "start": start, "end": end, "text": text[start:end], "chunk_id": f"d#{seq}"}


def test_whole_overlapping_chunks_pass() -> None:
    assert chaos.chunk_problems(TEXT, [chunk(0, 2, 19), chunk(1, 14, 40)]) == []


def test_whitespace_between_chunks_is_not_a_gap() -> None:
    assert chaos.chunk_problems(TEXT, [chunk(1, 21, 40), chunk(0, 2, 19)]) == []


def test_missing_tail_is_reported() -> None:
    assert chaos.chunk_problems(TEXT, [chunk(0, 2, 19)]) == ["text after offset 19 (of 40) is in no chunk"]


def test_missing_middle_chunk_is_reported() -> None:
    problems = chaos.chunk_problems(TEXT, [chunk(0, 2, 8), chunk(2, 21, 40)])
    assert "chunk numbers [0, 2] are not 0..1" in problems
    assert any(p.startswith("gap between chunks 0 and 2") for p in problems)


def test_chunk_that_is_not_a_slice_is_reported() -> None:
    wrong = dict(chunk(0, 2, 40), text="something else")
    assert chaos.chunk_problems(TEXT, [wrong]) == ["chunk 0 is not the slice [2:40] of the text"]


def test_document_without_chunks_is_partial() -> None:
    assert chaos.chunk_problems(TEXT, []) == ["no chunks"]


def test_rare_words_prefer_words_no_other_document_has() -> None:
    documents = [
        SourceDocument("a", "wing flutter at supersonic speed with shock waves", {}),
        SourceDocument("b", "wing flutter at subsonic speed and boundary layers", {}),
    ]
    words = chaos.rare_words(documents)
    # Unique words first (longest first), then shared ones; five at most.
    assert words["a"] == ["supersonic", "shock", "waves", "with", "flutter"]
    assert words["b"][:3] == ["boundary", "subsonic", "layers"]


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.skipif(not CRANFIELD.exists(), reason="needs ../shared/data/cranfield")
def test_acknowledged_documents_survive_kill9_whole(tmp_path: Path) -> None:
    documents = chaos.load_documents(CRANFIELD, 120)
    report = chaos.run_kill_during_ingest(
        documents, tmp_path, seed=7, batch_size=8, node_env={"MESHRAG_EMBEDDER_THREADS": "2"}, say=lambda message: None,
    )
    assert report.passed, report.summary()
    assert report.acknowledged > 0 and report.get_ok == report.acknowledged
    assert report.dense_found == report.chunks_checked >= report.acknowledged
