"""The coordinator's choice of generator, and an answer that survives the generator dying.

Pure protocol logic: the candidates, the breakers (cluster/breaker.py, on an
injected clock), the random source and the way a stream is opened (in-process
or over HTTP) are all handed in, so tests drive it on virtual time with
scripted generators.

Choice: power of two choices (Mitzenmacher) among the live generators serving
the model whose breaker admits them, comparing (this coordinator's own
in-flight requests + the queue depth the generator last advertised) relative
to its advertised capacity. Two random candidates and the less loaded one
avoid the herd that "always the least loaded" causes when every coordinator
acts on the same stale gossip.

Failures:
* before the first piece: the request is retried on another generator
  (at most ``max_attempts`` generators). A busy generator (503) is not broken:
  it costs no breaker failure; when every generator is busy the caller gets
  GeneratorBusy with the shortest Retry-After.
* after pieces were sent: the answer continues on another generator serving
  the same model that can continue a raw prompt, from the same messages plus
  the text already sent (generation/base.py); the client sees one answer and a
  ``Failover`` in the report. When nobody can continue, GenerationFailed
  (``retryable=False``) ends the stream: the caller turns it into a typed
  error event, never a bare end.
* silence: the first piece of an attempt may take ``first_piece_timeout_s``
  (queue + prompt processing, the admission timeout); after it, a gap longer
  than ``stall_timeout_s`` fails the attempt (a SIGSTOPped generator).

Cancellation (the client went away) closes the generator's stream, which
cancels the generation on the generator node, and counts as nobody's failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence

from meshrag.cluster.breaker import BreakerBoard
from meshrag.errors import GeneratorBusy, MeshragError, Unavailable
from meshrag.generation.base import Failover, GenerationFailed, GenerationRequest, GeneratorInfo, StreamReport

OpenStream = Callable[[GeneratorInfo, GenerationRequest], AsyncIterator[str]]


@dataclass(frozen=True)
class RouterSettings:
    max_attempts: int = 3  # generators tried before the first piece reaches the client
    max_failovers: int = 2  # continuations after pieces were sent
    first_piece_timeout_s: float = 120.0  # per attempt: waiting in the queue + prompt processing
    stall_timeout_s: float = 30.0  # longest gap between two pieces, from the first

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_failovers < 0:
            raise ValueError("max_attempts must be >= 1 and max_failovers >= 0")
        if self.first_piece_timeout_s <= 0 or self.stall_timeout_s <= 0:
            raise ValueError("timeouts must be positive")


class _AttemptFailed(Exception):
    """One generator failed this attempt; ``busy`` when it refused admission."""

    def __init__(self, reason: str, *, busy: GeneratorBusy | None = None, pieces: int = 0, final: MeshragError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.busy = busy
        self.pieces = pieces
        self.final = final  # the request itself is at fault: another generator would refuse it too


class GeneratorRouter:
    def __init__(self, breakers: BreakerBoard, rng: random.Random, open_stream: OpenStream, settings: RouterSettings) -> None:
        self.breakers = breakers
        self._rng = rng
        self._open_stream = open_stream
        self.settings = settings
        self._outstanding: dict[str, int] = {}

    # ------------------------------------------------------------ choice
    def outstanding(self, node_id: str) -> int:
        return self._outstanding.get(node_id, 0)

    def load_score(self, candidate: GeneratorInfo) -> float:
        """Own in-flight + advertised queue depth, per unit of advertised capacity."""
        return (self.outstanding(candidate.node_id) + candidate.load) / max(1, candidate.capacity)

    def choose(self, candidates: Sequence[GeneratorInfo], exclude: set[str] = frozenset()) -> GeneratorInfo | None:  # type: ignore[assignment]
        """Power of two choices among those the breakers admit; takes the breaker's probe slot."""
        self.breakers.set_peers(c.node_id for c in candidates)
        pool = [c for c in candidates if c.node_id not in exclude and self.breakers.would_allow(c.node_id)]
        while pool:
            pair = self._rng.sample(pool, 2) if len(pool) >= 2 else pool
            best = min(pair, key=self.load_score)
            if self.breakers.allow(best.node_id):
                return best
            pool.remove(best)
        return None

    # --------------------------------------------------------- streaming
    async def stream(
        self, request: GenerationRequest, candidates: Callable[[], Sequence[GeneratorInfo]], report: StreamReport,
    ) -> AsyncIterator[str]:
        """The answer's pieces, from one generator or, after failures, several (see the module docstring)."""
        sent: list[str] = []
        tried: set[str] = set()
        busy: list[GeneratorBusy] = []
        while True:
            target = self._next_target(request, candidates(), tried, report)
            if target is None:
                raise self._exhausted(report, busy)
            tried.add(target.node_id)
            report.attempts += 1
            if report.failovers and not report.failovers[-1].to_node:
                report.failovers[-1].to_node = target.node_id
            attempt = request if not sent else dataclasses.replace(
                request, continuation="".join(sent), max_tokens=max(1, request.max_tokens - len(sent)), model=report.model,
            )
            try:
                # aclosing: when our consumer goes away, the attempt (and the generator's stream) closes now.
                async with aclosing(self._attempt(target, attempt, report.timings)) as pieces:
                    async for piece in pieces:
                        if not sent:
                            report.model = target.model
                        sent.append(piece)
                        report.pieces = len(sent)
                        report.generator, report.generator_name = target.node_id, target.name
                        yield piece
                report.generator, report.generator_name, report.model = target.node_id, target.name, target.model
                return
            except _AttemptFailed as failure:
                self._note_failure(target, failure, sent, report, busy)
                if failure.final is not None:
                    raise failure.final from None

    def _next_target(self, request: GenerationRequest, listed: Sequence[GeneratorInfo], tried: set[str], report: StreamReport) -> GeneratorInfo | None:
        if report.pieces:
            if sum(1 for f in report.failovers if f.to_node) >= self.settings.max_failovers:
                return None
            # Only the same model, continuing a raw prompt, writes what the first would have.
            listed = [c for c in listed if c.continues and c.model == report.model]
        else:
            if report.attempts >= self.settings.max_attempts:
                return None
            if request.model:
                listed = [c for c in listed if c.model == request.model]
        return self.choose(listed, tried)

    @staticmethod
    def _note_failure(target: GeneratorInfo, failure: _AttemptFailed, sent: list[str], report: StreamReport, busy: list[GeneratorBusy]) -> None:
        if failure.busy is not None:
            busy.append(failure.busy)
        if sent:
            report.failovers.append(Failover(target.node_id, "", len(sent), failure.reason))
        else:
            report.retries.append(f"{target.name}: {failure.reason}")

    def _exhausted(self, report: StreamReport, busy: list[GeneratorBusy]) -> MeshragError:
        if report.pieces:
            reasons = "; ".join(f.reason for f in report.failovers) or "no generator left"
            return GenerationFailed(
                f"the answer was cut after {report.pieces} tokens and no generator could continue it ({reasons})",
                retryable=False,
            )
        if busy and len(busy) == report.attempts:
            shortest = min(b.retry_after_s for b in busy)
            return GeneratorBusy(f"every generator tried is busy ({len(busy)})", retry_after_s=shortest)
        if not report.attempts:
            return Unavailable("no live generator serves this model; start a node with the generator role", retry_after_s=5)
        return Unavailable(f"generation failed on every generator tried: {'; '.join(report.retries)}", retry_after_s=2)

    async def _attempt(self, target: GeneratorInfo, request: GenerationRequest, timings: dict[str, float]) -> AsyncIterator[str]:
        """One generator's pieces; its failure as _AttemptFailed, its breaker told the outcome;
        ``timings`` gets the generator's own when it reports them."""
        node = target.node_id
        self._outstanding[node] = self.outstanding(node) + 1
        outcome: bool | None = None  # None: nobody's fault (busy, or the client went away)
        pieces = 0
        stream: AsyncIterator[str] | None = None
        try:
            stream = self._open_stream(target, request)
            while True:
                timeout = self.settings.first_piece_timeout_s if pieces == 0 else self.settings.stall_timeout_s
                try:
                    piece = await asyncio.wait_for(anext(stream), timeout)
                except StopAsyncIteration:
                    outcome = True
                    timings.update(getattr(stream, "timings", None) or {})  # a remote generator's own
                    return
                except GeneratorBusy as exc:
                    raise _AttemptFailed(f"busy: {exc.message}", busy=exc) from None
                except asyncio.TimeoutError:
                    outcome = False
                    what = "first token" if pieces == 0 else "next token"
                    raise _AttemptFailed(f"no {what} within {timeout:g} s", pieces=pieces) from None
                except GenerationFailed as exc:
                    outcome = False if exc.retryable else None  # a request it rightly refused is not its failure
                    raise _AttemptFailed(exc.message, pieces=pieces, final=None if exc.retryable else exc) from None
                except MeshragError as exc:
                    outcome = False
                    raise _AttemptFailed(exc.message, pieces=pieces) from None
                pieces += 1
                yield piece
        except GeneratorBusy as exc:  # refused at admission, before any stream existed
            raise _AttemptFailed(f"busy: {exc.message}", busy=exc) from None
        finally:
            self._outstanding[node] -= 1
            if outcome is not None:
                self.breakers.record(node, outcome)
            if stream is not None:
                await _close(stream)


async def _close(stream: AsyncIterator[str]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # the stream's own failure was already accounted for
            pass
