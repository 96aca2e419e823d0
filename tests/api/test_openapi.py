"""api/openapi.py: the document covers exactly the routes the node serves, is valid OpenAPI 3.1,
states the node's limits and scopes, and a real node answers what it says (schemathesis).

The schemathesis run is bounded for the default suite (``SCHEMATHESIS_EXAMPLES`` per
operation, positive and negative, about 30 s); ``-m long`` runs ten times more.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any, Iterator

import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from meshrag.api import openapi
from meshrag.api.auth import OPEN, ROUTE_SCOPES
from meshrag.config import Config
from meshrag.localnode import LocalNode
from tests.api.routes import served_routes

SCHEMATHESIS_EXAMPLES = int(os.environ.get("MESHRAG_SCHEMATHESIS_EXAMPLES", "12"))
# Leaves the ring: the rest of the run would test a node that holds nothing.
NOT_FUZZED = {("POST", "/v1/cluster/decommission")}


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}


def test_the_document_has_every_served_route_and_nothing_else() -> None:
    assert documented_routes(openapi.document(Config())) == served_routes()


def test_the_document_is_valid_openapi_with_keys_on_or_off_and_with_or_without_a_dimension() -> None:
    for keys in (False, True):
        config = Config()
        config.api.keys = keys
        for dim in (None, 384):
            validate(openapi.document(config, dim))
    schemathesis.openapi.from_dict(openapi.document(Config(), 384))  # and schemathesis loads it


def test_each_route_states_the_scope_auth_py_enforces() -> None:
    config = Config()
    config.api.keys = True
    document = openapi.document(config)
    for (method, route), scope in ROUTE_SCOPES.items():
        operation = document["paths"][route][method.lower()]
        assert operation["x-meshrag-scope"] == (scope or "open")
        assert operation["security"] == ([] if scope == OPEN else [{"bearer": [scope]}])


def test_limits_come_from_the_node_config() -> None:
    config = Config()
    config.api.max_documents_per_request, config.api.max_text_chars, config.api.max_k = 7, 900, 33
    config.generation.max_tokens = 64
    schemas = openapi.document(config, 384)["components"]["schemas"]
    assert schemas["UpsertRequest"]["properties"]["documents"]["maxItems"] == 7
    assert schemas["Document"]["properties"]["text"]["maxLength"] == 900
    assert schemas["SearchRequest"]["properties"]["k"]["maximum"] == 33
    assert schemas["AskRequest"]["properties"]["max_tokens"]["maximum"] == 64
    assert schemas["Document"]["properties"]["vector"]["anyOf"][0]["maxItems"] == 384


# ------------------------------------------------------------ against a real node
@pytest.fixture(scope="module")
def schema_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    """Storage and coordinator roles (no generator: /v1/ask and chat answer their documented 503),
    small limits so that generated batches stay quick to embed."""
    env = {"MESHRAG_CLUSTER_PARTITIONS": "4", "MESHRAG_API_MAX_DOCUMENTS_PER_REQUEST": "2", "MESHRAG_API_MAX_TEXT_CHARS": "300",
           "MESHRAG_API_MAX_K": "50", "MESHRAG_OBSERVABILITY_LOG_FORMAT": "text"}
    node = LocalNode(tmp_path_factory.mktemp("openapi"), name="schema-node", env=env, extra_args=["--roles", "storage,coordinator"])
    node.start()
    try:
        yield node.wait_ready()
    finally:
        node.stop()


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError):  # an integer msgpack cannot carry: send what a broken client would
        return json.dumps(value).encode()


def no_undocumented_server_error(ctx: Any, response: Any, case: Any) -> None:
    """No 500 ever; a 5xx the API documents (502 generation failed, 503 unavailable, 504 deadline)
    carries the error shape, and a 503 says when to retry."""
    status = response.status_code
    if status < 500:
        return
    assert status in (502, 503, 504), f"{status} from {case.method} {case.path}: {response.text[:500]}"
    assert "error" in response.json(), response.text[:500]
    if status == 503 and case.path != "/ready":
        assert "retry-after" in {name.lower() for name in response.headers}, response.headers


def _fuzz(node: LocalNode, examples: int) -> None:
    served = _get_json(node.url + "/openapi.json")
    assert documented_routes(served) == served_routes()
    assert served["components"]["schemas"]["UpsertRequest"]["properties"]["documents"]["maxItems"] == 2  # this node's limit
    schema = schemathesis.openapi.from_url(node.url + "/openapi.json")
    checks = [no_undocumented_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NOT_FUZZED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            # No shrinking: a failure is reported as found (shrinking one over HTTP took minutes).
            @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                case.call_and_validate(checks=checks, timeout=60)

            started = time.monotonic()
            try:
                run()
            except Unsatisfiable:
                pass  # nothing to negate: a route without parameters or body
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every operation's failures are reported together
                failures[f"{operation.method.upper()} {operation.path} ({mode.value})"] = str(exc)[:3000]
            print(f"{operation.method.upper()} {operation.path} {mode.value}: {time.monotonic() - started:.1f} s")
    assert not failures, "\n\n".join(f"{name}:\n{text}" for name, text in failures.items())
    # The node is still whole: nothing the fuzzing sent broke it.
    assert _get_json(node.url + "/ready")["ready"] is True


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_a_real_node_answers_what_its_document_says(schema_node: LocalNode) -> None:
    _fuzz(schema_node, SCHEMATHESIS_EXAMPLES)


@pytest.mark.long
def test_a_real_node_answers_what_its_document_says_at_length(schema_node: LocalNode) -> None:
    _fuzz(schema_node, SCHEMATHESIS_EXAMPLES * 10)
