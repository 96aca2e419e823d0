"""Generation across nodes: the /_mesh/generate body, its streamed frames, and the client side.

A coordinator posts a GenerationRequest (msgpack) to a generator node's
/_mesh/generate. The generator admits it or answers 503 with Retry-After
before anything streams; once admitted, the reply is a sequence of msgpack
maps written as they happen:

    {"p": "text"}                       a piece of the answer (about one token)
    {"end": {"pieces", "first_piece_ms", "total_ms"}}   complete; the generator's own timings
    {"error": {"code", "message", ...}} the generator failed; nothing follows

A stream that stops without "end" or "error" means the generator (or the
connection) died: the coordinator fails over (generation/router.py). Closing
the stream on the coordinator closes the connection, and aiohttp cancels the
generator's handler, which stops the generation.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

from meshrag import wire
from meshrag.cluster.messages import GENERATE_PATH
from meshrag.cluster.rpc import PeerClient, PeerError
from meshrag.errors import GeneratorBusy, MeshragError, ValidationError
from meshrag.generation.base import GenerationFailed, GenerationRequest, GeneratorInfo

ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 256
MAX_STOPS = 8
MAX_STOP_CHARS = 64


def request_to_wire(request: GenerationRequest) -> dict[str, Any]:
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "stop": list(request.stop),
        "continuation": request.continuation,
        "model": request.model,
    }


def request_from_wire(body: Mapping[str, Any], max_tokens_limit: int, max_text_chars: int) -> GenerationRequest:
    """A GenerationRequest, or ValidationError naming the field (what every backend can take)."""
    return GenerationRequest(
        messages=_messages(body.get("messages"), max_text_chars),
        max_tokens=_int_in(body.get("max_tokens"), "max_tokens", 1, max_tokens_limit),
        temperature=_temperature(body.get("temperature", 0.0)),
        stop=_stops(body.get("stop", [])),
        continuation=_text(body.get("continuation", ""), "continuation", max_text_chars),
        model=_text(body.get("model", ""), "model", 256),
    )


def _messages(raw: Any, max_chars: int) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_MESSAGES:
        raise ValidationError(f"messages must be a list of 1..{MAX_MESSAGES} messages", field="messages")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise ValidationError(f"messages[{i}] needs a role ({', '.join(ROLES)}) and a content", field=f"messages[{i}].role")
        messages.append({"role": str(message["role"]), "content": _text(message.get("content"), f"messages[{i}].content", max_chars)})
    return messages


def _text(value: Any, field: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field=field)
    if len(value) > max_chars:
        raise ValidationError(f"{field} is {len(value)} characters; the limit is {max_chars}", field=field)
    wire.check_text(value, field)
    return value


def _int_in(value: Any, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValidationError(f"{field} must be an integer {low}..{high}", field=field)
    return value


def _temperature(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 2.0:
        raise ValidationError("temperature must be a number 0..2", field="temperature")
    return float(value)


def _stops(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_STOPS:
        raise ValidationError(f"stop must be a list of at most {MAX_STOPS} strings", field="stop")
    return tuple(_text(s, f"stop[{i}]", MAX_STOP_CHARS) for i, s in enumerate(raw))


def piece_frame(text: str) -> bytes:
    return wire.pack({"p": text})


def end_frame(pieces: int, first_piece_ms: float, total_ms: float) -> bytes:
    """The generator's own timings ride on the end: from its route getting the request
    (queue included) to the first piece and to the end."""
    return wire.pack({"end": {"pieces": pieces, "first_piece_ms": round(first_piece_ms, 3), "total_ms": round(total_ms, 3)}})


def error_frame(exc: MeshragError) -> bytes:
    return wire.pack({"error": exc.to_dict()})


class RemoteGenerators:
    """Opens generation streams on other nodes (the router's OpenStream for non-local targets)."""

    def __init__(self, peers: PeerClient) -> None:
        self._peers = peers

    def open(self, target: GeneratorInfo, request: GenerationRequest) -> RemoteStream:
        return RemoteStream(self._peers, target, request)


class RemoteStream:
    """One answer from another node: its pieces, then (once complete) the generator's timings."""

    def __init__(self, peers: PeerClient, target: GeneratorInfo, request: GenerationRequest) -> None:
        self.timings: dict[str, float] = {}
        self._pieces = self._read(peers, target, request)

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        await self._pieces.aclose()

    async def _read(self, peers: PeerClient, target: GeneratorInfo, request: GenerationRequest) -> AsyncIterator[str]:
        """The pieces; GeneratorBusy for a 503, GenerationFailed for anything else that goes wrong."""
        frames = peers.stream(target.address, GENERATE_PATH, request_to_wire(request))
        try:
            async for frame in frames:
                if not isinstance(frame, dict):
                    raise GenerationFailed(f"{target.name} sent a malformed frame")
                if "p" in frame:
                    yield str(frame["p"])
                elif "end" in frame:
                    end = frame["end"] if isinstance(frame["end"], dict) else {}
                    self.timings = {f"generator_{key}": float(end[key]) for key in ("first_piece_ms", "total_ms") if isinstance(end.get(key), (int, float))}
                    return
                elif "error" in frame:
                    error = frame["error"] if isinstance(frame["error"], dict) else {}
                    raise GenerationFailed(f"{target.name}: {error.get('message', 'generation failed')}")
            raise GenerationFailed(f"{target.name} ended the stream without finishing the answer")
        except PeerError as exc:
            if exc.status == 503:
                raise GeneratorBusy(f"{target.name}: {exc.reason}", retry_after_s=exc.retry_after_s or 1.0) from None
            raise GenerationFailed(f"{target.name}: {exc.reason}") from None
        finally:
            await frames.aclose()  # type: ignore[attr-defined]
