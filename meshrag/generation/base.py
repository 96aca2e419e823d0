"""What every generator backend offers, and what the coordinator knows of a generator.

The coordinator (generation/router.py) talks to this protocol only, so
llama.cpp, vLLM and remote OpenAI-compatible servers are interchangeable, and
a generator on another node looks the same as the one in this process.

Continuation: a request may carry ``continuation``, text an earlier generator
already sent for the same messages. A backend that ``supports_continuation``
renders the prompt exactly as for a fresh request, appends the continuation as
the start of the answer and generates what follows. For greedy decoding with
the same model that is what the first generator would have written next, so a
stream cut mid-way can be finished elsewhere without the client noticing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Protocol

from meshrag.errors import MeshragError


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict[str, str]]  # [{"role": "user", "content": "..."}]
    max_tokens: int = 256
    temperature: float = 0.2  # 0 = greedy
    stop: tuple[str, ...] = ()
    continuation: str = ""  # the answer so far, to be continued (see the module docstring)
    model: str = ""  # "" = whichever model the generator serves


class GeneratorBackend(Protocol):
    name: str  # backend kind, e.g. "llama.cpp"
    model: str  # model identifier advertised to clients and peers
    context_tokens: int  # prompt + answer
    supports_continuation: bool  # can continue a raw prompt (see the module docstring)
    parallel: int  # generations it runs at once (llama.cpp: 1; vLLM: many)

    def load(self) -> None:
        """Load the model (blocking, seconds to minutes: call it from an executor)."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Text pieces as they are generated (admission is the caller's: generation/admission.py).

        Stopping the iteration (aclose, or cancelling the consuming task) stops
        the generation and frees the model. Failures raise MeshragError.
        """
        ...

    def stats(self) -> dict[str, Any]:
        """Counters: at least completed, cancelled, failed, tokens_generated."""
        ...

    async def close(self) -> None:
        """Cancel everything running and release the model."""
        ...


@dataclass
class BackendCounters:
    """What every backend's stats() reports: generations running and how the others ended."""

    running: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    tokens_generated: int = 0  # pieces: about one token each

    def count(self, outcome: str) -> None:
        """One more generation ended as ``outcome`` (completed, cancelled or failed)."""
        setattr(self, outcome, getattr(self, outcome) + 1)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class GenerationFailed(MeshragError):
    """A generator failed or went silent; ``retryable`` when another generator may succeed."""

    status = 502
    code = "generation_failed"

    def __init__(self, message: str, *, retryable: bool = True, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retryable = retryable


@dataclass(frozen=True)
class GeneratorInfo:
    """A generator as the coordinator sees it: from gossip metadata, or this node's own."""

    node_id: str
    name: str
    address: str  # host:port of its HTTP listener
    backend: str
    model: str
    context_tokens: int
    capacity: int  # admitted at once (running + waiting)
    load: int  # running + waiting, as last advertised
    continues: bool  # supports_continuation
    local: bool = False  # this node's own generator: called in-process

    @classmethod
    def from_metadata(cls, node_id: str, name: str, meta: Mapping[str, Any], local: bool = False) -> GeneratorInfo | None:
        """None when the metadata advertises no (well-formed) generator."""
        gen = meta.get("generator")
        if not isinstance(gen, Mapping) or not isinstance(gen.get("model"), str):
            return None
        return cls(
            node_id=node_id,
            name=name,
            address=str(meta.get("http") or ""),
            backend=str(gen.get("backend") or "unknown"),
            model=gen["model"],
            context_tokens=_int(gen.get("context"), 0),
            capacity=max(1, _int(gen.get("capacity"), 1)),
            load=max(0, _int(gen.get("load"), 0)),
            continues=bool(gen.get("continues", False)),
            local=local,
        )


def generator_metadata(backend: GeneratorBackend, capacity: int, load: int) -> dict[str, Any]:
    """What a generator node advertises in gossip (kept small: it rides on alive messages)."""
    return {
        "backend": backend.name,
        "model": backend.model,
        "context": backend.context_tokens,
        "capacity": capacity,
        "load": load,
        "continues": backend.supports_continuation,
    }


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


@dataclass
class Failover:
    """One hand-over of a stream from a failed generator to another."""

    from_node: str
    to_node: str
    after_pieces: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.from_node, "to": self.to_node, "after_tokens": self.after_pieces, "reason": self.reason}


@dataclass
class StreamReport:
    """What the coordinator learned while streaming one answer (filled as it goes)."""

    generator: str = ""  # the node id of the generator that finished the answer
    generator_name: str = ""  # and its name, for people
    model: str = ""
    attempts: int = 0
    pieces: int = 0
    failovers: list[Failover] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)  # failures before the first piece
    # Where the time went (ms): the coordinator's own view from the moment it starts routing,
    # and the generator node's own from the moment its route got the request. Their difference
    # is what routing through another node adds (scripts/bench_generation.py).
    timings: dict[str, float] = field(default_factory=dict)
