"""Fuzzed request bodies for the public API: what scripts/fuzz_api.py sends 100,000 of, and
tests/api/test_fuzz_api.py a few thousand.

Three families, each seeded (``random.Random``) so a run can be repeated:

* ``broken``: a valid body with one mutation that breaks exactly one rule of api/schema.py,
  openai_schema.py, store/filters.py or wire.py (a wrong type, a value out of range, an unknown
  field, NUL or a lone surrogate, nesting past the limit, a body too large, a wrong Content-Type,
  invalid bytes...). Every one must be answered with a 4xx, and nothing stored.
* ``bytes``: random bytes, or a valid body truncated or with bytes flipped. 4xx, nothing stored.
* ``tree``: random JSON/msgpack trees over the API's own field names. Almost always invalid;
  one that happens to be valid may be answered 2xx (the harness counts those apart).

Nothing here talks to a node: :class:`Fuzzer` yields :class:`Body` values.
"""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import msgpack

JSON = "application/json"
MSGPACK = "application/msgpack"
INT64_MAX = 2**63 - 1

# Routes that take a body, and the ones without one (fuzzed through their path or query).
BODY_ROUTES = ("/v1/documents", "/v1/search", "/v1/ask", "/v1/chat/completions", "/v1/cluster/remove", "/v1/cluster/api-keys")
STORING_ROUTES = frozenset({"/v1/documents", "/v1/cluster/remove", "/v1/cluster/api-keys"})
VOCABULARY = (
    "documents", "id", "text", "metadata", "vector", "consistency", "session", "query", "k", "mode", "filter",
    "timeout_ms", "require_full_coverage", "stream", "max_tokens", "model", "messages", "role", "content", "stop",
    "temperature", "retrieval", "n", "tools", "node", "name", "scopes", "$and", "$or", "$eq", "$ne", "$in", "$nin",
    "$gt", "$gte", "$lt", "$lte", "type", "stream_options", "include_usage",
)
NASTY_STRINGS = ("", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "\u202e", "\n", "é" * 3, "🦀", "$", "a.b", "..", "%00", "\\")
NASTY_NUMBERS = (0, -1, 1, 2**31, 2**53 + 1, INT64_MAX, INT64_MAX + 1, -(2**63) - 1, 2**64, 10**30, 1.5, -0.0, 1e308,
                 math.inf, -math.inf, math.nan)


@dataclass(frozen=True)
class Limits:
    """The limits of the node under test (its ApiConfig and the cluster's vector length)."""

    max_documents: int
    max_text_chars: int
    max_k: int
    max_body_bytes: int
    max_tokens: int
    dim: int


@dataclass(frozen=True)
class Body:
    method: str
    path: str
    content_type: str
    data: bytes
    family: str  # broken | bytes | tree
    what: str  # the mutation, for the report
    must_fail: bool  # broken and bytes: a 2xx is a finding


def _json(value: Any) -> bytes:
    # allow_nan: NaN and Infinity are what Python's json reads too; a lone surrogate goes out as \ud800.
    return json.dumps(value, allow_nan=True).encode()


def _pack(value: Any) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError, TypeError, UnicodeEncodeError):
        return None  # msgpack cannot say it (an integer past 64 bits, a lone surrogate): JSON only


def valid_bodies(limits: Limits, rng: random.Random) -> dict[str, Any]:
    vector = [rng.uniform(-1, 1) for _ in range(limits.dim)]
    return {
        "/v1/documents": {"documents": [
            {"id": f"doc-{rng.randrange(1000)}", "text": "The kiln cools for twelve hours.", "metadata": {"year": 2024, "tags": ["a", "b"]}},
            {"text": "Satellites circle the earth.", "vector": vector},
        ], "consistency": "quorum"},
        "/v1/search": {"query": "how long does a kiln cool", "k": 5, "mode": "hybrid",
                       "filter": {"$and": [{"year": {"$gte": 2000}}, {"tags": {"$nin": ["x"]}}]}, "timeout_ms": 1000},
        "/v1/ask": {"query": "why does the kiln cool slowly?", "k": 3, "max_tokens": 8, "stream": False, "filter": {"year": 2024}},
        "/v1/chat/completions": {"model": "any", "messages": [{"role": "system", "content": "Be brief."},
                                                               {"role": "user", "content": [{"type": "text", "text": "What cools?"}]}],
                                 "max_tokens": 8, "temperature": 0.5, "stop": ["\n\n"], "k": 2, "retrieval": True},
        "/v1/cluster/remove": {"node": "nobody-here"},
        "/v1/cluster/api-keys": {"name": "fuzz", "scopes": ["read"]},
    }


def _deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def _deep_filter(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"x": 1}
    for _ in range(depth - 1):
        value = {"$and": [value]}
    return value


Mutation = Callable[[dict[str, Any], Limits, random.Random], tuple[Any, str]]


def _set(path: tuple[Any, ...], value: Any, what: str) -> Mutation:
    """Set ``body[path...]`` to ``value``."""
    def mutate(body: dict[str, Any], limits: Limits, rng: random.Random) -> tuple[Any, str]:
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(limits, rng) if callable(value) else value
        return body, what
    return mutate


def _drop(key: str, what: str) -> Mutation:
    def mutate(body: dict[str, Any], limits: Limits, rng: random.Random) -> tuple[Any, str]:
        body.pop(key, None)
        return body, what
    return mutate


def _replace(value: Any, what: str) -> Mutation:
    return lambda body, limits, rng: (value(limits, rng) if callable(value) else value, what)


def _duplicate_id(body: dict[str, Any], limits: Limits, rng: random.Random) -> tuple[Any, str]:
    body["documents"][1]["id"] = body["documents"][0]["id"]
    return body, "duplicate id"


def _bm25_without_query(body: dict[str, Any], limits: Limits, rng: random.Random) -> tuple[Any, str]:
    del body["query"]
    body.update(vector=[1.0] * limits.dim, mode=rng.choice(["bm25", "hybrid"]))
    return body, "bm25 or hybrid without a query"


_COMMON: list[Mutation] = [
    _replace([], "top-level array"), _replace(42, "top-level number"), _replace("documents", "top-level string"),
    _replace(None, "top-level null"),
    _set(("unknown_field",), 1, "unknown field"),
    _set(("deep",), lambda limits, rng: _deep(rng.randrange(33, 200)), "nesting past 32 levels"),
]

MUTATIONS: dict[str, list[Mutation]] = {
    "/v1/documents": [
        _drop("documents", "documents missing"), _set(("documents",), [], "no documents"),
        _set(("documents",), {"text": "x"}, "documents an object"),
        _set(("documents",), lambda limits, rng: [{"text": "x"}] * (limits.max_documents + 1), "too many documents"),
        _set(("documents", 0, "text"), lambda limits, rng: "y" * (limits.max_text_chars + 1), "text too long"),
        _set(("documents", 0, "text"), lambda limits, rng: rng.choice(["", "   ", "\n\t"]), "blank text"),
        _set(("documents", 0, "text"), lambda limits, rng: "abc\x00def", "NUL in text"),
        _set(("documents", 0, "text"), lambda limits, rng: "abc\ud800def", "lone surrogate in text"),
        _set(("documents", 0, "text"), lambda limits, rng: rng.choice([1, None, [], {}, True]), "text of another type"),
        _set(("documents", 0, "id"), lambda limits, rng: "x" * 513, "id too long"),
        _set(("documents", 0, "id"), lambda limits, rng: "a\x01b", "control character in id"),
        _set(("documents", 0, "id"), lambda limits, rng: rng.choice([1, [], {}]), "id of another type"),
        _duplicate_id,
        _set(("documents", 0, "metadata"), lambda limits, rng: {"n": rng.choice([INT64_MAX + 1, -(2**63) - 1, 2**64])}, "metadata integer past 64 bits"),
        _set(("documents", 0, "metadata"), lambda limits, rng: {"n": rng.choice([math.nan, math.inf])}, "metadata NaN/Infinity"),
        _set(("documents", 0, "metadata"), lambda limits, rng: _deep(rng.randrange(10, 30)), "metadata deeper than 8"),
        _set(("documents", 0, "metadata"), lambda limits, rng: {"": 1}, "metadata empty key"),
        _set(("documents", 0, "metadata"), lambda limits, rng: {f"k{i}": i for i in range(257)}, "metadata with 257 keys"),
        _set(("documents", 0, "metadata"), lambda limits, rng: {"s": "x\ud800"}, "metadata lone surrogate"),
        _set(("documents", 0, "metadata"), lambda limits, rng: rng.choice([[1], "x", 3]), "metadata not an object"),
        _set(("documents", 1, "vector"), lambda limits, rng: [1.0] * (limits.dim + rng.choice([-1, 1])), "vector of another length"),
        _set(("documents", 1, "vector"), lambda limits, rng: [0.0] * limits.dim, "zero vector"),
        _set(("documents", 1, "vector"), lambda limits, rng: [rng.choice([math.inf, math.nan, 1e39, "1", None, True])] * limits.dim, "vector with a non-float32"),
        _set(("documents", 0, "unknown"), 1, "unknown document field"),
        _set(("consistency",), lambda limits, rng: rng.choice(["two", "", 3, None]), "bad consistency"),
        _set(("session",), lambda limits, rng: rng.choice([1, [], {}, "a\x00"]), "bad session"),
    ],
    "/v1/search": [
        _drop("query", "neither query nor vector"), _set(("vector",), lambda limits, rng: [1.0] * limits.dim, "both query and vector"),
        _set(("k",), lambda limits, rng: rng.choice([0, -1, limits.max_k + 1, INT64_MAX, 2**64, 1.5, "5", True, None]), "k out of range or not an integer"),
        _set(("mode",), lambda limits, rng: rng.choice(["sparse", "", 1, None]), "bad mode"),
        _set(("timeout_ms",), lambda limits, rng: rng.choice([0, 9, 60001, -5, 2.5, "1"]), "timeout_ms out of range"),
        _set(("require_full_coverage",), lambda limits, rng: rng.choice([1, "true", []]), "require_full_coverage not a boolean"),
        _set(("consistency",), "one", "consistency on a search"),
        _set(("query",), lambda limits, rng: "q" * (limits.max_text_chars + 1), "query too long"),
        _set(("query",), lambda limits, rng: rng.choice(["", "  ", "a\x00", "\udc00"]), "blank, NUL or surrogate query"),
        _set(("filter",), lambda limits, rng: _deep_filter(rng.randrange(9, 40)), "filter deeper than 8"),
        _set(("filter",), lambda limits, rng: {"year": {rng.choice(["$regex", "$exists", "gt", "$where"]): 1}}, "unknown filter operator"),
        _set(("filter",), lambda limits, rng: {rng.choice(["$not", "$nor", "$text"]): [{"a": 1}]}, "unknown logical operator"),
        _set(("filter",), lambda limits, rng: {rng.choice(["", "a..b", "a b", "ä", "x" * 300]): 1}, "bad field name"),
        _set(("filter",), lambda limits, rng: {"n": rng.choice([INT64_MAX + 1, math.nan, math.inf, [1], "a\x00"])}, "bad filter value"),
        _set(("filter",), lambda limits, rng: {"n": {"$in": rng.choice([[], list(range(1025)), 5])}}, "bad $in list"),
        _set(("filter",), lambda limits, rng: {"n": {"$gt": rng.choice([None, True, [1], {}])}}, "bad range operand"),
        _set(("filter",), lambda limits, rng: {"$and": rng.choice([[], {}, [1], "x"])}, "bad $and"),
        _set(("filter",), lambda limits, rng: rng.choice([[1], "x", 3]), "filter not an object"),
        _set(("vector",), lambda limits, rng: [1.0] * (limits.dim + 1), "vector of another length"),
        _set(("session",), 5, "session not a string"), _bm25_without_query,
    ],
    "/v1/ask": [
        _drop("query", "no query"), _set(("query",), lambda limits, rng: "q" * 8193, "query too long"),
        _set(("k",), lambda limits, rng: rng.choice([0, 101, -3, "2", None]), "k out of range"),
        _set(("max_tokens",), lambda limits, rng: rng.choice([0, limits.max_tokens + 1, -1, 2**64]), "max_tokens out of range"),
        _set(("stream",), lambda limits, rng: rng.choice(["yes", 1, None]), "stream not a boolean"),
        _set(("filter",), lambda limits, rng: _deep_filter(rng.randrange(9, 20)), "filter deeper than 8"),
        _set(("mode",), "dense", "unknown field mode"),
    ],
    "/v1/chat/completions": [
        _drop("messages", "no messages"), _set(("messages",), [], "empty messages"),
        _set(("messages",), lambda limits, rng: [{"role": "user", "content": "x"}] * 513, "513 messages"),
        _set(("messages", 0, "role"), lambda limits, rng: rng.choice(["tool", "function", "robot", 1, None]), "bad role"),
        _set(("messages", 0, "content"), lambda limits, rng: rng.choice([None, 1, {"text": "x"}, [{"type": "image_url"}], "a\x00"]), "bad content"),
        _set(("messages", 0, "tool_calls"), [{"id": "x"}], "tool calls in a message"),
        _set(("n",), lambda limits, rng: rng.choice([2, 0, True, "1"]), "n other than 1"),
        _set(("tools",), [{"type": "function"}], "tools"), _set(("logprobs",), True, "logprobs"),
        _set(("response_format",), {"type": "json_object"}, "JSON mode"),
        _set(("temperature",), lambda limits, rng: rng.choice([-0.1, 2.5, math.nan, "1", True]), "temperature out of range"),
        _set(("top_p",), lambda limits, rng: rng.choice([1.5, -1, "x", math.inf]), "top_p out of range"),
        _set(("stop",), lambda limits, rng: rng.choice([["a"] * 5, [""], ["x" * 257], [1], 5]), "bad stop"),
        _set(("max_tokens",), lambda limits, rng: rng.choice([0, -1, 2**31 + 1, "8"]), "max_tokens out of range"),
        _set(("max_completion_tokens",), 9, "max_tokens and max_completion_tokens differ"),
        _set(("retreival",), False, "misspelt field"), _set(("model",), lambda limits, rng: rng.choice(["", "  ", 1]), "bad model"),
        _set(("stream_options",), lambda limits, rng: rng.choice([{"x": 1}, {"include_usage": "yes"}, 5]), "bad stream_options"),
        _set(("k",), 0, "k out of range"),
    ],
    "/v1/cluster/remove": [
        _drop("node", "no node"), _set(("node",), lambda limits, rng: rng.choice(["", " ", 1, None, "n" * 129, "a\x00"]), "bad node"),
    ],
    "/v1/cluster/api-keys": [
        _drop("name", "no name"), _set(("name",), lambda limits, rng: rng.choice(["", "n" * 129, 1, None]), "bad name"),
        _set(("scopes",), lambda limits, rng: rng.choice([[], ["root"], "read", [1], None]), "bad scopes"),
    ],
}


def _random_tree(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.35:
        choice = rng.randrange(6)
        if choice == 0:
            return rng.choice(NASTY_STRINGS + VOCABULARY)
        if choice == 1:
            return rng.choice(NASTY_NUMBERS)
        if choice == 2:
            return rng.choice([None, True, False])
        if choice == 3:
            return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
        if choice == 4:
            return rng.randrange(-5, 2000)
        return rng.random()
    if roll < 0.7:
        return {rng.choice(VOCABULARY) if rng.random() < 0.8 else rng.choice(NASTY_STRINGS): _random_tree(rng, depth + 1)
                for _ in range(rng.randrange(5))}
    return [_random_tree(rng, depth + 1) for _ in range(rng.randrange(5))]


class Fuzzer:
    def __init__(self, limits: Limits, seed: int = 0) -> None:
        self.limits = limits
        self.rng = random.Random(seed)

    def bodies(self, count: int) -> Iterator[Body]:
        for _ in range(count):
            yield self.one()

    def one(self) -> Body:
        rng = self.rng
        path = rng.choice(BODY_ROUTES)
        roll = rng.random()
        if roll < 0.7:
            return self._broken(path)
        if roll < 0.85:
            return self._bytes(path)
        tree = _random_tree(rng)
        if rng.random() < 0.5 and isinstance(tree, dict):
            tree.update({k: v for k, v in valid_bodies(self.limits, rng)[path].items() if rng.random() < 0.5})
        return self._encode(path, tree, "tree", "random tree", must_fail=False)

    def _encode(self, path: str, value: Any, family: str, what: str, must_fail: bool) -> Body:
        packed = _pack(value) if self.rng.random() < 0.3 else None
        if packed is not None:
            return Body("POST", path, MSGPACK, packed, family, what, must_fail)
        return Body("POST", path, JSON, _json(value), family, what, must_fail)

    def _broken(self, path: str) -> Body:
        rng = self.rng
        body = copy.deepcopy(valid_bodies(self.limits, rng)[path])
        if rng.random() < 0.1:
            return self._transport(path, body)
        mutation = rng.choice(MUTATIONS[path] + _COMMON)
        value, what = mutation(body, self.limits, rng)
        return self._encode(path, value, "broken", what, must_fail=True)

    def _transport(self, path: str, body: Any) -> Body:
        """Breakage below the schema: the Content-Type, the size, the encoding itself."""
        rng = self.rng
        raw = _json(body)
        choice = rng.randrange(6)
        if choice == 0:
            return Body("POST", path, rng.choice(["text/plain", "application/xml", "multipart/form-data", "application/jsonx"]), raw,
                        "broken", "wrong Content-Type", True)
        if choice == 1:
            pad = b" " * (self.limits.max_body_bytes + 1 - len(raw))
            return Body("POST", path, JSON, raw[:-1] + pad + raw[-1:], "broken", "body over api.max_body_bytes", True)
        if choice == 2:
            return Body("POST", path, JSON, raw.replace(b'"', b"'", 1), "broken", "not JSON", True)
        if choice == 3:
            return Body("POST", path, JSON, raw.replace(b"a", b"\xff", 1) if b"a" in raw else b"\xff", "broken", "invalid UTF-8", True)
        if choice == 4:
            return Body("POST", path, MSGPACK, msgpack.packb({"documents": msgpack.ExtType(rng.choice([1, 7, 42]), rng.randbytes(9))}),
                        "broken", "msgpack extension where a value belongs", True)
        return Body("POST", path, MSGPACK, msgpack.packb({1: "x", "k": 1}), "broken", "msgpack integer map key", True)

    def _bytes(self, path: str) -> Body:
        rng = self.rng
        content_type = rng.choice([JSON, MSGPACK])
        roll = rng.random()
        if roll < 0.4:
            return Body("POST", path, content_type, rng.randbytes(rng.randrange(64)), "bytes", "random bytes", True)
        valid = valid_bodies(self.limits, rng)[path]
        raw = _json(valid) if content_type == JSON else msgpack.packb(valid, use_bin_type=True)
        if roll < 0.7:
            return Body("POST", path, content_type, raw[: rng.randrange(len(raw))], "bytes", "truncated", True)
        data = bytearray(raw)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        # A flipped byte may still leave a valid body (a letter in a text): not a must-fail.
        return Body("POST", path, content_type, bytes(data), "bytes", "bytes flipped", False)
