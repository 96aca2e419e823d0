"""api/schema.py: every rejection names the field at fault."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from meshrag.api.schema import parse_ask, parse_search, parse_upsert
from meshrag.config import ApiConfig, GenerationConfig
from meshrag.errors import ValidationError

LIMITS = ApiConfig(max_documents_per_request=4, max_text_chars=100, max_k=50)
DIM = 4


def _upsert_error(body: Any) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        parse_upsert(body, LIMITS, DIM)
    return err.value


def test_valid_upsert_keeps_ids_metadata_and_normalises_vectors() -> None:
    request = parse_upsert(
        {"documents": [{"id": "a", "text": "hello", "metadata": {"y": 1}}, {"text": "v", "vector": [3, 0, 0, 4]}], "consistency": "ALL"},
        LIMITS, DIM,
    )
    assert request.documents[0].doc_id == "a" and request.documents[0].metadata == {"y": 1}
    np.testing.assert_allclose(request.documents[1].vector, [0.6, 0, 0, 0.8], rtol=1e-6)
    assert request.consistency == "all"


@pytest.mark.parametrize(
    "body,field",
    [
        ([], "body"),
        ({"docs": []}, "docs"),
        ({"documents": "x"}, "documents"),
        ({"documents": []}, "documents"),
        ({"documents": [{"text": "a"}] * 5}, "documents"),
        ({"documents": [{"text": "ok"}, {"text": "   "}]}, "documents[1].text"),
        ({"documents": [{"text": "ok"}, {"text": 5}]}, "documents[1].text"),
        ({"documents": [{"text": "x" * 101}]}, "documents[0].text"),
        ({"documents": [{"text": "a", "colour": "red"}]}, "documents[0].colour"),
        ({"documents": [{"text": "a", "metadata": []}]}, "documents[0].metadata"),
        ({"documents": [{"text": "a", "metadata": {"a": {"b": float("nan")}}}]}, "documents[0].metadata.a.b"),
        ({"documents": [{"text": "a", "vector": [1, 2, 3]}]}, "documents[0].vector"),
        ({"documents": [{"text": "a", "vector": [0, 0, 0, 0]}]}, "documents[0].vector"),
        ({"documents": [{"text": "a", "vector": [1, "2", 3, 4]}]}, "documents[0].vector"),
        ({"documents": [{"id": "d", "text": "a"}, {"id": "d", "text": "b"}]}, "documents[1].id"),
        ({"documents": [{"id": "a\x00b", "text": "a"}]}, "documents[0].id"),
        ({"documents": [{"text": "a"}], "consistency": "most"}, "consistency"),
        ({"documents": [{"text": "a"}], "session": 7}, "session"),
    ],
)
def test_upsert_rejections_name_the_field(body: Any, field: str) -> None:
    assert _upsert_error(body).field == field


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "query"),
        ({"query": "a", "vector": [1, 0, 0, 0]}, "query"),
        ({"query": "a", "k": 0}, "k"),
        ({"query": "a", "k": 51}, "k"),
        ({"query": "a", "k": True}, "k"),
        ({"query": "a", "mode": "fuzzy"}, "mode"),
        ({"vector": [1, 0, 0, 0], "mode": "bm25"}, "mode"),
        ({"query": "a", "filter": {"year": {"$near": 3}}}, "filter.year.$near"),
        ({"query": "a", "limit": 3}, "limit"),
    ],
)
def test_search_rejections_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_search(body, LIMITS, DIM)
    assert err.value.field == field


def test_search_defaults() -> None:
    request = parse_search({"query": "wing flutter"}, LIMITS, DIM)
    assert (request.k, request.mode, request.filter, request.vector) == (LIMITS.default_k, "dense", None, None)


def test_ask_bounds_max_tokens_by_generation_config() -> None:
    generation = GenerationConfig(max_tokens=64)
    assert parse_ask({"query": "q"}, LIMITS, generation).max_tokens == 64
    with pytest.raises(ValidationError) as err:
        parse_ask({"query": "q", "max_tokens": 65}, LIMITS, generation)
    assert err.value.field == "max_tokens"
    with pytest.raises(ValidationError) as err:
        parse_ask({"query": "q", "stream": "yes"}, LIMITS, generation)
    assert err.value.field == "stream"
