"""Property tests (hypothesis) for public request validation (api/schema.py, openai_schema.py,
api_keys.py) and metadata filters (store/filters.py): any decoded body is a typed request or a
ValidationError naming a field that renders; what is accepted is what every replica can store
and send on; an accepted filter survives being forwarded to a peer."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrag.api.api_keys import parse_create
from meshrag.api.errors import _encodable
from meshrag.api.openai_schema import parse_chat
from meshrag.api.schema import MAX_ID_CHARS, MAX_METADATA_DEPTH, parse_ask, parse_node_ref, parse_search, parse_upsert
from meshrag.config import Config
from meshrag.errors import ValidationError
from meshrag.store.filters import MAX_DEPTH, And, Filter, Not, Or, dump_filter, matches, parse_filter
from meshrag.wire import dumps_json, pack
from tests.api.fuzz_bodies import VOCABULARY
from tests.test_wire_properties import nesting_depth

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DIM = 4
CONFIG = Config()
CONFIG.api.max_documents_per_request, CONFIG.api.max_text_chars, CONFIG.generation.max_tokens = 8, 200, 16

texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | st.sampled_from(VOCABULARY)
numbers = (st.integers(-(2**66), 2**66) | st.floats() | st.sampled_from([0, 1, 5, 2**63, -(2**63) - 1, 2**64]))
scalars = st.none() | st.booleans() | numbers | texts
trees = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=5), max_leaves=25)
vectors = st.lists(numbers, min_size=DIM, max_size=DIM)
documents = st.fixed_dictionaries({"text": texts}, optional={"id": texts, "metadata": trees, "vector": vectors, "extra": trees})
upserts = st.fixed_dictionaries({"documents": st.lists(documents, max_size=3) | trees},
                                optional={"consistency": scalars, "session": scalars}) | trees
filter_keys = st.sampled_from(["a", "b.c", "n", "$and", "$or", "$eq", "$ne", "$in", "$nin", "$gt", "$lte", "$bad", "", "x y", "a..b"])
filters = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(filter_keys, inner, max_size=3), max_leaves=20)
searches = st.fixed_dictionaries({}, optional={"query": texts, "vector": vectors, "k": numbers | scalars, "mode": scalars, "filter": filters,
                                               "timeout_ms": numbers, "session": scalars, "require_full_coverage": scalars}) | trees
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]) | scalars,
                                           "content": texts | trees}), max_size=3)
chats = st.fixed_dictionaries({"messages": messages}, optional={
    "model": scalars, "stream": scalars, "max_tokens": numbers, "temperature": numbers, "stop": trees, "k": numbers, "filter": filters,
    "n": numbers, "tools": trees, "top_p": numbers, "retrieval": scalars, "stream_options": trees}) | trees


def _refused_cleanly(exc: ValidationError) -> None:
    assert exc.status == 400
    assert exc.field is None or isinstance(exc.field, str)
    rendered = {k: _encodable(v) if isinstance(v, str) else v for k, v in exc.to_dict().items()}
    dumps_json({"error": rendered})


@FAST
@given(body=upserts)
def test_an_upsert_is_storable_everywhere_or_a_400(body: Any) -> None:
    try:
        request = parse_upsert(body, CONFIG.api, DIM)
    except ValidationError as exc:
        _refused_cleanly(exc)
        return
    assert 1 <= len(request.documents) <= CONFIG.api.max_documents_per_request
    for doc in request.documents:
        assert doc.text.strip() and len(doc.text) <= CONFIG.api.max_text_chars
        assert doc.doc_id is None or 0 < len(doc.doc_id) <= MAX_ID_CHARS
        assert nesting_depth(doc.metadata) <= MAX_METADATA_DEPTH + 1
        # What a replica stores and what replication sends: both encodings must take it.
        pack({"id": doc.doc_id, "text": doc.text, "metadata": doc.metadata, "vector": doc.vector})
        dumps_json({"text": doc.text, "metadata": doc.metadata}).decode("utf-8")


@FAST
@given(body=searches)
def test_a_search_is_valid_or_a_400(body: Any) -> None:
    try:
        request = parse_search(body, CONFIG.api, DIM)
    except ValidationError as exc:
        _refused_cleanly(exc)
        return
    assert (request.query is None) != (request.vector is None)
    assert 1 <= request.k <= CONFIG.api.max_k
    if request.filter is not None:
        pack(dump_filter(request.filter))


@FAST
@given(body=trees | st.fixed_dictionaries({"query": texts}, optional={"k": numbers, "max_tokens": numbers, "stream": scalars, "filter": filters}))
def test_an_ask_is_valid_or_a_400(body: Any) -> None:
    try:
        request = parse_ask(body, CONFIG.api, CONFIG.generation)
    except ValidationError as exc:
        _refused_cleanly(exc)
        return
    assert 1 <= request.max_tokens <= CONFIG.generation.max_tokens and request.query.strip()


@FAST
@given(body=chats)
def test_a_chat_completion_is_valid_or_a_400(body: Any) -> None:
    try:
        request = parse_chat(body, CONFIG.api, CONFIG.generation)
    except ValidationError as exc:  # ModelNotFound is a 404 raised later, by the route
        _refused_cleanly(exc)
        return
    assert 1 <= request.max_tokens <= CONFIG.generation.max_tokens
    for message in request.messages:
        message["content"].encode("utf-8")  # goes to a generator node, maybe llama.cpp


@FAST
@given(body=trees | st.fixed_dictionaries({"name": texts, "scopes": trees}) | st.fixed_dictionaries({"node": texts}))
def test_small_admin_bodies_are_valid_or_a_400(body: Any) -> None:
    for parse in (parse_node_ref, parse_create):
        try:
            parse(body)
        except ValidationError as exc:
            _refused_cleanly(exc)


def _filter_depth(f: Filter) -> int:
    if isinstance(f, (And, Or)):
        return 1 + max((_filter_depth(c) for c in f.children), default=0)
    if isinstance(f, Not):
        return _filter_depth(f.child)
    return 0


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=filters, metadata=trees)
def test_an_accepted_filter_is_bounded_forwards_unchanged_and_evaluates_anything(raw: Any, metadata: Any) -> None:
    try:
        parsed = parse_filter(raw)
    except ValidationError as exc:
        _refused_cleanly(exc)
        return
    assert _filter_depth(parsed) <= MAX_DEPTH + 1
    forwarded = dump_filter(parsed)
    pack(forwarded)  # a coordinator sends it to peers
    assert parse_filter(forwarded) == parsed  # which parse it again, to the same filter
    if isinstance(metadata, dict):
        assert matches(parsed, metadata) in (True, False)
