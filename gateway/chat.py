"""The OpenAI-compatible API: `POST /v1/chat/completions` and `GET /v1/models`, over any source.

A chat request becomes an ordinary one-shot stream (the conversation rides
along in `StreamRequest.messages`; the simulated model reads `prompt_of` it),
so it goes through the same registry, stream log and sweep as every other
transport. Streamed, a subscriber's view of the log is mapped to
`chat.completion.chunk`s; not streamed, the answer is collected like
`/v1/complete`. Errors come in OpenAI's shape (`{"error": {...}}`), so the
official SDKs raise their usual exceptions.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from . import openapi
from .codecs.openai import ChunkEncoder, error_object, usage
from .names import Transport
from .api.start import context, http_deps, open_stream
from .models import ChatMessage, SimParams, StreamRequest
from .transports.http import EventStream

if TYPE_CHECKING:
    from .service import Context
    from .transports.http import HttpDeps
    from .log import EventLog
    from .stream import Stream, Subscriber

__all__ = ["ChatRequest", "ChatEventStream", "router", "openai_error"]


class Frames(Protocol):
    def frames(self, log: EventLog, start: int, end: int) -> bytes: ...


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completions request that mean something here.

    Others (temperature, top_p, tools, ...) are accepted and ignored, so
    existing clients work unchanged. `sim` is an extension: the simulated
    model's timing and faults (pass it with the SDK's `extra_body`).
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    seed: int | None = Field(None, ge=0, le=2**53 - 1)
    n: int = Field(1, ge=1, le=1, description="only one choice is supported")
    sim: SimParams | None = None

    def stream_request(self) -> StreamRequest:
        fields: dict[str, Any] = {"messages": self.messages, "model": self.model}
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            fields["max_tokens"] = max_tokens
        if self.seed is not None:
            fields["seed"] = self.seed
        if self.sim is not None:
            fields["sim"] = self.sim
        return StreamRequest(**fields)


def openai_error(status: int, message: str, code: str | None = None, *, param: str | None = None,
                 retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return JSONResponse({"error": error_object(status, message, code, param)}, status_code=status,
                        headers=headers)


def prompt_tokens(prompt: str) -> int:
    """An estimate (about four bytes a token): the gateway runs no tokenizer."""
    return max(1, math.ceil(len(prompt.encode()) / 4))


class ChatEventStream(EventStream):
    """One subscriber's view of a stream over SSE in an LLM API's format: `encoder.frames` writes it
    (`chat.completion.chunk`s here; Responses and Messages events in gateway/api/)."""

    def __init__(self, deps: HttpDeps, stream: Stream, sub: Subscriber, encoder: Frames, fmt: str = "chat") -> None:
        super().__init__(deps, stream, sub, fmt)
        self.encoder = encoder

    def frames(self, log: EventLog, start: int, end: int) -> bytes:
        return self.encoder.frames(log, start, end)


router = APIRouter()
_STARTED = int(time.time())  # the models' `created`: when this process loaded them


@router.post("/v1/chat/completions", response_class=JSONResponse, responses=openapi.CHAT)
async def chat_completions(request: Request):
    opened = await open_stream(request, ChatRequest, ChatRequest.stream_request, openai_error)
    if isinstance(opened, JSONResponse):
        return opened
    ctx = context(request)
    body, stream_request, stream = opened
    completion_id = f"chatcmpl-{stream.id}"
    created = int(stream.created)
    n_prompt = prompt_tokens(stream_request.prompt)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        encoder = ChunkEncoder(completion_id, stream.model, created, include_usage=include_usage,
                               prompt_tokens=n_prompt)
        return ChatEventStream(http_deps(request), stream, stream.attach(-1, Transport.CHAT, ctx.clock.now()), encoder)
    await ctx.run_to_end(stream, request)
    if stream.status != "done":
        status = 504 if stream.error_code == "upstream_timeout" else 502
        return openai_error(status, f"generation failed after {stream.tokens} tokens: {stream.error_code}",
                            stream.error_code)
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": created, "model": stream.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": stream.text(), "refusal": None},
                     "logprobs": None, "finish_reason": stream.finish_reason}],
        "usage": usage(n_prompt, stream.tokens),
    })


def _model_card(ctx: Context, name: str) -> dict:
    spec = ctx.settings.models.get(name)
    return {"id": name, "object": "model", "created": _STARTED,
            "owned_by": f"relay:{spec.kind}" if spec is not None else "gateway"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    ctx = context(request)
    return {"object": "list", "data": [_model_card(ctx, name) for name in ctx.registry.sources]}


@router.get("/v1/models/{model:path}", responses=openapi.MODEL)
async def get_model(model: str, request: Request):
    ctx = context(request)
    if model not in ctx.registry.sources:
        return openai_error(404, f"The model {model!r} does not exist", "model_not_found", param="model")
    return _model_card(ctx, model)
