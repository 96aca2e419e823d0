"""api/public.py over real HTTP against a real node: contract shapes and bad input."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import msgpack
import pytest

from meshrag.localnode import LocalNode

pytestmark = pytest.mark.slow


def call(node: LocalNode, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         content_type: str = "application/json", accept: str = "application/json") -> tuple[int, Any, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(node.url + path, data=data, method=method, headers={"Content-Type": content_type, "Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
            status, headers = response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        payload, status, headers = err.read(), err.code, dict(err.headers)
    if headers.get("Content-Type", "").startswith("application/msgpack"):
        return status, msgpack.unpackb(payload), headers
    try:
        return status, json.loads(payload), headers
    except ValueError:
        return status, payload.decode(errors="replace"), headers


def upsert(node: LocalNode, *documents: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = call(node, "POST", "/v1/documents", {"documents": list(documents)})
    assert status == 200, body
    return body


def test_upsert_get_delete_roundtrip(node: LocalNode) -> None:
    text = "The gyroscope drifts two degrees per hour.\n\nCalibration fixes the drift."
    result = upsert(node, {"id": "gyro", "text": text, "metadata": {"kind": "note", "year": 2024}})
    assert result["results"][0]["id"] == "gyro" and result["results"][0]["status"] == "created"
    status, doc, _ = call(node, "GET", "/v1/documents/gyro")
    assert status == 200
    assert doc["text"] == text and doc["metadata"] == {"kind": "note", "year": 2024}
    assert doc["version"] == result["results"][0]["version"] and doc["chunks"]
    status, deleted, _ = call(node, "DELETE", "/v1/documents/gyro")
    assert status == 200 and deleted["status"] == "deleted" and deleted["version"] > doc["version"]
    status, body, _ = call(node, "GET", "/v1/documents/gyro")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_same_content_is_unchanged_and_new_content_updates(node: LocalNode) -> None:
    first = upsert(node, {"id": "idem", "text": "Alpha beta gamma."})["results"][0]
    again = upsert(node, {"id": "idem", "text": "Alpha beta gamma."})["results"][0]
    assert again["status"] == "unchanged" and again["version"] == first["version"]
    changed = upsert(node, {"id": "idem", "text": "Alpha beta delta."})["results"][0]
    assert changed["status"] == "updated" and changed["version"] > first["version"]


def test_dense_bm25_and_hybrid_find_the_relevant_document(node: LocalNode) -> None:
    upsert(
        node,
        {"id": "kiln", "text": "The pottery kiln must cool for twelve hours before it is opened.", "metadata": {"topic": "ceramics"}},
        {"id": "orbit", "text": "Satellites in low orbit circle the earth every ninety minutes.", "metadata": {"topic": "space"}},
    )
    for mode in ("dense", "bm25", "hybrid"):
        status, body, _ = call(node, "POST", "/v1/search", {"query": "how long does a kiln need to cool down", "k": 3, "mode": mode})
        assert status == 200, body
        assert body["hits"][0]["doc_id"] == "kiln", (mode, body["hits"])
        assert body["coverage"] == 1.0 and body["missing_partitions"] == []
        assert set(body["hits"][0]) == {"chunk_id", "doc_id", "score", "text", "metadata"}


def test_metadata_filter_restricts_hits(node: LocalNode) -> None:
    upsert(node, *({"id": f"f{i}", "text": f"Filter probe document number {i} about rivers.", "metadata": {"n": i, "tag": "even" if i % 2 == 0 else "odd"}} for i in range(10)))
    flt = {"$and": [{"tag": "even"}, {"n": {"$gte": 4, "$lt": 9}}]}
    status, body, _ = call(node, "POST", "/v1/search", {"query": "rivers", "k": 10, "filter": flt})
    assert status == 200
    assert sorted(h["doc_id"] for h in body["hits"]) == ["f4", "f6", "f8"]


def _chunks_embedded(node: LocalNode) -> float:
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("meshrag_chunks_embedded_total "))


def test_a_document_that_brings_its_vector_is_not_embedded(node: LocalNode) -> None:
    before = _chunks_embedded(node)
    vector = [0.0] * 384
    vector[11] = 1.0
    upsert(node, {"id": "own-vector", "text": "a text the node must not embed", "vector": vector})
    assert _chunks_embedded(node) == before


def test_precomputed_vector_document_is_searchable_by_vector(node: LocalNode) -> None:
    vector = [0.0] * 384
    vector[7] = 1.0
    upsert(node, {"id": "vec", "text": "a hand-made vector", "vector": vector})
    status, body, _ = call(node, "POST", "/v1/search", {"vector": vector, "k": 1})
    assert status == 200 and body["hits"][0]["doc_id"] == "vec"
    assert body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_msgpack_request_and_response(node: LocalNode) -> None:
    raw = msgpack.packb({"documents": [{"id": "mp", "text": "Packed with msgpack."}]})
    status, body, headers = call(node, "POST", "/v1/documents", raw=raw, content_type="application/msgpack", accept="application/msgpack")
    assert status == 200 and headers["Content-Type"].startswith("application/msgpack")
    assert body["results"][0]["id"] == "mp"


@pytest.mark.parametrize(
    "path,raw,status,code,field",
    [
        ("/v1/documents", b"{not json", 400, "invalid_request", "body"),
        ("/v1/documents", b'{"documents": [{"text": ""}]}', 400, "invalid_request", "documents[0].text"),
        ("/v1/documents", b'{"documents": [{"text": "x", "vector": [1, 2]}]}', 400, "invalid_request", "documents[0].vector"),
        ("/v1/documents", b'{"documents": [{"text": "x"}], "extra": 1}', 400, "invalid_request", "extra"),
        ("/v1/search", b'{"query": "x", "k": 100000}', 400, "invalid_request", "k"),
        ("/v1/search", b'{"query": "x", "filter": {"a": {"$regex": "."}}}', 400, "invalid_request", "filter.a.$regex"),
        ("/v1/ask", b'{"query": 3}', 400, "invalid_request", "query"),
    ],
)
def test_bad_input_gets_4xx_with_field(node: LocalNode, path: str, raw: bytes, status: int, code: str, field: str) -> None:
    got_status, body, _ = call(node, "POST", path, raw=raw)
    assert got_status == status
    assert body["error"]["code"] == code and body["error"]["field"] == field and body["error"]["message"]


def _doc(**fields: Any) -> bytes:
    """A JSON upsert of one document; escapes such as \ud800 stay escapes on the wire."""
    return json.dumps({"documents": [{"text": "hostile", **fields}]}).encode()


def _packed(**fields: Any) -> bytes:
    return msgpack.packb({"documents": [{"text": "hostile", **fields}]}, use_bin_type=True)


def _deep(depth: int, opening: bytes, closing: bytes, inner: bytes) -> bytes:
    return opening * depth + inner + closing * depth


MSGPACK = "application/msgpack"
JSON = "application/json"


@pytest.mark.parametrize(
    "path,raw,content_type,field",
    [
        # Deeper than Python's recursion limit: the JSON decoder itself gives up.
        ("/v1/documents", b'{"documents": [{"text": "x", "metadata": {"a": ' + _deep(5000, b"[", b"]", b"1") + b"}}]}", JSON, "body"),
        ("/v1/search", b'{"query": "x", "filter": ' + _deep(5000, b'{"$and": [', b"]}", b'{"a": 1}') + b"}", JSON, "body"),
        # msgpack decodes up to 1024 levels; an error message quoting the value must not recurse into it.
        ("/v1/search", b"\x82" + msgpack.packb("query") + msgpack.packb("x") + msgpack.packb("mode") + _deep(1000, b"\x91", b"", b"\x01"),
         MSGPACK, "body"),
        ("/v1/documents", _doc(id="id-\ud800"), JSON, "documents[0].id"),
        ("/v1/documents", _doc(text="lone \udfff surrogate"), JSON, "documents[0].text"),
        ("/v1/documents", _doc(metadata={"\ud800key": 1}), JSON, "documents[0].metadata.\\ud800key"),
        ("/v1/documents", _doc(metadata={"tags": ["ok", "\ud83d"]}), JSON, "documents[0].metadata.tags[1]"),
        ("/v1/documents", _doc(metadata={"n": 2**64}), JSON, "documents[0].metadata.n"),
        ("/v1/documents", _doc(metadata={"n": -(2**63) - 1}), JSON, "documents[0].metadata.n"),
        ("/v1/documents", _packed(metadata={"n": 2**64 - 1}), MSGPACK, "documents[0].metadata.n"),
        ("/v1/documents", b'{"documents": [{"text": "x", "metadata": {"n": ' + b"9" * 5000 + b"}}]}", JSON, "body"),
        ("/v1/documents", _packed(metadata={"b": b"\x00raw"}), MSGPACK, "documents[0].metadata.b"),
        ("/v1/documents", _packed(metadata={"e": msgpack.ExtType(42, b"x")}), MSGPACK, "documents[0].metadata.e"),
        ("/v1/documents", _packed(vector=msgpack.ExtType(1, b"")), MSGPACK, "body"),
        ("/v1/documents", _doc(vector=[1e39] + [0.0] * 383), JSON, "documents[0].vector"),
        ("/v1/search", json.dumps({"query": "x\ud800"}).encode(), JSON, "query"),
        ("/v1/search", json.dumps({"query": "x", "filter": {"tag": {"$in": ["a", "\udc00"]}}}).encode(), JSON, "filter.tag.$in[1]"),
        ("/v1/ask", json.dumps({"query": "x", "session": "\ud800"}).encode(), JSON, "session"),
    ],
)
def test_hostile_bodies_get_400_naming_the_field(node: LocalNode, path: str, raw: bytes, content_type: str, field: str) -> None:
    status, body, _ = call(node, "POST", path, raw=raw, content_type=content_type)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request" and body["error"]["field"] == field and body["error"]["message"]


def test_signed_64_bit_bounds_in_metadata_are_stored_exactly(node: LocalNode) -> None:
    metadata = {"low": -(2**63), "high": 2**63 - 1}
    upsert(node, {"id": "int64-bounds", "text": "The widest integers every replica can carry.", "metadata": metadata})
    status, doc, _ = call(node, "GET", "/v1/documents/int64-bounds")
    assert status == 200 and doc["metadata"] == metadata


def test_wrong_content_type_unknown_route_and_wrong_method(node: LocalNode) -> None:
    status, body, _ = call(node, "POST", "/v1/search", raw=b"query=x", content_type="application/x-www-form-urlencoded")
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    status, body, _ = call(node, "GET", "/v1/nowhere")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = call(node, "PUT", "/v1/search", {"query": "x"})
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


def test_oversized_body_is_413_and_node_keeps_serving(node: LocalNode) -> None:
    huge = b'{"documents": [{"text": "' + b"a" * (17 * 1024 * 1024) + b'"}]}'
    try:
        status, body, _ = call(node, "POST", "/v1/documents", raw=huge)
        assert status == 413 and body["error"]["code"] == "payload_too_large"
    except (ConnectionError, urllib.error.URLError):
        pass  # the server may close the socket before reading the whole body; both are a refusal
    assert call(node, "GET", "/health")[0] == 200
    assert upsert(node, {"id": "after-413", "text": "still serving"})["results"][0]["status"] in ("created", "unchanged")


def test_ask_answers_with_sources_and_timings(node: LocalNode) -> None:
    upsert(node, {"id": "zarn", "text": "The capital of Zarnovia is Quillport, a harbour city on the north coast."})
    status, body, _ = call(node, "POST", "/v1/ask", {"query": "What is the capital of Zarnovia?", "k": 2, "max_tokens": 24})
    assert status == 200, body
    assert body["answer"]
    assert body["sources"][0]["n"] == 1 and any(s["doc_id"] == "zarn" for s in body["sources"])
    assert body["timings"]["tokens"] > 0 and body["timings"]["first_token_ms"] <= body["timings"]["total_ms"]


def test_ask_stream_sends_sources_tokens_and_done(node: LocalNode) -> None:
    request = urllib.request.Request(node.url + "/v1/ask", data=json.dumps({"query": "capital of Zarnovia?", "stream": True, "max_tokens": 16}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    events = []
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response:
            if line.startswith(b"event: "):
                events.append(line[7:].strip().decode())
    assert events[0] == "sources" and events[-1] == "done"
    assert "token" in events[1:-1]


def test_abandoned_ask_stream_frees_the_generator(node: LocalNode) -> None:
    """A client that disconnects mid-answer must not keep the model busy."""
    def metric(name: str) -> float:
        text = urllib.request.urlopen(node.url + "/metrics", timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    cancelled_before = metric('meshrag_generations_total{outcome="cancelled"}')
    request = urllib.request.Request(node.url + "/v1/ask", data=json.dumps({"query": "Tell me everything about Zarnovia.", "stream": True, "max_tokens": 48}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    response = urllib.request.urlopen(request, timeout=120)
    for line in response:
        if line.startswith(b"event: token"):
            break
    response.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and metric('meshrag_generations_total{outcome="cancelled"}') <= cancelled_before:
        time.sleep(0.1)
    assert metric('meshrag_generations_total{outcome="cancelled"}') > cancelled_before


def test_health_ready_metrics_and_cluster(node: LocalNode) -> None:
    assert call(node, "GET", "/health")[:2] == (200, {"status": "ok"})
    status, ready, _ = call(node, "GET", "/ready")
    assert status == 200 and ready["ready"] is True
    status, view, _ = call(node, "GET", "/v1/cluster")
    assert status == 200 and view["node"]["name"] == "test-node"
    member = view["members"][0]
    assert {"name", "id", "address", "zone", "roles", "state", "incarnation"} <= set(member) and member["state"] == "alive"
    assert view["ring"]["partitions"] == 8
    text = urllib.request.urlopen(node.url + "/metrics", timeout=10).read().decode()
    assert "meshrag_http_requests_total" in text and "meshrag_ready 1.0" in text


def test_concurrent_requests_are_served_while_ingesting(node: LocalNode) -> None:
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            upsert(node, *({"id": f"c{i}-{j}", "text": f"Concurrent document {i}-{j} about turbine blades."} for j in range(8)))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    status, doc, _ = call(node, "GET", "/v1/documents/c5-7")
    assert status == 200 and "5-7" in doc["text"]
