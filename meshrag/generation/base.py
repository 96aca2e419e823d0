"""What every generator backend offers: streamed text for chat messages.

The coordinator (and later generation/router.py) talks to this protocol only,
so llama.cpp, vLLM and remote OpenAI-compatible servers are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict[str, str]]  # [{"role": "user", "content": "..."}]
    max_tokens: int = 256
    temperature: float = 0.2  # 0 = greedy
    stop: tuple[str, ...] = ()


class GeneratorBackend(Protocol):
    name: str  # backend kind, e.g. "llama.cpp"
    model: str  # model identifier advertised to clients and peers

    def load(self) -> None:
        """Load the model (blocking, seconds to minutes: call it from an executor)."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Text pieces as they are generated.

        Raises GeneratorBusy (a 503 with Retry-After) when the admission queue
        is full. Stopping the iteration (aclose, or cancelling the consuming
        task) stops the generation and frees the model.
        """
        ...

    def stats(self) -> dict[str, Any]:
        """Load figures: at least active, waiting (the queue depth), capacity, tokens_generated."""
        ...

    async def close(self) -> None:
        """Cancel everything running or waiting and release the model."""
        ...
