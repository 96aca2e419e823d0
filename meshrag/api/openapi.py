"""The OpenAPI 3.1 document of the public API, served at GET /openapi.json.

Built from what the code enforces, so it cannot drift quietly: limits come
from the node's ApiConfig and GenerationConfig (max documents, text length,
k, body size), the vector length from the loaded embedder, field limits from
api/schema.py, api/openai_schema.py and store/filters.py, and each route's
API key scope from api/auth.py's ROUTE_SCOPES. tests/api/test_openapi.py
checks that every route the node serves is here and nothing else, that the
document is valid OpenAPI, and (schemathesis) that a real node answers what
it says.
"""

from __future__ import annotations

from typing import Any

from meshrag.api.auth import OPEN, ROUTE_SCOPES
from meshrag.api.openai_schema import (
    _ALLOWED_FIELDS, MAX_MESSAGES, MAX_QUERY_CHARS, MAX_STOP_CHARS, MAX_STOP_SEQUENCES, ROLES,
)
from meshrag.api.schema import CONSISTENCY_LEVELS, MAX_ID_CHARS, MAX_METADATA_DEPTH, MAX_NODE_REF_CHARS, SEARCH_MODES, SEARCH_TIMEOUT_MS
from meshrag.cluster.verify import STATES as VERIFY_STATES
from meshrag.backup.manifest import NAME_PATTERN
from meshrag.config import Config
from meshrag.latency_history import CLASSES as LATENCY_CLASSES
from meshrag.security.api_keys import MAX_NAME, SCOPES
from meshrag.store.filters import FIELD_OPS, MAX_DEPTH, MAX_LIST_ITEMS
from meshrag.wire import INT64_MAX, INT64_MIN, MAX_BODY_DEPTH, MSGPACK

JSON = "application/json"
SSE = "text/event-stream"
ASK_MAX_K = 100  # /v1/ask and chat retrieval: min(api.max_k, 100) (api/schema.py, openai_schema.py)
MAX_COMPLETION_TOKENS = 1 << 31

_ERROR_TEXT = {
    400: "Invalid request: the error names the field at fault", 401: "An API key is required (api.keys on) or it is unknown or revoked",
    403: "The API key lacks this route's scope", 404: "Not found", 409: "Conflict", 413: "Body larger than api.max_body_bytes",
    415: "Content-Type other than application/json or application/msgpack", 421: "This node holds no data (no storage role)",
    429: "This client has api.max_concurrent_per_client requests in flight; Retry-After says when to retry",
    502: "Generation failed on every generator that could take it", 503: "Not ready, overloaded or too few replicas; Retry-After says when to retry",
    504: "The request ran past its server-side deadline (api.*_deadline_s)",
    507: "Too little free space on the node's disk for what it was asked to write",
}
_BODY_ERRORS = (400, 413, 415)
_CLIENT = (401, 403, 429, 503, 504)  # any limited route: authentication, concurrency, overload, deadline


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = (), *, closed: bool = True, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _string(max_chars: int | None = None, min_chars: int = 1, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": min_chars, **extra}
    if max_chars is not None:
        schema["maxLength"] = max_chars
    return schema


def _int(low: int, high: int, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, **extra}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


SCALAR = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
                    {"type": "boolean"}, {"type": "null"}]}


def schemas(config: Config, dim: int | None) -> dict[str, Any]:
    api, generation = config.api, config.generation
    ask_k = min(api.max_k, ASK_MAX_K)
    vector: dict[str, Any] = {"type": "array", "items": {"type": "number"},
                              "description": "Embedding of the cluster's dimension (normalised to unit length; not the zero vector)"}
    if dim is not None:
        vector.update(minItems=dim, maxItems=dim)
    operators = _obj({op: SCALAR if op in ("$eq", "$ne") else ({"type": "array", "items": SCALAR, "minItems": 1, "maxItems": MAX_LIST_ITEMS}
                                                              if op in ("$in", "$nin") else {"type": ["string", "number"]})
                      for op in FIELD_OPS}, minProperties=1)
    session = {"type": "string", "description": "Session token from a write's answer: read your writes"}
    timings = {"type": "object", "additionalProperties": {"type": "number"}}
    source = _obj({"n": {"type": "integer"}, "doc_id": {"type": "string"}, "chunk_id": {"type": "string"},
                   "score": {"type": "number"}, "text": {"type": "string"}}, ("n", "doc_id", "chunk_id", "score", "text"))
    generation_report = _obj({
        "generator": {"type": "string"}, "generator_name": {"type": "string"}, "model": {"type": "string"},
        "attempts": {"type": "integer"}, "failover": {"type": "array", "items": {"type": "object"}},
        "retries": {"type": "array", "items": {"type": "string"}}, "timings": timings,
    }, ("generator", "model", "attempts", "failover"), closed=False)
    write_result = _obj({"id": {"type": "string"}, "status": {"enum": ["created", "updated", "unchanged", "stale", "deleted", "superseded"]},
                         "version": {"type": "integer"}}, ("id", "status", "version"))
    api_key = _obj({"id": {"type": "string"}, "name": {"type": "string"}, "scopes": {"type": "array", "items": {"enum": list(SCOPES)}},
                    "revoked": {"type": "boolean"}}, ("id", "name", "scopes", "revoked"))
    text_part = _obj({"type": {"const": "text"}, "text": {"type": "string"}}, ("type", "text"), closed=False)
    message = _obj({
        "role": {"enum": list(ROLES)},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": text_part}]},
        "name": _nullable({"type": "string"}),
        **{key: {"type": "null"} for key in ("refusal", "annotations", "audio", "tool_calls", "function_call")},
    }, ("role", "content"))
    honoured = {
        "model": _string(), "messages": {"type": "array", "items": _ref("ChatMessage"), "minItems": 1, "maxItems": MAX_MESSAGES},
        "stream": _nullable({"type": "boolean"}),
        "stream_options": _nullable(_obj({"include_usage": _nullable({"type": "boolean"}), "include_obfuscation": _nullable({"type": "boolean"})})),
        "max_tokens": _nullable(_int(1, MAX_COMPLETION_TOKENS, description=f"Clamped to generation.max_tokens ({generation.max_tokens})")),
        "max_completion_tokens": _nullable(_int(1, MAX_COMPLETION_TOKENS)),
        "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
        "stop": _nullable({"anyOf": [_string(MAX_STOP_CHARS), {"type": "array", "items": _string(MAX_STOP_CHARS), "maxItems": MAX_STOP_SEQUENCES}]}),
        "retrieval": _nullable({"type": "boolean", "description": "Retrieve from the cluster for the last user message (default on)"}),
        "k": _int(1, ask_k), "filter": _nullable(_ref("Filter")), "session": _nullable(session),
    }
    ignored = {key: {"description": "OpenAI field accepted and not acted on; values asking for what this API cannot do are a 400"}
               for key in sorted(_ALLOWED_FIELDS - set(honoured))}
    return {
        "Error": _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"}, "field": _nullable({"type": "string"})},
                                     ("code", "message", "field"), closed=False)}, ("error",), closed=False),
        "Filter": {"type": "object", "additionalProperties": {"anyOf": [SCALAR, operators, {"type": "array", "items": {"type": "object"}}]},
                   "description": f"Metadata filter: {{\"field.path\": value | {{op: operand}}}}, $and / $or arrays of filters; "
                                  f"operators {', '.join(FIELD_OPS)}; at most {MAX_DEPTH} levels, {MAX_LIST_ITEMS} items per list"},
        "Document": _obj({
            "id": _string(MAX_ID_CHARS, description="No control characters; without one the id is the hash of the text"),
            "text": _string(api.max_text_chars),
            "metadata": _nullable({"type": "object", "description": f"JSON values: 64-bit integers, finite numbers, at most {MAX_METADATA_DEPTH} levels"}),
            "vector": _nullable(vector),
        }, ("text",)),
        "UpsertRequest": _obj({
            "documents": {"type": "array", "items": _ref("Document"), "minItems": 1, "maxItems": api.max_documents_per_request},
            "consistency": {"enum": list(CONSISTENCY_LEVELS), "default": "quorum"}, "session": _nullable(session),
        }, ("documents",)),
        "UpsertResponse": _obj({"results": {"type": "array", "items": write_result}, "session": {"type": "string"}}, ("results", "session")),
        "DeleteResponse": _obj({**write_result["properties"], "session": {"type": "string"}}, ("id", "status", "version", "session")),
        "StoredDocument": _obj({
            "id": {"type": "string"}, "text": {"type": "string"}, "metadata": {"type": "object"}, "version": {"type": "integer"},
            "chunks": {"type": "array", "items": _obj({"chunk_id": {"type": "string"}, "seq": {"type": "integer"}, "text": {"type": "string"},
                                                      "start": {"type": "integer"}, "end": {"type": "integer"}}, ("chunk_id", "seq", "text", "start", "end"))},
        }, ("id", "text", "metadata", "version", "chunks")),
        "SearchRequest": _obj({
            "query": _nullable(_string(api.max_text_chars)), "vector": _nullable(vector), "k": _int(1, api.max_k, default=api.default_k),
            "mode": {"enum": list(SEARCH_MODES), "default": "dense"}, "filter": _nullable(_ref("Filter")), "session": _nullable(session),
            "timeout_ms": _nullable(_int(*SEARCH_TIMEOUT_MS, description=f"Default search.timeout_ms ({config.search.timeout_ms:g})")),
            "require_full_coverage": {"type": "boolean", "default": False},
        }, description="Exactly one of query and vector; bm25 and hybrid need a query"),
        "SearchResponse": _obj({
            "hits": {"type": "array", "items": _obj({"chunk_id": {"type": "string"}, "doc_id": {"type": "string"}, "score": {"type": "number"},
                                                    "text": {"type": "string"}, "metadata": {"type": "object"}},
                                                   ("chunk_id", "doc_id", "score", "text", "metadata"))},
            "coverage": {"type": "number", "minimum": 0, "maximum": 1}, "missing_partitions": {"type": "array", "items": {"type": "integer"}},
            "timings": timings,
        }, ("hits", "coverage", "missing_partitions", "timings")),
        "AskRequest": _obj({
            "query": _string(MAX_QUERY_CHARS), "k": _int(1, ask_k, default=api.ask_default_k), "filter": _nullable(_ref("Filter")),
            "stream": {"type": "boolean", "default": False, "description": "Server-sent events: sources, token..., done (or error)"},
            "max_tokens": _int(1, generation.max_tokens, default=generation.max_tokens), "session": _nullable(session),
        }, ("query",)),
        "AskResponse": _obj({"answer": {"type": "string"}, "sources": {"type": "array", "items": source},
                             "coverage": {"type": "number"}, "timings": {"type": "object"}, "generation": generation_report},
                            ("answer", "sources", "coverage", "timings", "generation")),
        "NodeRef": _obj({"node": _string(MAX_NODE_REF_CHARS, description="A node's name or id")}, ("node",)),
        "RingResponse": _obj({"ring": {"type": "object"}}, ("ring",), closed=False),
        "ChatMessage": message,
        "ChatRequest": _obj({**honoured, **ignored}, ("messages",),
                            description="OpenAI chat completions; MeshRAG's own fields: retrieval, k, filter, session"),
        "ChatCompletion": _obj({
            "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"}, "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}}, "usage": {"type": "object"},
            "sources": {"type": "array", "items": source}, "citations": {"type": "array", "items": {"type": "object"}}, "meshrag": {"type": "object"},
        }, ("id", "object", "created", "model", "choices", "usage", "sources", "citations", "meshrag")),
        "Model": _obj({"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"}, "owned_by": {"type": "string"},
                       "generators": {"type": "integer"}, "backends": {"type": "array", "items": {"type": "string"}},
                       "context_tokens": {"type": "integer"}}, ("id", "object", "created", "owned_by")),
        "ModelList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}, ("object", "data")),
        "ClusterStatus": _obj({
            "node": {"type": "object"}, "members": {"type": "array", "items": {"type": "object"}}, "ring": {"type": "object"},
            "balance": _obj({"even_share": {"type": "number"}, "nodes": {"type": "array", "items": _obj({
                "node": {"type": "string"}, "id": {"type": "string"}, "copies": {"type": "integer"}, "target": {"type": "number"},
                "ratio": _nullable({"type": "number"})}, ("node", "id", "copies", "target", "ratio"), closed=False)}},
                ("even_share", "nodes"), closed=False),
            "replication": _obj({"wanted": {"type": "integer"}, "under_replicated": {"type": "array", "items": {"type": "object"}}},
                                ("wanted", "under_replicated"), closed=False),
            "hints": {"type": "object", "description": "Pending hints per target node name, gathered from every node"},
            "transfers": {"type": "array", "items": {"type": "object"}, "description": "Each node's repair progress, rate and eta_s"},
            "peers": {"type": "array", "items": _obj({"node": {"type": "string"}, "reachable": {"type": "boolean"}}, ("node", "reachable"),
                                                     closed=False)},
        }, ("node", "members", "ring", "balance", "replication", "hints", "transfers", "peers"), closed=False,
            description="GET /v1/cluster's view of this node (without config) plus every ring member's report"),
        "VerifyReport": _obj({
            "partitions": {"type": "array", "items": _obj({
                "partition": {"type": "integer"}, "state": {"enum": list(VERIFY_STATES)},
                "replicas": {"type": "array", "items": _obj({
                    "node": {"type": "string"}, "id": {"type": "string"}, "digest": _nullable({"type": "string"}),
                    "documents": _nullable({"type": "integer"}), "tombstones": _nullable({"type": "integer"}),
                    "held": _nullable({"type": "boolean"}), "error": {"type": "string"},
                }, ("node", "digest", "documents"), closed=False)},
            }, ("partition", "state", "replicas"), closed=False)},
            "summary": _obj({"partitions": {"type": "integer"}, "in_sync": {"type": "integer"}, "repairing": {"type": "integer"},
                             "diverged": {"type": "integer"}, "unreachable": {"type": "integer"}, "exit_status": {"enum": [0, 1, 2]}},
                            ("partitions", "in_sync", "repairing", "diverged", "unreachable"), closed=False),
            "checked_by": {"type": "string"},
        }, ("partitions", "summary"), closed=False),
        "ApiKey": api_key,
        "LatencyHistory": _obj({
            "now": {"type": "number", "description": "This node's monotonic clock, seconds; bucket times are on it"},
            "bucket_s": {"type": "number"}, "window_s": {"type": "number"},
            "classes": _obj({name: {"type": "array", "items": _obj({
                "t": {"type": "number", "description": "Start of the bucket"}, "count": {"type": "integer"}, "errors": {"type": "integer"},
                "p50_ms": {"type": "number"}, "p99_ms": {"type": "number"}}, ("t", "count", "errors", "p50_ms", "p99_ms"))}
                for name in LATENCY_CLASSES}, LATENCY_CLASSES),
        }, ("now", "bucket_s", "window_s", "classes")),
        "NewApiKey": _obj({**api_key["properties"], "token": {"type": "string", "description": "Shown once, in this answer only"}},
                          ("id", "name", "scopes", "revoked", "token")),
        "ApiKeyList": _obj({"keys": {"type": "array", "items": api_key}}, ("keys",)),
        "SnapshotCreate": _obj({"name": _string(64, pattern=NAME_PATTERN, description="Default: the time, UTC (20250101T120000Z)")}),
        "SnapshotJob": _obj({
            "name": {"type": "string"}, "path": {"type": "string", "description": "On the node's host: <data_dir>/snapshots/<name>"},
            "state": {"enum": ["running", "done", "failed"]}, "phase": {"type": "string"},
            "partitions_done": {"type": "integer"}, "partitions_total": {"type": "integer"}, "bytes": {"type": "integer"},
            "documents": {"type": "integer"}, "started_at": _nullable({"type": "number"}), "finished_at": _nullable({"type": "number"}),
            "seconds": _nullable({"type": "number"}), "error": _nullable({"type": "string"}),
        }, ("name", "path", "state", "partitions_done", "partitions_total", "bytes")),
        "ApiKeyCreate": _obj({"name": _string(MAX_NAME), "scopes": {"type": "array", "items": {"enum": list(SCOPES)}, "minItems": 1}},
                             ("name", "scopes")),
    }


# (method, route) -> operation: summary, request body schema, success (status, schema or media), extra error codes, parameters
_ID = {"name": "doc_id", "in": "path", "required": True, "schema": _string(MAX_ID_CHARS)}
_CONSISTENCY = {"name": "consistency", "in": "query", "schema": {"enum": list(CONSISTENCY_LEVELS), "default": "quorum"}}
_SESSION = {"name": "session", "in": "query", "schema": {"type": "string"}}
_LOCAL = {"name": "local", "in": "query", "schema": {"enum": ["true", "false", "1", "0"], "default": "false"},
          "description": "This node's own copy only"}
_RETRIEVAL = {"name": "X-Meshrag-Retrieval", "in": "header", "schema": {"enum": ["on", "off", "true", "false", "1", "0", "yes", "no"]},
              "description": "Retrieval on or off when the body does not say (retrieval)"}
_STORAGE = (421,)

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/documents"): {"summary": "Upsert a batch of documents (chunk, embed once, replicate; W of N acks)",
                                "body": "UpsertRequest", "ok": "UpsertResponse", "errors": _BODY_ERRORS + _STORAGE},
    ("GET", "/v1/documents/{doc_id}"): {"summary": "Read a document at a consistency level (read repair)", "params": [_ID, _CONSISTENCY, _LOCAL, _SESSION],
                                        "ok": "StoredDocument", "errors": (400, 404) + _STORAGE},
    ("DELETE", "/v1/documents/{doc_id}"): {"summary": "Delete a document (a tombstone)", "params": [_ID, _CONSISTENCY, _SESSION],
                                           "ok": "DeleteResponse", "errors": (400,) + _STORAGE},
    ("POST", "/v1/search"): {"summary": "Dense, BM25 or hybrid search over the cluster, with coverage", "body": "SearchRequest",
                             "ok": "SearchResponse", "errors": _BODY_ERRORS + _STORAGE},
    ("POST", "/v1/ask"): {"summary": "Retrieve, then answer with numbered sources (stream: server-sent events)", "body": "AskRequest",
                          "ok": "AskResponse", "stream": True, "errors": _BODY_ERRORS + _STORAGE + (502,)},
    ("GET", "/v1/cluster"): {"summary": "This node, its members, the ring, storage and generation views", "ok": {"type": "object"}, "errors": _STORAGE},
    ("GET", "/v1/cluster/status"): {"summary": "The whole cluster from this node: members, ring balance, replication health, "
                                              "pending hints and transfers from every ring member (unreachable ones marked)",
                                   "ok": "ClusterStatus", "errors": _STORAGE},
    ("GET", "/v1/cluster/verify"): {"summary": "Every partition's replicas compared by repair digest: in sync, repairing, diverged "
                                              "or unreachable", "ok": "VerifyReport", "errors": _STORAGE},
    ("POST", "/v1/cluster/decommission"): {"summary": "Stream this node's partitions to their next owners, then leave the ring",
                                           "ok": "RingResponse", "errors": (400,) + _STORAGE},
    ("POST", "/v1/cluster/remove"): {"summary": "Take a dead node out of the ring; the survivors re-replicate its data", "body": "NodeRef",
                                     "ok": "RingResponse", "errors": _BODY_ERRORS + (404,) + _STORAGE},
    ("POST", "/v1/cluster/snapshots"): {"summary": "Start a consistent snapshot of this node's data under its data directory (one at a time)",
                                        "body": "SnapshotCreate", "ok": "SnapshotJob", "status": 202, "errors": _BODY_ERRORS + (409, 507) + _STORAGE},
    ("GET", "/v1/cluster/snapshots/{name}"): {"summary": "A snapshot's progress (partitions, bytes) and outcome", "ok": "SnapshotJob",
                                              "errors": (400, 404) + _STORAGE,
                                              "params": [{"name": "name", "in": "path", "required": True,
                                                          "schema": _string(64, pattern=NAME_PATTERN)}]},
    ("GET", "/v1/models"): {"summary": "Generator models live in the cluster (OpenAI-compatible)", "ok": "ModelList", "errors": ()},
    ("GET", "/v1/models/{model}"): {"summary": "One model", "ok": "Model", "errors": (404,),
                                    "params": [{"name": "model", "in": "path", "required": True, "schema": _string()}]},
    ("POST", "/v1/chat/completions"): {"summary": "OpenAI chat completions grounded in the cluster, with sources and citations",
                                       "body": "ChatRequest", "ok": "ChatCompletion", "stream": True, "params": [_RETRIEVAL],
                                       "errors": _BODY_ERRORS + (404,) + _STORAGE + (502,)},
    ("GET", "/v1/cluster/api-keys"): {"summary": "The cluster's API keys (never their tokens)", "ok": "ApiKeyList", "errors": ()},
    ("POST", "/v1/cluster/api-keys"): {"summary": "Create an API key; its token is in this answer only", "body": "ApiKeyCreate",
                                       "ok": "NewApiKey", "status": 201, "errors": _BODY_ERRORS},
    ("DELETE", "/v1/cluster/api-keys/{key_id}"): {"summary": "Revoke an API key", "ok": "ApiKey", "errors": (404,),
                                                  "params": [{"name": "key_id", "in": "path", "required": True, "schema": _string()}]},
    ("GET", "/health"): {"summary": "Liveness: the process answers", "ok": _obj({"status": {"const": "ok"}}, ("status",)), "errors": ()},
    ("GET", "/ready"): {"summary": "Readiness: 503 until storage, the embedder (and a generator role's model) are loaded",
                        "ok": _obj({"ready": {"type": "boolean"}, "components": {"type": "object", "additionalProperties": {"type": "boolean"}}},
                                   ("ready", "components")), "also_503": True, "errors": ()},
    ("GET", "/metrics"): {"summary": "Prometheus metrics (text exposition format)", "ok": "text/plain", "errors": ()},
    ("GET", "/openapi.json"): {"summary": "This document", "ok": {"type": "object"}, "errors": ()},
    ("GET", "/"): {"summary": "The status page (HTML; it reads /v1/cluster and /v1/cluster/latency every 2 s)",
                   "ok": "text/html", "errors": (429, 504)},
    ("GET", "/status/app.js"): {"summary": "The status page's script", "ok": "text/javascript", "errors": (429, 504)},
    ("GET", "/status/style.css"): {"summary": "The status page's style sheet", "ok": "text/css", "errors": (429, 504)},
    ("GET", "/v1/cluster/latency"): {"summary": "Latencies of the requests this node coordinated: p50, p99 and counts per route "
                                                "class (search, ingest, ask, read) per 5 s over the last 5 minutes",
                                     "ok": "LatencyHistory", "errors": ()},
}


def _response(schema: Any, description: str) -> dict[str, Any]:
    if isinstance(schema, str) and "/" in schema:  # a media type (text/plain, text/html...), not a schema's name
        return {"description": description, "content": {schema: {"schema": {"type": "string"}}}}
    resolved = _ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {JSON: {"schema": resolved}, MSGPACK: {"schema": resolved}}}


def _operation(method: str, route: str, spec: dict[str, Any], keys_enforced: bool) -> dict[str, Any]:
    scope = ROUTE_SCOPES[(method, route)]
    ok = _response(spec["ok"], "Success")
    if spec.get("stream"):
        ok["content"][SSE] = {"schema": {"type": "string", "description": "Server-sent events, with stream: true"}}
    responses: dict[str, Any] = {str(spec.get("status", 200)): ok}
    codes = set(spec["errors"])
    if scope != OPEN:
        codes |= set(_CLIENT)
    if "{" in route:
        codes.add(404)  # also a path value the route's pattern does not match (a newline in an id)
    for code in sorted(codes):
        responses[str(code)] = _response("Error", _ERROR_TEXT[code])
    if spec.get("also_503"):
        responses["503"] = _response(spec["ok"], "Not ready yet")
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()}{route.replace('/', '_').replace('{', '').replace('}', '').replace('.', '_').replace('-', '_')}",
        "summary": spec["summary"], "responses": responses, "x-meshrag-scope": scope or "open",
    }
    if scope == OPEN:
        operation["security"] = []
    else:
        # With api.keys off (this node) no key is needed: the empty requirement says so.
        operation["security"] = [{"bearer": [scope]}] if keys_enforced else [{"bearer": [scope]}, {}]
    if spec.get("params"):
        operation["parameters"] = spec["params"]
    if spec.get("body"):
        body_schema = _ref(spec["body"])
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body_schema}, MSGPACK: {"schema": body_schema}}}
    return operation


def document(config: Config, dim: int | None = None) -> dict[str, Any]:
    """The OpenAPI document for a node with ``config`` (``dim``: its vectors' length, once known)."""
    missing = set(ROUTE_SCOPES) - set(OPERATIONS)
    if missing:
        raise RuntimeError(f"routes with a scope but no OpenAPI operation: {sorted(missing)}")
    keys_enforced = bool(getattr(config.api, "keys", False))
    paths: dict[str, dict[str, Any]] = {}
    for (method, route), spec in OPERATIONS.items():
        paths.setdefault(route, {})[method.lower()] = _operation(method, route, spec, keys_enforced)
    api = config.api
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MeshRAG public API", "version": "1",
            "description": (
                "Any node answers every route. Bodies are JSON or msgpack (Content-Type), answers follow Accept. "
                f"Limits of this node: body {api.max_body_bytes} bytes, nesting {MAX_BODY_DEPTH} levels, "
                f"{api.max_documents_per_request} documents per upsert, text {api.max_text_chars} characters, k <= {api.max_k}, "
                f"filters {MAX_DEPTH} levels deep; {api.max_concurrent_per_client or 'unlimited'} requests in flight per client "
                f"(429 + Retry-After beyond); deadlines read {api.read_deadline_s:g} s, write {api.write_deadline_s:g} s, "
                f"generation {api.generate_deadline_s:g} s to the first byte (504). Integers are signed 64-bit, strings valid "
                "UTF-8 without NUL. Errors: {\"error\": {\"code\", \"message\", \"field\"}}. API keys (Authorization: Bearer) "
                "with scopes read, write, admin, status (admin implies status) are enforced when api.keys is on"
                + (" (it is on this node)." if keys_enforced else " (it is off on this node).")
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas(config, dim),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key (meshrag apikeys); the scope each route needs is in its security requirement"}},
        },
    }
