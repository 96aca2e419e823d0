"""A generator that is any OpenAI-compatible server: vLLM's, llama.cpp's, a hosted one.

Two APIs, chosen by generation.openai_api:

* ``completions`` (default): the prompt is rendered here, in the same plain
  format as the llama.cpp backend (llamacpp.render_plain_prompt), and sent as
  text to ``/completions``. Because this node owns the prompt, it can append a
  continuation to it, so the backend ``supports_continuation`` and can finish
  an answer another generator started. The server tokenises the text itself,
  usually with special tokens parsed, so prompt hygiene (a passage containing
  "<eos>" read as characters) is only as good as the server's tokeniser.
* ``chat``: the messages go to ``/chat/completions`` and the server applies
  its own chat template; there is no raw prompt to extend, so no continuation.

The HTTP session is created lazily on the event loop that streams (load() runs
in an executor thread, where aiohttp cannot live) and closed by close().
Closing a response mid-stream drops the connection, which is how every one of
these servers learns that the client has gone and stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.error
import urllib.request
from typing import Any, AsyncIterator

import aiohttp

from meshrag.errors import ConfigError, GeneratorBusy, MeshragError, Unavailable
from meshrag.generation.base import BackendCounters, GenerationFailed, GenerationRequest
from meshrag.generation.llamacpp import PLAIN_STOPS, render_plain_prompt

log = logging.getLogger(__name__)

APIS = ("completions", "chat")
# How long connecting (and load()'s check) may take; generation itself is bounded by the stall timeout.
CONNECT_TIMEOUT_S = 10.0
# Statuses a server uses to say "too busy now, come back later".
BUSY_STATUSES = (429, 503)
# Statuses that blame the request itself: another generator would refuse it too.
REQUEST_FAULT_STATUSES = (400, 413, 422)


class OpenAIBackend:
    name = "openai"

    def __init__(
        self, base_url: str, model: str, *, api_key: str | None, api: str, context_tokens: int,
        parallel: int, stall_timeout_s: float,
    ) -> None:
        if api not in APIS:
            raise ConfigError(f"generation.openai_api must be one of {', '.join(APIS)}, not {api!r}", field="generation.openai_api")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"generation.openai_base_url must be an http(s) URL, not {base_url!r}", field="generation.openai_base_url")
        if parallel < 1 or stall_timeout_s <= 0:
            raise ValueError("parallel must be >= 1 and stall_timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        self.context_tokens = context_tokens
        self.parallel = parallel  # what the server is trusted to run at once; admission enforces it
        self.supports_continuation = api == "completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._stall_timeout_s = stall_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._counters = BackendCounters()
        self._loaded = False
        self._closed = False

    # -------------------------------------------------------------- loading
    def load(self) -> None:
        """Check that the server answers (blocking: node.py calls it from an executor)."""
        url = f"{self.base_url}/models"
        request = urllib.request.Request(url, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S) as response:
                listing = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            # The server is there but refuses: a wrong path (missing /v1?) or key, not a transient state.
            raise ConfigError(
                f"the OpenAI-compatible server at {url} answered HTTP {exc.code}: {_error_text(exc.read())}",
                field="generation.openai_base_url",
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(f"the OpenAI-compatible server at {url} does not answer: {reason}", retry_after_s=5) from None
        served = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)] if isinstance(listing, dict) else []
        if served and self.model not in served:
            # Not fatal: many servers (llama.cpp's among them) accept any name or an alias.
            log.warning("the server at %s lists models %s, not %r", self.base_url, served[:5], self.model)
        self._loaded = True
        log.info("using the OpenAI-compatible server at %s (model %s, %s API)", self.base_url, self.model, self.api)

    # ------------------------------------------------------------ streaming
    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        if not self._loaded or self._closed:
            raise Unavailable("the OpenAI-compatible generator is not loaded", retry_after_s=5)
        if request.continuation and not self.supports_continuation:
            raise GenerationFailed("the chat API cannot continue an answer", retryable=False)
        path, body = self._request_body(request)
        counters = self._counters
        counters.running += 1
        outcome = "failed"
        response: aiohttp.ClientResponse | None = None
        try:
            response = await self._http().post(f"{self.base_url}{path}", json=body, headers=self._headers)
            if response.status != 200:
                raise await _status_error(response)
            async with contextlib.aclosing(self._pieces(response)) as pieces:
                async for piece in pieces:
                    counters.tokens_generated += 1
                    yield piece
            outcome = "completed"
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        except MeshragError:
            raise
        except (aiohttp.ClientError, OSError) as exc:  # refused, reset, DNS: this server is gone
            raise Unavailable(f"the OpenAI-compatible server at {self.base_url} failed: {exc!r}", retry_after_s=1) from exc
        except Exception as exc:  # e.g. an SSE line longer than aiohttp's buffer
            raise GenerationFailed(f"reading from the server at {self.base_url} failed: {exc!r}") from exc
        finally:
            if response is not None:
                # Anything but a whole answer closes the connection: that is how the server learns
                # the client has gone and stops generating. A whole one goes back to the pool.
                if outcome == "completed":
                    response.release()
                else:
                    response.close()
            counters.running -= 1
            counters.count(outcome)

    def _request_body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model, "stream": True, "max_tokens": request.max_tokens, "temperature": request.temperature,
        }
        if self.api == "chat":
            body["messages"] = [{"role": m.get("role", "user"), "content": m.get("content", "")} for m in request.messages]
            if request.stop:
                body["stop"] = list(request.stop)
            return "/chat/completions", body
        body["prompt"] = render_plain_prompt(request.messages) + request.continuation
        body["stop"] = list(PLAIN_STOPS + request.stop)
        return "/completions", body

    async def _pieces(self, response: aiohttp.ClientResponse) -> AsyncIterator[str]:
        """The text of each SSE ``data:`` event until ``[DONE]``.

        Waiting for the first event is left to the router's first-piece timeout
        (the server may be busy with a long prefill or a queue); after it, a gap
        longer than the stall timeout means the server has hung. Comment lines
        (keep-alive pings) do not count as progress: a server can ping forever
        while its model is stuck.
        """
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        finished = False  # a finish_reason arrived: only then is the answer whole
        while True:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                async with asyncio.timeout(timeout):
                    line = await response.content.readline()
            except TimeoutError:
                raise Unavailable(f"the server at {self.base_url} sent nothing for {self._stall_timeout_s:g} s", retry_after_s=1) from None
            if not line:  # the connection ended
                if finished:
                    return
                raise Unavailable(f"the server at {self.base_url} closed the stream before the answer ended", retry_after_s=1)
            text = line.decode("utf-8", errors="replace").strip()
            if not text.startswith("data:"):
                continue  # blank separators, "event:" and ": ping" comments
            data = text[5:].strip()
            if data == "[DONE]":
                if finished:
                    return
                # llama.cpp's server, told to interrupt for a newer request, ends the stream this
                # way mid-answer: a cut answer must not pass for a whole one.
                raise Unavailable(f"the server at {self.base_url} ended the stream before the answer ended", retry_after_s=1)
            deadline = loop.time() + self._stall_timeout_s
            try:
                event = json.loads(data)
            except ValueError:
                raise GenerationFailed(f"the server at {self.base_url} sent malformed data: {data[:200]!r}") from None
            if "error" in event:  # vLLM reports a failure mid-stream as an event
                raise GenerationFailed(f"the server at {self.base_url} failed: {_error_text(data.encode())}")
            choice = (event.get("choices") or [{}])[0]
            piece = choice.get("text") if self.api == "completions" else (choice.get("delta") or {}).get("content")
            finished = finished or bool(choice.get("finish_reason"))
            if piece:
                yield piece

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No total timeout: an answer takes as long as it takes; stalls are caught per event.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    # ---------------------------------------------------------------- state
    def stats(self) -> dict[str, Any]:
        return self._counters.as_dict()

    async def close(self) -> None:
        """Close the HTTP session: streams still open fail with a connection error (Unavailable)."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _status_error(response: aiohttp.ClientResponse) -> MeshragError:
    message = _error_text(await response.read())
    if response.status in BUSY_STATUSES:
        return GeneratorBusy(f"the server is busy (HTTP {response.status}): {message}", retry_after_s=_retry_after(response))
    return GenerationFailed(
        f"the server answered HTTP {response.status}: {message}",
        retryable=response.status not in REQUEST_FAULT_STATUSES,
    )


def _retry_after(response: aiohttp.ClientResponse) -> float:
    """Retry-After in seconds (its HTTP-date form is rare from these servers: 1 s then)."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return 1.0


def _error_text(body: bytes) -> str:
    """The server's own message: OpenAI's {"error": {"message"}} shape, else the body's start."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text[:500] or "(no message)"
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:500]
    return str(error or text)[:500]
