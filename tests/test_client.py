"""client.py: the synchronous HTTP client, against a real node where one is needed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from meshrag.client import MeshClient, MeshClientError, parse_sse
from meshrag.localnode import LocalNode, free_port


def sse(text: str) -> list[bytes]:
    return [line.encode() + b"\n" for line in text.split("\n")]


def test_parse_sse_yields_named_events_with_json_data() -> None:
    stream = sse('event: sources\ndata: {"sources": []}\n\n: keep-alive\n\nevent: token\ndata: {"text": "Hi"}\n\nevent: done\ndata: {}\n')
    assert list(parse_sse(stream)) == [("sources", {"sources": []}), ("token", {"text": "Hi"}), ("done", {})]


def test_parse_sse_joins_multiline_data_and_defaults_the_event_name() -> None:
    stream = sse('data: {"a":\ndata: 1}\n\n')
    assert list(parse_sse(stream)) == [("message", {"a": 1})]


def test_unreachable_node_is_status_zero() -> None:
    client = MeshClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(MeshClientError) as caught:
        client.health()
    assert (caught.value.status, caught.value.code) == (0, "unreachable")
    assert "cannot reach node at http://127.0.0.1:" in caught.value.message
    assert client.ready() is False


def test_wait_ready_gives_up_after_its_timeout() -> None:
    client = MeshClient(f"http://127.0.0.1:{free_port()}", timeout=1)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not ready after 0.5 s"):
        client.wait_ready(0.5, poll_s=0.1)
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_documents_round_trip_with_ids_that_contain_slashes(node: LocalNode) -> None:
    client = MeshClient(node.url)
    doc_id = "client-test/notes/a b?.md"
    written = client.upsert([{"id": doc_id, "text": "The Vell ferry crosses the fjord at dawn.", "metadata": {"kind": "note"}}])
    assert written["results"][0]["id"] == doc_id
    stored = client.get_document(doc_id)
    assert (stored["id"], stored["metadata"], len(stored["chunks"])) == (doc_id, {"kind": "note"}, 1)
    assert client.delete_document(doc_id)["status"] == "deleted"
    with pytest.raises(MeshClientError) as caught:
        client.get_document(doc_id)
    assert (caught.value.status, caught.value.code) == (404, "not_found")


@pytest.mark.slow
def test_http_errors_carry_code_message_and_field(node: LocalNode) -> None:
    with pytest.raises(MeshClientError) as caught:
        MeshClient(node.url).upsert([{"id": "x", "text": ""}])
    error = caught.value
    assert (error.status, error.code, error.field) == (400, "invalid_request", "documents[0].text")
    assert "must not be empty" in error.message


@pytest.mark.slow
def test_search_by_text_and_by_numpy_vector(node: LocalNode) -> None:
    client = MeshClient(node.url)
    client.upsert([{"id": "client-test/kiln", "text": "The Morrow kiln fires porcelain at 1300 degrees."}])
    by_text = client.search("porcelain kiln temperature", k=3, mode="bm25")
    assert by_text["hits"][0]["doc_id"] == "client-test/kiln"
    vector = np.zeros(node_dim(client), dtype=np.float32)
    vector[0] = 1.0
    by_vector = client.search(vector=vector, k=2)
    assert len(by_vector["hits"]) <= 2 and by_vector["coverage"] == 1.0


def node_dim(client: MeshClient) -> int:
    return int(client.cluster()["embedder"]["dim"])


@pytest.mark.slow
def test_ask_stream_gives_sources_tokens_then_done(node: LocalNode) -> None:
    client = MeshClient(node.url)
    client.upsert([{"id": "client-test/bell", "text": "The Tarn Hall bell rings at noon every Sunday."}])
    events = list(client.ask_stream("When does the Tarn Hall bell ring?", k=2, max_tokens=8))
    names = [name for name, _ in events]
    assert names[0] == "sources" and names[-1] == "done"
    assert set(names[1:-1]) <= {"token"}
    assert any(s["doc_id"] == "client-test/bell" for s in events[0][1]["sources"])
