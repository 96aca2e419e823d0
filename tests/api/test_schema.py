"""api/schema.py: every rejection names the field at fault."""

from __future__ import annotations

from typing import Any

import msgpack
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
        ({"query": "a", "consistency": "quorum"}, "consistency"),
        ({"query": "a", "timeout_ms": 5}, "timeout_ms"),
        ({"query": "a", "timeout_ms": 60001}, "timeout_ms"),
        ({"query": "a", "timeout_ms": 1.5}, "timeout_ms"),
        ({"query": "a", "require_full_coverage": "yes"}, "require_full_coverage"),
    ],
)
def test_search_rejections_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_search(body, LIMITS, DIM)
    assert err.value.field == field


def test_search_defaults() -> None:
    request = parse_search({"query": "wing flutter"}, LIMITS, DIM)
    assert (request.k, request.mode, request.filter, request.vector) == (LIMITS.default_k, "dense", None, None)
    assert (request.timeout_ms, request.require_full_coverage) == (None, False), "the node's deadline, partial answers allowed"


def test_search_takes_its_own_deadline_and_coverage_demand() -> None:
    request = parse_search({"query": "wing flutter", "timeout_ms": 250, "require_full_coverage": True}, LIMITS, DIM)
    assert (request.timeout_ms, request.require_full_coverage) == (250, True)


def test_search_consistency_is_refused_with_the_session_token_as_the_way_to_read_writes() -> None:
    with pytest.raises(ValidationError) as err:
        parse_search({"query": "a", "consistency": "one"}, LIMITS, DIM)
    assert "session" in err.value.message


@pytest.mark.parametrize(
    "document,field",
    [
        ({"id": "a\ud800", "text": "x"}, "documents[0].id"),
        ({"text": "lone \udfff surrogate"}, "documents[0].text"),
        ({"text": "nul \x00 inside"}, "documents[0].text"),
        ({"text": "x", "metadata": {"\ud800k": 1}}, "documents[0].metadata.\\ud800k"),
        ({"text": "x", "metadata": {"a": ["ok", {"b": "\ud83d"}]}}, "documents[0].metadata.a[1].b"),
        ({"text": "x", "metadata": {"n": 2**64}}, "documents[0].metadata.n"),
        ({"text": "x", "metadata": {"n": 2**63}}, "documents[0].metadata.n"),  # msgpack's uint64, not SQLite's
        ({"text": "x", "metadata": {"n": -(2**63) - 1}}, "documents[0].metadata.n"),
        ({"text": "x", "metadata": {"deep": [[[2**70]]]}}, "documents[0].metadata.deep[0][0][0]"),
        ({"text": "x", "metadata": {"b": b"raw"}}, "documents[0].metadata.b"),
        ({"text": "x", "metadata": {"e": msgpack.ExtType(5, b"x")}}, "documents[0].metadata.e"),
        ({"text": "x", "vector": [10**400, 0, 0, 1]}, "documents[0].vector"),
        ({"text": "x", "vector": [1e39, 0, 0, 1]}, "documents[0].vector"),  # inf once stored as float32
    ],
)
def test_upsert_refuses_what_a_replica_could_not_store_or_send(document: dict[str, Any], field: str) -> None:
    error = _upsert_error({"documents": [document]})
    assert error.field == field
    (error.field + error.message).encode("utf-8")  # the 400 itself can be rendered


def test_signed_64_bit_bounds_in_metadata_are_accepted() -> None:
    metadata = {"low": -(2**63), "high": 2**63 - 1, "nested": [{"x": 0}]}
    assert parse_upsert({"documents": [{"text": "x", "metadata": metadata}]}, LIMITS, DIM).documents[0].metadata == metadata


def test_large_float32_vector_components_normalise_to_a_unit_vector() -> None:
    [document] = parse_upsert({"documents": [{"text": "x", "vector": [3e38, 0, 0, 3e38]}]}, LIMITS, DIM).documents
    assert document.vector is not None and document.vector.dtype == np.float32
    np.testing.assert_allclose(document.vector, [0.70710677, 0, 0, 0.70710677], rtol=1e-6)


def test_unknown_field_with_an_unencodable_name_gets_a_renderable_field_path() -> None:
    error = _upsert_error({"documents": [{"text": "x", "\ud800": 1}]})
    assert error.field == "documents[0].\\ud800"


def _deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "body,field",
    [
        ({"query": "x\ud800"}, "query"),
        ({"query": "x", "filter": {"tag": "\udc00"}}, "filter.tag"),
        ({"query": "x", "session": "tok\ud800"}, "session"),
        ({"query": "x", "consistency": _deep_list(5000)}, "consistency"),  # the error message must not repr it
        ({"query": "x", "mode": _deep_list(5000)}, "mode"),
    ],
)
def test_search_refuses_unencodable_text_and_names_the_field(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_search(body, LIMITS, DIM)
    assert err.value.field == field


def test_ask_refuses_a_lone_surrogate_in_the_query() -> None:
    with pytest.raises(ValidationError) as err:
        parse_ask({"query": "what is \ud800?"}, LIMITS, GenerationConfig())
    assert err.value.field == "query"


def test_ask_bounds_max_tokens_by_generation_config() -> None:
    generation = GenerationConfig(max_tokens=64)
    assert parse_ask({"query": "q"}, LIMITS, generation).max_tokens == 64
    with pytest.raises(ValidationError) as err:
        parse_ask({"query": "q", "max_tokens": 65}, LIMITS, generation)
    assert err.value.field == "max_tokens"
    with pytest.raises(ValidationError) as err:
        parse_ask({"query": "q", "stream": "yes"}, LIMITS, generation)
    assert err.value.field == "stream"


@pytest.mark.parametrize(
    ("path_id", "message"),
    [("a\x00b", "NUL"), ("a\x07b", "control characters"), ("x" * 513, "at most 512"), ("\ud800", "UTF-8"), ("   ", "must not be empty")],
)
def test_a_document_id_in_a_url_path_follows_the_upsert_id_rules(path_id: str, message: str) -> None:
    from meshrag.api.schema import parse_doc_id

    with pytest.raises(ValidationError, match=message) as failure:
        parse_doc_id(path_id)
    assert failure.value.field == "id"
    assert parse_doc_id("cranfield/12") == "cranfield/12"


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "node"), ({"node": 3}, "node"), ({"node": "\ud800"}, "node"), ({"node": "n" * 129}, "node"),
     ({"node": "n3", "force": True}, "force"), ([], "body")],
)
def test_a_cluster_command_names_its_node_with_a_short_valid_string(body: Any, field: str) -> None:
    from meshrag.api.schema import parse_node_ref

    with pytest.raises(ValidationError) as failure:
        parse_node_ref(body)
    assert failure.value.field == field
    assert parse_node_ref({"node": "n3"}) == "n3"
