"""API keys on two real nodes (not in dev mode): the bootstrap key, the scope matrix over every
public route, keys created on one node honoured on the other, a revocation reaching every node."""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from meshrag.api.auth import OPEN, ROUTE_SCOPES
from meshrag.client import MeshClient, MeshClientError
from meshrag.localcluster import STORAGE_ROLES
from meshrag.localnode import LocalNode
from meshrag.security.api_keys import BOOTSTRAP_KEY_FILE
from tests.cluster.conftest import running_in_order

pytestmark = pytest.mark.slow

SECRET = "api-keys-test-cluster-secret"
PATH_VALUES = {"{doc_id}": "doc-1", "{model}": "meshrag", "{key_id}": "no-such-key", "{name}": "no-such-snapshot"}


def _node(root: Path, name: str, seed: LocalNode | None = None) -> LocalNode:
    args = [*STORAGE_ROLES, "--partitions", "8", "--replicas", "2", "--secret", SECRET]
    if seed is not None:
        args += ["--join", f"127.0.0.1:{seed.port}"]
    return LocalNode(root / name, name=name, extra_args=args, env={"MESHRAG_API_KEYS": "true"}, dev=False)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalNode]]:
    root = tmp_path_factory.mktemp("apikeys")
    n1 = _node(root, "n1")
    yield from running_in_order([n1, _node(root, "n2", n1)])


def _status(node: LocalNode, method: str, route: str, token: str | None) -> int:
    path = route
    for placeholder, value in PATH_VALUES.items():
        path = path.replace(placeholder, value)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = b"{}" if method in ("POST", "DELETE") else None
    request = urllib.request.Request(node.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _expected(scope: str, holder: str | None) -> set[int] | None:
    """None: anything but 401/403 (the route's own answer to an empty body); else those codes."""
    if scope == OPEN or holder == scope or (holder, scope) == ("admin", "status"):  # admin implies status
        return None
    return {401} if holder in (None, "revoked") else {403}


def test_the_first_node_writes_one_admin_key_to_a_private_file(nodes: list[LocalNode]) -> None:
    n1, n2 = nodes
    path = n1.data_dir / BOOTSTRAP_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (n2.data_dir / BOOTSTRAP_KEY_FILE).exists()  # a joiner gets the cluster's keys instead
    token = path.read_text().strip()
    assert [k["name"] for k in MeshClient(n2.url, api_key=token).api_keys()["keys"]] == ["bootstrap-admin"]


def test_each_scope_allows_exactly_its_routes_on_a_node_that_did_not_create_the_keys(nodes: list[LocalNode]) -> None:
    n1, n2 = nodes
    admin = MeshClient(n1.url, api_key=(n1.data_dir / BOOTSTRAP_KEY_FILE).read_text().strip())
    tokens: dict[str | None, str | None] = {None: None}
    for scope in ("read", "write", "admin", "status"):
        tokens[scope] = admin.create_api_key(f"{scope}-only", [scope])["token"]
    doomed = admin.create_api_key("doomed", ["read", "write", "admin"])
    admin.revoke_api_key(doomed["id"])
    tokens["revoked"] = doomed["token"]
    _until_accepted(n2, tokens["admin"])
    mismatches = []
    for (method, route), scope in sorted(ROUTE_SCOPES.items()):
        if route == "/v1/cluster/decommission":
            continue  # allowed, it would empty n2: checked last
        for holder, token in tokens.items():
            status, expected = _status(n2, method, route, token), _expected(scope, holder)
            if (expected is None and status in (401, 403)) or (expected is not None and status not in expected):
                mismatches.append(f"{method} {route} with {holder}: {status}")
    assert not mismatches, mismatches
    for holder in (None, "revoked", "read", "write", "status"):
        assert _status(n2, "POST", "/v1/cluster/decommission", tokens[holder]) in (401, 403)


def test_a_revocation_on_one_node_reaches_the_other(nodes: list[LocalNode]) -> None:
    n1, n2 = nodes
    admin = MeshClient(n2.url, api_key=(n1.data_dir / BOOTSTRAP_KEY_FILE).read_text().strip())
    made = admin.create_api_key("short-lived", ["read"])
    _until_accepted(n1, made["token"])
    admin.revoke_api_key(made["id"])
    deadline = time.monotonic() + 20
    while _status(n1, "GET", "/v1/models", made["token"]) != 401:
        assert time.monotonic() < deadline, "n1 still takes a key revoked on n2"
        time.sleep(0.2)
    with pytest.raises(MeshClientError) as refused:
        MeshClient(n1.url, api_key=made["token"]).search(query="anything")
    assert refused.value.status == 401 and refused.value.code == "unauthorized"
    stored = json.loads((n1.data_dir / "api_keys.json").read_text())
    assert all(made["token"].split("_")[2] not in json.dumps(item) for item in stored)


def _until_accepted(node: LocalNode, token: str | None, timeout_s: float = 20.0) -> None:
    """Keys spread with the ring exchange (every second, and at once after a change)."""
    deadline = time.monotonic() + timeout_s
    while _status(node, "GET", "/v1/cluster/api-keys", token) == 401:
        assert time.monotonic() < deadline, f"{node.name} never accepted the key"
        time.sleep(0.2)
