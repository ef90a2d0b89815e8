"""Request bodies of the public API (validated once, before streaming)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SimParams", "ChatMessage", "StreamRequest", "message_text", "prompt_of"]


class SimParams(BaseModel):
    """Timing and fault injection for the simulated model; unset fields take the settings' defaults."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = Field(None, ge=0, le=600_000, description="delay before the first token")
    itl_ms: float | None = Field(None, ge=0, le=60_000, description="mean gap between tokens")
    jitter: float | None = Field(None, ge=0, le=1, description="relative spread of the gaps")
    fail_after: int | None = Field(None, ge=0, description="N tokens, then an in-band error")
    drop_after: int | None = Field(None, ge=0, description="N tokens, then the connection is cut")
    stall_after: int | None = Field(None, ge=0, description="N tokens, then a pause of stall_ms")
    stall_ms: float = Field(0, ge=0, le=3_600_000)
    pre_error: int | None = Field(None, ge=400, le=599, description="refuse with this HTTP status")


class ChatMessage(BaseModel):
    """One chat message, as the OpenAI API has it; relays forward it whole (extra fields too)."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1, max_length=64)
    content: str | list[dict[str, Any]] | None = None


def message_text(message: ChatMessage) -> str:
    """The text of a message: its string content, or its text parts joined."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def prompt_of(messages: list[ChatMessage]) -> str:
    """The prompt the simulated model sees for a conversation (documented in the README).

    One user message is its text; anything else is `role: text` blocks joined by
    a blank line, so every message (the system prompt too) changes the answer.
    """
    if len(messages) == 1 and messages[0].role == "user":
        return message_text(messages[0])
    return "\n\n".join(f"{m.role}: {message_text(m)}" for m in messages)


def _opaque(obj: Any) -> None:
    return None


class StreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    max_tokens: int = Field(256, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, le=2**53 - 1)  # exact in every JSON parser (JavaScript's too)
    model: str | None = Field(None, max_length=200)
    sim: SimParams = Field(default_factory=SimParams)
    # A conversation instead of `prompt`: relays send it as is, the simulated model reads `prompt_of` it.
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=1000)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        # JSON may carry lone UTF-16 surrogates ("\ud800"): no text, and no UTF-8 encoding for them
        # (a prompt that cannot be encoded or relayed). One encode of the body finds any, anywhere.
        try:
            orjson.dumps(data, default=_opaque)  # (objects given in Python are not looked into)
        except TypeError:
            raise ValueError("the request holds a lone UTF-16 surrogate (\\ud800-\\udfff): not valid text") from None
        return data

    @model_validator(mode="after")
    def _prompt_from_messages(self) -> StreamRequest:
        if self.messages is not None:
            if self.prompt:
                raise ValueError("give prompt or messages, not both")
            self.prompt = prompt_of(self.messages)
        return self
