"""A small synchronous HTTP client for a MeshRAG node (CLI, scripts, chaos tests).

Standard library only (urllib), so any script can talk to a node without an
event loop. Every failure surfaces as MeshClientError: HTTP errors carry the
server's ``{"error": {"code", "message", "field"}}``; a node that cannot be
reached is status 0, code "unreachable" (or "timeout").
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterable, Iterator

DEFAULT_URL = "http://127.0.0.1:7070"
JSON = "application/json"


class MeshClientError(Exception):
    """A request failed; ``status`` 0 means no HTTP answer came back at all."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"


def _error_from_http(exc: urllib.error.HTTPError) -> MeshClientError:
    """Parse the node's error body; fall back to the status line for foreign servers."""
    raw = exc.read()
    retry_after = exc.headers.get("Retry-After") if exc.headers else None
    try:
        error = json.loads(raw)["error"]
        code, message, field = str(error["code"]), str(error["message"]), error.get("field")
    except (ValueError, KeyError, TypeError):
        code = f"http_{exc.code}"
        message = raw.decode("utf-8", errors="replace").strip()[:500] or str(exc.reason)
        field = None
    try:
        retry_after_s = float(retry_after) if retry_after else None
    except ValueError:
        retry_after_s = None
    return MeshClientError(exc.code, code, message, field, retry_after_s)


def parse_sse(lines: Iterable[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-sent events from raw lines: ``event: name`` / ``data: json`` blocks ended by a blank line."""
    event, data = "message", []
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue  # comment / keep-alive
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, json.loads("\n".join(data))


class MeshClient:
    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 60.0, api_key: str | None = None,
                 ca_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # A cluster with API keys on wants one on every call but the health probes;
        # MESHRAG_API_KEY is the default, as OPENAI_API_KEY is for OpenAI's clients.
        self.api_key = api_key if api_key is not None else os.environ.get("MESHRAG_API_KEY") or None
        # No proxies: the node URL is explicit, and an http_proxy in the
        # environment must not reroute requests for 127.0.0.1.
        # An https:// node of a cluster with its own CA: trust that CA ($MESHRAG_CA_FILE), not the system's store.
        ca_file = ca_file if ca_file is not None else os.environ.get("MESHRAG_CA_FILE") or None
        tls = urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)) if ca_file else urllib.request.HTTPSHandler()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), tls)

    # ------------------------------------------------------------ transport
    def _open(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": JSON}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if data is not None:
            headers["Content-Type"] = JSON
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            return self._opener.open(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise _error_from_http(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self._connection_error(exc, f"{method} {path}", timeout or self.timeout) from exc

    def _connection_error(self, exc: BaseException, what: str, timeout: float) -> MeshClientError:
        """No HTTP answer: a timeout, or a node that is down or died mid-request (status 0)."""
        # urllib wraps a connect timeout in URLError; a read timeout arrives bare.
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return MeshClientError(0, "timeout", f"{what} on {self.base_url}: no answer within {timeout:g} s")
        return MeshClientError(0, "unreachable", f"cannot reach node at {self.base_url} ({what}): {str(reason) or type(reason).__name__}")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        with self._open(method, path, body, timeout) as response:
            try:
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:  # connection lost while reading the body
                raise self._connection_error(exc, f"{method} {path}", timeout or self.timeout) from exc
        result: dict[str, Any] = json.loads(raw) if raw else {}
        return result

    @staticmethod
    def _document_path(doc_id: str) -> str:
        # Ids may contain "/" ("notes/a.md"): escape everything so one id is one path segment.
        return "/v1/documents/" + urllib.parse.quote(doc_id, safe="")

    # ------------------------------------------------------------ documents
    def upsert(self, documents: list[dict[str, Any]], consistency: str | None = None, session: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"documents": documents}
        if consistency is not None:
            body["consistency"] = consistency
        if session:
            body["session"] = session
        return self._call("POST", "/v1/documents", body)

    def get_document(self, doc_id: str, *, local: bool = False, session: str | None = None,
                     consistency: str | None = None) -> dict[str, Any]:
        query = {"local": "true"} if local else {}
        if session:
            query["session"] = session
        if consistency:
            query["consistency"] = consistency
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return self._call("GET", self._document_path(doc_id) + suffix)

    def delete_document(self, doc_id: str, consistency: str | None = None, session: str | None = None) -> dict[str, Any]:
        query = {k: v for k, v in (("consistency", consistency), ("session", session)) if v}
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return self._call("DELETE", self._document_path(doc_id) + suffix)

    # ------------------------------------------------------------ ring
    def decommission(self) -> dict[str, Any]:
        return self._call("POST", "/v1/cluster/decommission", {})

    def remove(self, node: str) -> dict[str, Any]:
        return self._call("POST", "/v1/cluster/remove", {"node": node})

    # ------------------------------------------------------------ API keys (admin)
    def create_api_key(self, name: str, scopes: list[str]) -> dict[str, Any]:
        """A new key for the whole cluster: its token is in the answer, and only there."""
        return self._call("POST", "/v1/cluster/api-keys", {"name": name, "scopes": scopes})

    def api_keys(self) -> dict[str, Any]:
        return self._call("GET", "/v1/cluster/api-keys")

    def revoke_api_key(self, key_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/cluster/api-keys/{urllib.parse.quote(key_id, safe='')}")

    # ------------------------------------------------------------ retrieval
    def search(
        self,
        query: str | None = None,
        *,
        vector: Any = None,
        k: int = 10,
        mode: str = "dense",
        filter: dict[str, Any] | None = None,
        session: str | None = None,
        timeout_ms: int | None = None,
        require_full_coverage: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"k": k, "mode": mode}
        if query is not None:
            body["query"] = query
        if vector is not None:
            body["vector"] = vector.tolist() if hasattr(vector, "tolist") else list(vector)
        if filter:
            body["filter"] = filter
        if session:
            body["session"] = session
        if timeout_ms is not None:
            body["timeout_ms"] = timeout_ms
        if require_full_coverage:
            body["require_full_coverage"] = True
        return self._call("POST", "/v1/search", body)

    @staticmethod
    def _ask_body(query: str, k: int | None, max_tokens: int | None, filter: dict[str, Any] | None, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "stream": stream}
        if k is not None:
            body["k"] = k
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if filter:
            body["filter"] = filter
        return body

    def ask(self, query: str, k: int | None = 5, max_tokens: int | None = None, *, filter: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call("POST", "/v1/ask", self._ask_body(query, k, max_tokens, filter, stream=False))

    def ask_stream(
        self, query: str, k: int | None = 5, max_tokens: int | None = None, *, filter: dict[str, Any] | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (event, data) as the answer streams: sources, token..., then done or error.

        The client timeout bounds the wait between two reads, so it acts as a
        stall timeout. A stream that ends without done or error is a failure
        (the node promises never to end silently), raised as code "stream_ended".
        """
        response = self._open("POST", "/v1/ask", self._ask_body(query, k, max_tokens, filter, stream=True))
        finished = False
        try:
            for event, data in parse_sse(response):
                yield event, data
                if event in ("done", "error"):
                    finished = True
                    return
        except (OSError, http.client.HTTPException) as exc:  # stalled past the timeout, or the node died
            raise self._connection_error(exc, "POST /v1/ask (stream)", self.timeout) from exc
        finally:
            response.close()
        if not finished:
            raise MeshClientError(0, "stream_ended", "the answer stream ended without a done or error event")

    # ------------------------------------------------------------ node state
    def cluster(self) -> dict[str, Any]:
        return self._call("GET", "/v1/cluster")

    def cluster_status(self) -> dict[str, Any]:
        """The whole cluster as this node gathers it from every ring member (`meshrag status`)."""
        return self._call("GET", "/v1/cluster/status")

    def verify(self) -> dict[str, Any]:
        """Every partition's replicas compared by digest (`meshrag verify`)."""
        return self._call("GET", "/v1/cluster/verify")

    def create_snapshot(self, name: str | None = None) -> dict[str, Any]:
        """Start a snapshot of this node's data (`meshrag snapshot`); the job as it starts."""
        return self._call("POST", "/v1/cluster/snapshots", {} if name is None else {"name": name})

    def snapshot_status(self, name: str) -> dict[str, Any]:
        return self._call("GET", "/v1/cluster/snapshots/" + urllib.parse.quote(name, safe=""))

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def ready(self) -> bool:
        """True once the node has loaded its models and storage; False while loading or unreachable."""
        try:
            self._call("GET", "/ready", timeout=min(self.timeout, 5.0))
        except MeshClientError:
            return False
        return True

    def wait_ready(self, timeout_s: float = 180.0, poll_s: float = 0.25) -> None:
        """Block until /ready answers 200; TimeoutError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(poll_s)
        raise TimeoutError(f"node at {self.base_url} not ready after {timeout_s:g} s")
