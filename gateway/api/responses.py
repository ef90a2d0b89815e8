"""OpenAI's Responses API over the stream log: create, stream, resume, retrieve, cancel.

`POST /v1/responses` starts an ordinary stream (any source) and writes it as Responses events
(gateway/codecs/responses.py); the response id is `resp_` + the stream id, so the same stream can
also be read over SSE, NDJSON or WebSocket (`sequence_number` = seq + 3, docs/wire-contract.md).
With `background: true` the generation runs to its end whether or not a client is attached;
otherwise, as OpenAI does, a streamed response is cancelled when its client leaves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from .. import openapi
from ..chat import ChatEventStream, openai_error, prompt_tokens
from ..codecs.responses import RESPONSE_PREFIX, Cursor, ResponsesEncoder, response_object, status_of
from ..names import Transport
from ..guard import KEY
from ..log import KIND
from ..models import ChatMessage, SimParams, StreamRequest
from ..problems import Problem
from .start import context, http_deps, open_stream

if TYPE_CHECKING:
    from ..stream import Stream

__all__ = ["router", "ResponsesRequest", "snapshot"]

router = APIRouter()
_ERROR = KIND["error"]


class TextPart(BaseModel):
    """A text content part (images, files and audio are not served)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text", "output_text", "text"]
    text: str


class InputMessage(BaseModel):
    """One input item of role and content (`{"type": "message", ...}` or the short form)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]


class ResponsesRequest(BaseModel):
    """The fields of OpenAI's Responses request that mean something here; others are accepted and
    ignored. `seed` and `sim` are extensions (the SDK's `extra_body`)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=200)
    input: Annotated[str, Field(min_length=1)] | Annotated[list[InputMessage], Field(min_length=1, max_length=1000)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=1_000_000)
    stream: bool = False
    background: bool = False
    store: bool = True
    metadata: dict[str, str] | None = Field(None, max_length=16)
    seed: int | None = Field(None, ge=0, le=2**53 - 1)
    sim: SimParams | None = None

    def stream_request(self) -> StreamRequest:
        messages = []
        if self.instructions:
            messages.append(ChatMessage(role="system", content=self.instructions))
        items = [InputMessage(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        for item in items:
            content = item.content
            if not isinstance(content, str):
                content = [{"type": "text", "text": part.text} for part in content]
            messages.append(ChatMessage(role="system" if item.role == "developer" else item.role, content=content))
        fields: dict[str, Any] = {"messages": messages, "model": self.model}
        if self.max_output_tokens is not None:
            fields["max_tokens"] = self.max_output_tokens
        if self.seed is not None:
            fields["seed"] = self.seed
        if self.sim is not None:
            fields["sim"] = self.sim
        return StreamRequest(**fields)

    def echo(self) -> dict[str, Any]:
        return {"background": self.background, "instructions": self.instructions,
                "max_output_tokens": self.max_output_tokens, "metadata": self.metadata or {}, "store": self.store}


class ResponsesEventStream(ChatEventStream):
    """One subscriber's view of a stream as Responses events; a draining server just closes (the
    client resumes with `starting_after`)."""

    def reconnect(self) -> bytes:
        return b""


def _echo(stream: Stream) -> tuple[dict[str, Any] | None, int]:
    """The request fields a response repeats, and its input tokens: known where the stream was created."""
    info = stream.info.get("responses")
    return (info["echo"], info["input_tokens"]) if info else (None, 0)


def _encoder(stream: Stream, skip: int = 0) -> ResponsesEncoder:
    echo, input_tokens = _echo(stream)
    return ResponsesEncoder(stream.id, stream.model, int(stream.created), input_tokens=input_tokens, echo=echo,
                            skip=skip)


def snapshot(stream: Stream, status: str | None = None) -> dict:
    """The response as it stands (or with `status`, right after a cancel the log has not shown yet)."""
    log = stream.log
    last = log.kinds[-1] if not stream.running else None
    error = None
    if last == _ERROR:
        end = orjson.loads(log.json(len(log) - 1))
        error = {"code": end["code"], "message": end["message"], "retryable": end["retryable"]}
    echo, input_tokens = _echo(stream)
    return response_object(stream.id, stream.model, int(stream.created),
                            status or status_of(last, stream.finish_reason, stream.error_code),
                            stream.text(), tokens=stream.tokens, input_tokens=input_tokens, error=error, echo=echo)


def _stream_id(response_id: str) -> str:
    return response_id[len(RESPONSE_PREFIX):] if response_id.startswith(RESPONSE_PREFIX) else response_id


def _openai(exc: Problem) -> JSONResponse:
    """A refusal in OpenAI's error shape, so the SDK raises its usual exception."""
    return openai_error(exc.status, exc.detail or exc.title, exc.extra.get("code"), retry_after=exc.retry_after)


@router.post("/v1/responses", response_class=JSONResponse, responses=openapi.RESPONSES)
async def create_response(request: Request):
    opened = await open_stream(request, ResponsesRequest, ResponsesRequest.stream_request, openai_error,
                               one_shot=lambda body: not body.background)
    if isinstance(opened, JSONResponse):
        return opened
    body, stream_request, stream = opened
    ctx = context(request)
    stream.info["responses"] = {"echo": body.echo(), "input_tokens": prompt_tokens(stream_request.prompt)}
    if body.background:
        stream.keep = True  # no detach grace: a background response generates to its end
    if body.stream:
        sub = stream.attach(-1, Transport.RESPONSES, ctx.clock.now())
        return ResponsesEventStream(http_deps(request), stream, sub, _encoder(stream), "responses")
    if body.background:
        return JSONResponse(snapshot(stream, "queued" if stream.tokens == 0 else None))
    await ctx.run_to_end(stream, request)
    if stream.status != "done":
        status = 504 if stream.error_code == "upstream_timeout" else 502
        return openai_error(status, f"generation failed after {stream.tokens} tokens: {stream.error_code}",
                            stream.error_code)
    return JSONResponse(snapshot(stream))


@router.get("/v1/responses/{response_id}", response_class=JSONResponse, responses=openapi.RESPONSE)
async def retrieve_response(response_id: str, request: Request, stream: bool = False, starting_after: int = -1):
    """The response so far; with `stream=true`, its events after `starting_after` (exclusive)."""
    ctx = context(request)
    key = request.scope.get(KEY)
    try:
        found = await ctx.owned(_stream_id(response_id), key)
        if not stream:
            return JSONResponse(snapshot(found))
        if starting_after < -1:
            return openai_error(400, "starting_after must be >= -1", "invalid_request", param="starting_after")
        cursor = Cursor.of(starting_after, found.log, found.running)
        if cursor is None:
            return openai_error(409, f"no events after sequence_number {starting_after}: the response has ended",
                                "past_end", param="starting_after")
        found = await ctx.find(found.id, cursor.after, key)
    except Problem as exc:
        return _openai(exc)
    if starting_after >= 0:
        ctx.stats[Transport.RESPONSES].resumes += 1
    sub = found.attach(cursor.after, Transport.RESPONSES, ctx.clock.now())
    return ResponsesEventStream(http_deps(request), found, sub, _encoder(found, cursor.skip), "responses")


@router.post("/v1/responses/{response_id}/cancel", response_class=JSONResponse, responses=openapi.RESPONSE_CANCEL)
async def cancel_response(response_id: str, request: Request):
    """Stop the generation; the stream ends with `response.failed` (status `cancelled`). Idempotent."""
    try:
        found = await context(request).owned(_stream_id(response_id), request.scope.get(KEY))
    except Problem as exc:
        return _openai(exc)
    cancelled = await context(request).store.cancel(found.id, "cancel")
    return JSONResponse(snapshot(found, "cancelled" if cancelled else None))

