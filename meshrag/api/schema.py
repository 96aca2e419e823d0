"""Validation of public request bodies into typed requests.

Every rejection names the exact field at fault (``documents[3].text``) so a
client with a batch of 500 documents knows which one to fix. Nothing here
touches storage: a request is fully validated before any of it is applied.
Whatever is accepted must be something every replica can store, index and
send on (wire.py says what that is), so one node never holds a document its
peers cannot take.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from meshrag.config import ApiConfig, GenerationConfig
from meshrag.errors import ValidationError
from meshrag.rag.requests import AskRequest, IncomingDocument, SearchRequest, UpsertRequest
from meshrag.store.filters import Filter, parse_filter
from meshrag.wire import INT64_MAX, INT64_MIN, check_text, is_int64, printable

CONSISTENCY_LEVELS = ("one", "quorum", "all")
SEARCH_MODES = ("dense", "bm25", "hybrid")
MAX_ID_CHARS = 512
MAX_NODE_REF_CHARS = 128  # a node name (<= 64) or id
MAX_METADATA_DEPTH = 8
MAX_METADATA_KEYS = 256
_ID_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _require_object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"{path} must be a JSON object, got {_type_name(value)}", field=path)
    return value


def _reject_unknown(obj: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            where = f"{prefix}.{printable(key)}" if prefix else printable(key)
            raise ValidationError(f"unknown field {key!r}; allowed: {', '.join(sorted(allowed))}", field=where)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _quoted(value: Any) -> str:
    """A client's value inside an error message: short, and never a deep or huge repr."""
    return repr(value[:64]) if isinstance(value, str) else _type_name(value)


def _string(obj: Mapping[str, Any], key: str, path: str, *, required: bool, max_chars: int) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ValidationError(f"{path} is required", field=path)
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{path} must be a string, got {_type_name(value)}", field=path)
    check_text(value, path)
    if not value.strip():
        raise ValidationError(f"{path} must not be empty", field=path)
    if len(value) > max_chars:
        raise ValidationError(f"{path} has {len(value)} characters; at most {max_chars} allowed", field=path)
    return value


def _integer(obj: Mapping[str, Any], key: str, path: str, default: int, low: int, high: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{path} must be an integer, got {_type_name(value)}", field=path)
    if not low <= value <= high:
        raise ValidationError(f"{path} = {value} is out of range {low}..{high}", field=path)
    return value


def _choice(obj: Mapping[str, Any], key: str, path: str, default: str, choices: tuple[str, ...]) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValidationError(f"{path} = {_quoted(value)}; allowed: {', '.join(choices)}", field=path)
    return value.lower()


def _session(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("session")
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"session must be a string token, got {_type_name(value)}", field="session")
    if value is not None:
        check_text(value, "session")
    return value


def _vector(value: Any, path: str, dim: int) -> np.ndarray:
    if isinstance(value, np.ndarray):
        items = value.ravel().tolist()
    elif isinstance(value, list):
        items = value
    else:
        raise ValidationError(f"{path} must be an array of {dim} numbers, got {_type_name(value)}", field=path)
    if len(items) != dim:
        raise ValidationError(f"{path} has {len(items)} dimensions; this cluster's vectors have {dim}", field=path)
    if not all(_is_float32(x) for x in items):
        raise ValidationError(f"{path} must hold finite numbers within float32 range only", field=path)
    # The norm is taken in float64: squaring large float32 components would overflow to inf.
    vector = np.asarray(items, dtype=np.float32).astype(np.float64)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ValidationError(f"{path} is the zero vector; cosine similarity is undefined for it", field=path)
    # Stored vectors are unit length so that dot product = cosine everywhere.
    return (vector / norm).astype(np.float32)


def _is_float32(value: Any) -> bool:
    """A finite number that stays finite as float32 (vectors are stored and indexed as float32)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return abs(float(value)) <= _FLOAT32_MAX
    except OverflowError:  # an integer beyond float range
        return False


def _check_metadata(value: Any, path: str, depth: int = 0) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise ValidationError(f"{path} nests deeper than {MAX_METADATA_DEPTH} levels", field=path)
    if isinstance(value, dict):
        if len(value) > MAX_METADATA_KEYS:
            raise ValidationError(f"{path} has {len(value)} keys; at most {MAX_METADATA_KEYS}", field=path)
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise ValidationError(f"{path} keys must be non-empty strings", field=path)
            key_path = f"{path}.{printable(key)}"
            check_text(key, key_path)
            _check_metadata(item, key_path, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_metadata(item, f"{path}[{index}]", depth + 1)
    else:
        _check_metadata_scalar(value, path)


def _check_metadata_scalar(value: Any, path: str) -> None:
    if isinstance(value, str):
        check_text(value, path)
    elif isinstance(value, int) and not is_int64(value):
        # msgpack and SQLite carry signed 64-bit; a larger one would be stored here but never replicated.
        raise ValidationError(f"{path}: integers must lie in {INT64_MIN}..{INT64_MAX}", field=path)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{path} must be a finite number", field=path)
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise ValidationError(f"{path} has unsupported type {_type_name(value)}", field=path)


def _document(value: Any, path: str, limits: ApiConfig, dim: int) -> IncomingDocument:
    obj = _require_object(value, path)
    _reject_unknown(obj, frozenset({"id", "text", "metadata", "vector"}), path)
    doc_id = _string(obj, "id", f"{path}.id", required=False, max_chars=MAX_ID_CHARS)
    if doc_id is not None:
        _check_id_characters(doc_id, f"{path}.id")
    text = _string(obj, "text", f"{path}.text", required=True, max_chars=limits.max_text_chars)
    metadata = obj.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValidationError(f"{path}.metadata must be an object, got {_type_name(metadata)}", field=f"{path}.metadata")
    _check_metadata(metadata, f"{path}.metadata")
    vector = _vector(obj["vector"], f"{path}.vector", dim) if obj.get("vector") is not None else None
    assert text is not None
    return IncomingDocument(doc_id=doc_id, text=text, metadata=metadata, vector=vector)


def _check_id_characters(doc_id: str, path: str) -> None:
    if _ID_FORBIDDEN.search(doc_id):
        raise ValidationError(f"{path} must not contain control characters", field=path)


def parse_doc_id(value: str) -> str:
    """A document id from a URL path (GET, DELETE): the rules an upserted id follows, so a
    delete cannot leave a tombstone for an id no upsert could have written."""
    doc_id = _string({"id": value}, "id", "id", required=True, max_chars=MAX_ID_CHARS)
    assert doc_id is not None
    _check_id_characters(doc_id, "id")
    return doc_id


def parse_node_ref(body: Any) -> str:
    """The node a cluster command names (``{"node": name or id}``)."""
    obj = _require_object(body, "body")
    _reject_unknown(obj, frozenset({"node"}), "")
    node = _string(obj, "node", "node", required=True, max_chars=MAX_NODE_REF_CHARS)
    assert node is not None
    return node


def parse_upsert(body: Any, limits: ApiConfig, dim: int) -> UpsertRequest:
    obj = _require_object(body, "body")
    _reject_unknown(obj, frozenset({"documents", "consistency", "session"}), "")
    documents = obj.get("documents")
    if not isinstance(documents, list):
        raise ValidationError(f"documents must be an array, got {_type_name(documents)}", field="documents")
    if not 1 <= len(documents) <= limits.max_documents_per_request:
        raise ValidationError(
            f"documents has {len(documents)} entries; 1..{limits.max_documents_per_request} allowed per request",
            field="documents",
        )
    parsed = [_document(doc, f"documents[{i}]", limits, dim) for i, doc in enumerate(documents)]
    _reject_duplicate_ids(parsed)
    consistency = _choice(obj, "consistency", "consistency", "quorum", CONSISTENCY_LEVELS)
    return UpsertRequest(documents=parsed, consistency=consistency, session=_session(obj))


def _reject_duplicate_ids(documents: list[IncomingDocument]) -> None:
    seen: dict[str, int] = {}
    for index, doc in enumerate(documents):
        if doc.doc_id is None:
            continue
        if doc.doc_id in seen:
            raise ValidationError(
                f"id {doc.doc_id!r} appears twice in this request (documents[{seen[doc.doc_id]}] and documents[{index}])",
                field=f"documents[{index}].id",
            )
        seen[doc.doc_id] = index


def _optional_filter(obj: Mapping[str, Any]) -> Filter | None:
    raw = obj.get("filter")
    if raw is None or raw == {}:
        return None
    return parse_filter(raw, "filter")


# Bounds of a search's own deadline (timeout_ms); the node's default is search.timeout_ms.
SEARCH_TIMEOUT_MS = (10, 60000)


def parse_search(body: Any, limits: ApiConfig, dim: int) -> SearchRequest:
    obj = _require_object(body, "body")
    if "consistency" in obj:
        # Search reads one replica per partition; read-your-writes comes from the session token.
        raise ValidationError(
            "search takes no consistency: it reads one replica per partition; pass the session "
            "token of your writes (session) to read them", field="consistency",
        )
    _reject_unknown(obj, frozenset({"query", "vector", "k", "mode", "filter", "session", "timeout_ms", "require_full_coverage"}), "")
    query = _string(obj, "query", "query", required=False, max_chars=limits.max_text_chars)
    vector = _vector(obj["vector"], "vector", dim) if obj.get("vector") is not None else None
    if (query is None) == (vector is None):
        raise ValidationError("give exactly one of query or vector", field="query")
    mode = _choice(obj, "mode", "mode", "dense", SEARCH_MODES)
    if mode != "dense" and query is None:
        raise ValidationError(f"mode {mode!r} needs a text query", field="mode")
    timeout_ms = None
    if obj.get("timeout_ms") is not None:
        timeout_ms = _integer(obj, "timeout_ms", "timeout_ms", 0, *SEARCH_TIMEOUT_MS)
    return SearchRequest(
        query=query,
        vector=vector,
        k=_integer(obj, "k", "k", limits.default_k, 1, limits.max_k),
        mode=mode,
        filter=_optional_filter(obj),
        session=_session(obj),
        timeout_ms=timeout_ms,
        require_full_coverage=_boolean(obj, "require_full_coverage", False),
    )


def _boolean(obj: Mapping[str, Any], key: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ValidationError(f"{key} must be true or false, got {_type_name(value)}", field=key)
    return value


def parse_ask(body: Any, limits: ApiConfig, generation: GenerationConfig) -> AskRequest:
    obj = _require_object(body, "body")
    _reject_unknown(obj, frozenset({"query", "k", "filter", "stream", "max_tokens", "session"}), "")
    query = _string(obj, "query", "query", required=True, max_chars=8192)
    stream = _boolean(obj, "stream", False)
    assert query is not None
    return AskRequest(
        query=query,
        k=_integer(obj, "k", "k", limits.ask_default_k, 1, min(limits.max_k, 100)),
        filter=_optional_filter(obj),
        stream=stream,
        max_tokens=_integer(obj, "max_tokens", "max_tokens", generation.max_tokens, 1, generation.max_tokens),
        session=_session(obj),
    )
