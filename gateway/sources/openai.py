"""Relay any OpenAI-compatible streaming endpoint (OpenAI, vLLM, llama.cpp server, Ollama's /v1, another gateway)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..codecs.openai import ChunkDecoder
from .base import Sink
from .relay import Relay

if TYPE_CHECKING:
    from ..models import StreamRequest

__all__ = ["OpenAIRelay"]


class OpenAIRelay(Relay):
    path = "/chat/completions"

    def body(self, request: StreamRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": self.messages(request),
            "stream": True,
            self.spec.max_tokens_field: request.max_tokens,
            "seed": request.seed,
        }
        # The simulated model's knobs travel as an extension field, only when set, so a
        # gateway upstream injects the faults; `drop_after` cuts this gateway's own connection.
        sim = request.sim.model_dump(exclude_defaults=True, exclude={"drop_after"})
        if sim:
            body["sim"] = sim
        return body

    def decoder(self, sink: Sink) -> ChunkDecoder:
        return ChunkDecoder(sink)
