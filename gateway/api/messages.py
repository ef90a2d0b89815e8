"""Anthropic's Messages API (`POST /v1/messages`) over the stream log, for any source.

Streamed, a subscriber's view of the log is written as Messages events (gateway/codecs/anthropic.py);
as in Anthropic's API there is no resume, and the client leaving cancels the generation. Errors come
in Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`), so the official SDK raises
its usual exceptions, before the 200 and after it.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from .. import openapi
from ..chat import ChatEventStream, prompt_tokens
from ..codecs.anthropic import PING_FRAME, MessagesEncoder, error_body, error_type, message_object
from ..names import Transport
from ..models import ChatMessage, SimParams, StreamRequest, message_text
from .start import context, http_deps, open_stream

__all__ = ["router", "MessagesRequest", "anthropic_error"]

router = APIRouter()


class MessagesRequest(BaseModel):
    """The fields of Anthropic's Messages request that mean something here; others (temperature,
    tools, ...) are accepted and ignored. `seed` and `sim` are extensions (the SDK's `extra_body`)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=200)
    max_tokens: int = Field(ge=1, le=1_000_000)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    seed: int | None = Field(None, ge=0, le=2**53 - 1)
    sim: SimParams | None = None

    def stream_request(self) -> StreamRequest:
        messages = list(self.messages)
        if self.system:
            system = ChatMessage(role="system", content=self.system)
            messages.insert(0, ChatMessage(role="system", content=message_text(system)))
        fields: dict[str, Any] = {"messages": messages, "model": self.model, "max_tokens": self.max_tokens}
        if self.seed is not None:
            fields["seed"] = self.seed
        if self.sim is not None:
            fields["sim"] = self.sim
        return StreamRequest(**fields)


def anthropic_error(status: int, message: str, code: str | None = None, *, param: str | None = None,
                    retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    extra = {"code": code} if code else {}
    return JSONResponse(error_body(error_type(status), message, **extra), status_code=status, headers=headers)


class MessagesEventStream(ChatEventStream):
    """One subscriber's view of a stream as Messages events; heartbeats are `ping` events."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.heartbeat = PING_FRAME


@router.post("/v1/messages", response_class=JSONResponse, responses=openapi.MESSAGES)
async def create_message(request: Request):
    opened = await open_stream(request, MessagesRequest, MessagesRequest.stream_request, anthropic_error)
    if isinstance(opened, JSONResponse):
        return opened
    body, stream_request, stream = opened
    ctx = context(request)
    n_prompt = prompt_tokens(stream_request.prompt)
    if body.stream:
        encoder = MessagesEncoder(stream.id, stream.model, input_tokens=n_prompt)
        sub = stream.attach(-1, Transport.MESSAGES, ctx.clock.now())
        return MessagesEventStream(http_deps(request), stream, sub, encoder, "messages")
    await ctx.run_to_end(stream, request)
    if stream.status != "done":
        # The status says what failed, as on every route (502, 504: the model went silent); the type says
        # whether retrying may succeed, as the in-band error does.
        end = orjson.loads(stream.log.json(len(stream.log) - 1))
        status = 504 if stream.error_code == "upstream_timeout" else 502
        message = f"generation failed after {stream.tokens} tokens: {stream.error_code}"
        return JSONResponse(error_body("overloaded_error" if end["retryable"] else "api_error", message,
                                       code=stream.error_code), status_code=status)
    return JSONResponse(message_object(stream.id, stream.model, stream.text(), finish_reason=stream.finish_reason,
                                       input_tokens=n_prompt, output_tokens=stream.tokens))
