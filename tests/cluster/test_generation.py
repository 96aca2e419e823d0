"""Any node answers: real node processes, generators elsewhere, failover mid-stream.

One cluster for the module: n1 generates, n2 and n3 do not (storage and
coordination only); n4, a second generator, joins for the failover tests.
The default run keeps kill -9 mid-stream; the other failover scenarios are
behind `-m failover` (scripts/test.sh -m failover, about 4 minutes more). The
bundled gemma-3-270m answers greedily (generation.temperature 0), so an
answer cut by kill -9 or SIGSTOP and finished on the other generator can be
compared with the same question answered without a fault.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from meshrag.client import MeshClient, MeshClientError
from meshrag.localcluster import LocalCluster
from meshrag.localnode import LocalNode
from tests.cluster.conftest import running

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NON_GENERATOR = {"MESHRAG_NODE_ROLES": "storage,coordinator"}
# A question the small base model answers at length, and always the same way (greedy).
COUNTING = "Write the numbers from 1 to 300, separated by commas."
LONG_ANSWER_TOKENS = 64
DOME = "What limits the dome's operation in wind?"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {
        "MESHRAG_GENERATION_STALL_TIMEOUT_S": "3",  # a paused generator is noticed in 3 s
        "MESHRAG_GENERATION_BREAKER_OPEN_S": "2",
    }
    local = LocalCluster(tmp_path_factory.mktemp("generation"), partitions=8, replicas=2, env=env, extra_args=())
    yield from running(local, 3, node_env={"n2": NON_GENERATOR, "n3": NON_GENERATOR})


@pytest.fixture(scope="module")
def ingested(cluster: LocalCluster) -> LocalCluster:
    paths = sorted((REPO / "samples" / "corpus").rglob("*.md"))
    assert paths
    documents = [{"id": str(path.relative_to(REPO / "samples" / "corpus")), "text": path.read_text()} for path in paths]
    cluster.client(cluster.node("n2")).upsert(documents)
    return cluster


def generators_seen_by(node: LocalNode) -> list[dict[str, Any]]:
    return MeshClient(node.url).cluster()["generation"]["generators"]


def stream_answer(node: LocalNode, question: str, max_tokens: int, on_token: Any = None) -> tuple[str, dict[str, Any], list[str]]:
    """The streamed answer's text, its final event, and the order of the events."""
    pieces, events, final = [], [], {}
    for event, data in MeshClient(node.url, timeout=120).ask_stream(question, k=3, max_tokens=max_tokens):
        events.append(event)
        if event == "token":
            pieces.append(data["text"])
            if on_token is not None:
                on_token(len(pieces))
        elif event in ("done", "error"):
            final = data
    return "".join(pieces), final, events


def active_generator(cluster: LocalCluster, names: tuple[str, ...]) -> LocalNode | None:
    for name in names:
        generator = MeshClient(cluster.node(name).url, timeout=5).cluster().get("generator") or {}
        if generator.get("active"):
            return cluster.node(name)
    return None


# ----------------------------------------------------------- any node answers
def test_non_generator_nodes_answer_with_sources_streaming_and_not(ingested: LocalCluster) -> None:
    answer = MeshClient(ingested.node("n2").url, timeout=120).ask(DOME, k=3, max_tokens=24)
    assert answer["answer"] and answer["sources"], answer
    assert answer["generation"]["generator"] == MeshClient(ingested.node("n1").url).cluster()["node"]["id"]
    assert [g["node"] for g in generators_seen_by(ingested.node("n2"))] == ["n1"]
    node = ingested.node("n3")  # the other non-generator streams
    assert [g["node"] for g in generators_seen_by(node)] == ["n1"]
    text, final, events = stream_answer(node, DOME, 24)
    assert events[0] == "sources" and events[-1] == "done" and "token" in events
    assert text.strip() and final["generation"]["failover"] == []


@pytest.mark.long
def test_meshrag_ask_works_through_a_non_generator_node(ingested: LocalCluster) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshrag.cli", "ask", DOME, "--node", ingested.node("n3").url, "--max-tokens", "24"],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and "[1]" in result.stdout  # the answer, then the numbered sources


def test_the_generator_advertises_backend_model_context_capacity_and_load(ingested: LocalCluster) -> None:
    [seen] = generators_seen_by(ingested.node("n3"))
    assert seen["backend"] == "llama.cpp" and seen["model"] == "gemma-3-270m-q4_k_m"
    assert seen["capacity"] >= 1 and seen["continues"] is True and seen["breaker"] == "closed"
    member = next(m for m in MeshClient(ingested.node("n3").url).cluster()["members"] if m["name"] == "n1")
    assert member["meta"]["generator"]["context"] == 4096


@pytest.mark.long
def test_the_openai_client_answers_with_sources_through_a_non_generator_node(ingested: LocalCluster) -> None:
    import openai

    client = openai.OpenAI(base_url=ingested.node("n3").url + "/v1", api_key="unused")
    [model] = client.models.list().data
    assert model.model_extra["generators"] == 1
    messages = [{"role": "user", "content": DOME}]
    completion = client.chat.completions.create(model=model.id, messages=messages, max_tokens=16)  # type: ignore[arg-type]
    assert completion.choices[0].message.content and completion.model_extra["sources"]
    chunks = list(client.chat.completions.create(model=model.id, messages=messages, max_tokens=16, stream=True))  # type: ignore[arg-type]
    assert chunks[-1].choices[0].finish_reason and chunks[-1].model_extra["sources"]


# ---------------------------------------------------------------- failover
@pytest.fixture(scope="module")
def two_generators(ingested: LocalCluster) -> LocalCluster:
    ingested.add("n4")
    ingested.wait_for(lambda: len(generators_seen_by(ingested.node("n2"))) == 2, 60, "n2 sees both generators")
    return ingested


@pytest.fixture(scope="module")
def uninterrupted(two_generators: LocalCluster) -> str:
    text, final, _ = stream_answer(two_generators.node("n2"), COUNTING, LONG_ANSWER_TOKENS)
    assert final["timings"]["tokens"] >= 24, text  # long enough to cut in the middle
    return text


def with_both_generators(cluster: LocalCluster) -> LocalCluster:
    """n1 and n4 running and seen by n2 (a test before may have killed or stopped one)."""
    stopped = [cluster.node(name) for name in ("n1", "n4") if not cluster.node(name).is_running()]
    for node in stopped:
        node.start()
    for node in stopped:
        node.wait_ready()
    cluster.wait_for(lambda: len(generators_seen_by(cluster.node("n2"))) == 2, 60, "n2 sees both generators")
    return cluster


def cut_mid_stream(cluster: LocalCluster, fault: str) -> tuple[str, dict[str, Any], LocalNode]:
    """Ask through n2; after 8 pieces, apply ``fault`` to the generator that is answering."""
    struck: list[LocalNode] = []

    def strike(pieces: int) -> None:
        if pieces == 8 and not struck:
            victim = active_generator(cluster, ("n1", "n4"))
            assert victim is not None
            struck.append(victim)
            (victim.kill9 if fault == "kill" else lambda: LocalCluster.pause(victim))()

    text, final, _ = stream_answer(cluster.node("n2"), COUNTING, LONG_ANSWER_TOKENS, strike)
    assert struck
    return text, final, struck[0]


def test_kill_9_mid_stream_the_answer_finishes_on_the_other_generator(two_generators: LocalCluster, uninterrupted: str) -> None:
    text, final, _ = cut_mid_stream(with_both_generators(two_generators), "kill")
    assert "error" not in final, final
    [failover] = final["generation"]["failover"]
    assert failover["after_tokens"] >= 8
    assert text == uninterrupted  # greedy: the continuation is what the first generator would have written


@pytest.mark.failover
def test_a_paused_generator_mid_stream_is_left_after_the_stall_timeout(two_generators: LocalCluster, uninterrupted: str) -> None:
    with_both_generators(two_generators)
    started = time.monotonic()
    text, final, victim = cut_mid_stream(two_generators, "pause")
    try:
        assert "error" not in final, final
        [failover] = final["generation"]["failover"]
        assert "no next token within 3 s" in failover["reason"]
        assert text == uninterrupted
        assert time.monotonic() - started < 60
    finally:
        LocalCluster.resume(victim)


@pytest.mark.failover
def test_when_no_generator_can_continue_the_stream_ends_with_a_typed_error(two_generators: LocalCluster) -> None:
    with_both_generators(two_generators)
    other = two_generators.node("n4")
    other.stop()  # graceful: gossip says it left, so only n1 remains
    two_generators.wait_for(lambda: len(generators_seen_by(two_generators.node("n2"))) == 1, 60, "n4 gone from n2's view")
    text, final, _ = cut_mid_stream(two_generators, "kill")
    assert final["error"]["code"] == "generation_failed", final
    assert "cut after" in final["error"]["message"]
    assert text  # what was streamed before the cut reached the client


@pytest.mark.failover
def test_ask_with_no_generator_alive_is_503_before_streaming(tmp_path: Path) -> None:
    node = LocalNode(tmp_path / "solo", name="solo", extra_args=["--roles", "storage,coordinator"])
    with node:
        with pytest.raises(MeshClientError) as failure:
            MeshClient(node.url, timeout=60).ask("anything?", k=1, max_tokens=4)
        assert failure.value.status == 503 and "generator" in failure.value.message
        assert failure.value.retry_after_s is not None


@pytest.mark.failover
def test_concurrent_asks_through_one_coordinator_spread_over_both_generators(two_generators: LocalCluster) -> None:
    with_both_generators(two_generators)
    before = {name: MeshClient(two_generators.node(name).url).cluster()["generator"]["admitted"] for name in ("n1", "n4")}
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            MeshClient(two_generators.node("n3").url, timeout=180).ask(DOME, k=2, max_tokens=8)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    served = {name: MeshClient(two_generators.node(name).url).cluster()["generator"]["admitted"] - before[name] for name in ("n1", "n4")}
    assert sum(served.values()) == 6 and min(served.values()) >= 1, served
