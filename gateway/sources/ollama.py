"""Relay Ollama's native chat API (`POST /api/chat`, NDJSON)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..codecs.ollama import ChatDecoder
from ..models import ChatMessage, message_text
from .base import Sink
from .relay import Relay

if TYPE_CHECKING:
    from ..models import StreamRequest

__all__ = ["OllamaRelay"]


class OllamaRelay(Relay):
    path = "/api/chat"

    def body(self, request: StreamRequest) -> dict[str, Any]:
        messages = self.messages(request)
        # Ollama's content is a string: text parts are joined.
        for m in messages:
            if isinstance(m.get("content"), list):
                m["content"] = message_text(ChatMessage.model_validate(m))
        return {
            "model": self.upstream_model,
            "messages": messages,
            "stream": True,
            "options": {"num_predict": request.max_tokens, "seed": request.seed},
        }

    def decoder(self, sink: Sink) -> ChatDecoder:
        return ChatDecoder(sink)
