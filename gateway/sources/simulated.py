"""The simulated model: deterministic markdown at a realistic pace, with faults on request.

Tokens come from a corpus shipped with the package, cut once into
word-piece-sized tokens that every stream shares. A stream is a start offset
and a tiny random state, so the same prompt, seed and max_tokens always give
the same text. Timing runs on the shared clock: no task per stream.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib import resources

from ..clock import SLOT_S, Clock
from ..models import StreamRequest
from .base import PreStreamError, Sink

__all__ = ["SimulatedModel", "SimGeneration", "corpus_tokens", "expected_text"]

_PIECE = re.compile(r" ?[A-Za-z0-9_']+| ?[^\sA-Za-z0-9_']+|\s+")
_MAX_PIECE = 6
_MASK = (1 << 64) - 1
# A model runs on its own hardware: when this process falls behind, the tokens whose time has come
# are all there at once, as a relay reading a backlog from its upstream socket gets them. One step
# gives up to this many tokens already due, and their readers take them in one write.
CATCH_UP = 16


@lru_cache(maxsize=1)
def corpus_tokens() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """All corpus tokens, and the indices where a section (a heading) starts."""
    folder = resources.files(__package__) / "corpus"
    docs = sorted(p.read_text("utf-8") for p in folder.iterdir() if p.name.endswith(".md"))
    tokens: list[str] = []
    starts: list[int] = []
    for doc in docs:
        for piece in _PIECE.findall(doc.strip() + "\n\n"):
            # Long words split like a BPE vocabulary would: "streaming" -> "stream", "ing".
            while len(piece) > _MAX_PIECE and not piece.isspace():
                tokens.append(piece[:_MAX_PIECE])
                piece = piece[_MAX_PIECE:]
            if piece.startswith("#") and (not tokens or "\n" in tokens[-1]):
                starts.append(len(tokens))
            tokens.append(piece)
    return tuple(tokens), tuple(starts)


def _seed(prompt: str, seed: int, max_tokens: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{max_tokens}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _next(state: int) -> tuple[int, float]:
    """splitmix64: one int of state per stream, a uniform float in [0, 1)."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return state, ((z ^ (z >> 31)) >> 11) / 9007199254740992.0


def expected_text(prompt: str, seed: int, max_tokens: int) -> str:
    """The full answer for these inputs, without timing: what tests compare against."""
    tokens, starts = corpus_tokens()
    state, u = _next(_seed(prompt, seed, max_tokens))
    start = starts[int(u * len(starts))]
    n = len(tokens)
    return "".join(tokens[(start + i) % n] for i in range(max_tokens))


class SimGeneration:
    __slots__ = ("sink", "clock", "pos", "left", "state", "deadline", "itl", "jitter",
                 "fail_after", "stall_after", "stall_s", "count", "cancelled", "tokens", "_step")

    def __init__(self, sink: Sink, clock: Clock, request: StreamRequest, defaults: tuple[float, float, float]):
        sim = request.sim
        ttft_ms = defaults[0] if sim.ttft_ms is None else sim.ttft_ms
        itl_ms = defaults[1] if sim.itl_ms is None else sim.itl_ms
        jitter = defaults[2] if sim.jitter is None else sim.jitter
        tokens, starts = corpus_tokens()
        self.tokens = tokens
        self._step = self.step  # one bound method for every deadline, not one per token
        state, u = _next(_seed(request.prompt, request.seed, request.max_tokens))
        self.pos = starts[int(u * len(starts))]
        self.left = request.max_tokens
        self.sink = sink
        self.clock = clock
        self.itl = itl_ms / 1000
        self.jitter = jitter
        self.fail_after = sim.fail_after
        self.stall_after = sim.stall_after
        self.stall_s = sim.stall_ms / 1000
        self.count = 0
        self.cancelled = False
        self.state = state
        self.deadline = clock.now() + self._gap(ttft_ms / 1000)
        if self.fail_after == 0:
            self.deadline = clock.now()
        clock.call_at(self.deadline, self._step)

    def _gap(self, mean: float) -> float:
        if not self.jitter:
            return mean
        self.state, u = _next(self.state)
        return mean * (1 + self.jitter * (2 * u - 1))

    def step(self) -> None:
        if self.cancelled:
            return
        tokens, sink = self.tokens, self.sink
        # (a gap under a clock slot already runs back to back inside one firing, bounded by its budget)
        now = self.clock.now() if self.itl >= SLOT_S else 0.0
        for _ in range(CATCH_UP):
            if self.count == self.fail_after:
                self._step = None
                sink.fail("model_error", f"simulated model failure after {self.count} tokens", True)
                return
            sink.token(tokens[self.pos % len(tokens)])
            if self.cancelled:  # (its last reader left, and that cancels it)
                return
            self.pos += 1
            self.count += 1
            self.left -= 1
            if self.left == 0:
                self._step = None  # (the cycle self -> bound method -> self would wait for the GC)
                sink.finish("stop")
                return
            gap = self._gap(self.itl)
            if self.count == self.stall_after:
                gap += self.stall_s
            # Absolute deadlines: a late tick does not push every later token back.
            self.deadline += gap
            if self.deadline > now:
                break
        self.clock.call_at(self.deadline, self._step)

    def cancel(self) -> None:
        self.cancelled = True
        self._step = None


class SimulatedModel:
    """The embedded default source."""

    def __init__(self, clock: Clock, ttft_ms: float, itl_ms: float, jitter: float) -> None:
        self.clock = clock
        self.defaults = (ttft_ms, itl_ms, jitter)

    async def start(self, request: StreamRequest, sink: Sink) -> SimGeneration:
        status = request.sim.pre_error
        if status is not None:
            retry = 1.0 if status in (429, 503) else None
            raise PreStreamError(status, f"simulated upstream refusal ({status})", retry_after=retry)
        return SimGeneration(sink, self.clock, request, self.defaults)
