"""The gateway's own stream API: create, status, cancel, attach by id, one-shot SSE/NDJSON, WebSocket,
and the not-streamed baseline (`POST /v1/complete`)."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from .. import openapi
from ..codecs import sse
from ..events import Reconnect
from ..guard import KEY, defer
from ..models import StreamRequest
from ..names import FORMAT, Transport
from ..problems import Problem
from ..render import problem, response
from ..service import Context
from ..stream import Stream
from ..transports import EventStream, WSSession
from .start import context, http_deps

__all__ = ["router", "parse_after"]

router = APIRouter()


def parse_after(value: str | None, name: str) -> int:
    """A resume point as the client sent it: a seq, or -1 / nothing for the start; a 400 problem otherwise."""
    if value is None or value == "" or value == "-1":
        return -1
    if not (value.isascii() and value.isdigit() and len(value) <= 18):  # int() would take "1_0", " 7", "٣"
        raise Problem(400, "Bad resume point", f"{name} must be a seq (ASCII digits) or -1, got {value[:40]!r}")
    return int(value)


def links(ctx: Context, stream: Stream) -> dict:
    base = f"/v1/streams/{stream.id}"
    out = {"id": stream.id, "sse": f"{base}/sse", "ndjson": f"{base}/ndjson", "ws": f"{base}/ws"}
    if ctx.auth.enabled:
        # For EventSource and WebSocket, which cannot send an Authorization header.
        out["token"] = token = ctx.auth.token(stream.id, stream.owner_key)
        for kind in ("sse", "ndjson", "ws"):
            out[kind] += "?token=" + token
    return out


@router.post("/v1/streams", status_code=201, responses=openapi.CREATE)
async def create_stream(body: StreamRequest, request: Request) -> JSONResponse:
    ctx = context(request)
    stream = await ctx.create(body, False, request.scope.get(KEY))
    return JSONResponse(links(ctx, stream), status_code=201,
                        headers={"Location": f"/v1/streams/{stream.id}", "X-Gateway-Worker": str(os.getpid())})


@router.get("/v1/streams/{stream_id}", responses=openapi.STATUS)
async def stream_status(stream_id: str, request: Request) -> dict:
    ctx = context(request)
    stream = await ctx.owned(stream_id, request.scope.get(KEY))
    return stream.status_info() | links(ctx, stream)


@router.delete("/v1/streams/{stream_id}", status_code=204, responses=openapi.CANCEL)
async def cancel_stream(stream_id: str, request: Request) -> Response:
    return await _cancel(stream_id, request, "delete")


@router.post("/v1/streams/{stream_id}/cancel", status_code=204, responses=openapi.CANCEL)
async def abort_stream(stream_id: str, request: Request) -> Response:
    """DELETE's twin for clients that can only POST (`navigator.sendBeacon` on page unload)."""
    return await _cancel(stream_id, request, "abort")


async def _cancel(stream_id: str, request: Request, reason: str) -> Response:
    ctx = context(request)
    await ctx.owned(stream_id, request.scope.get(KEY))
    done = await ctx.store.cancel(stream_id, reason)
    if done is None:
        raise Problem(404, "Stream not found", f"no stream {stream_id[:64]!r}", code="not_found")
    if not done:
        raise Problem(409, "Stream already ended", "nothing to cancel")
    return Response(status_code=204)


async def _attach(stream_id: str, after: int, transport: Transport, request: Request) -> EventStream:
    ctx = context(request)
    stream = await ctx.find(stream_id, after, request.scope.get(KEY))
    if after >= 0:
        ctx.stats[transport].resumes += 1
    return EventStream(http_deps(request), stream, stream.attach(after, transport, ctx.clock.now()), FORMAT[transport])


@router.get("/v1/streams/{stream_id}/sse", response_class=Response, responses=openapi.ATTACH["sse"])
async def attach_sse(
    stream_id: str,
    request: Request,
    last_event_id: Annotated[str | None, Header(json_schema_extra=openapi.SEQ)] = None,
    last_event_id_q: Annotated[str | None, Query(alias="last_event_id", json_schema_extra=openapi.SEQ)] = None,
):
    value = last_event_id if last_event_id is not None else last_event_id_q
    ctx = context(request)
    if ctx.draining:
        # EventSource gives up on a 503 but reconnects after a `retry` and a clean close.
        return Response(sse.encode(Reconnect(ctx.settings.sse_retry_ms)), media_type=sse.MEDIA_TYPE,
                        headers={"Cache-Control": "no-cache"})
    return await _attach(stream_id, parse_after(value, "Last-Event-ID"), Transport.SSE_GET, request)


@router.get("/v1/streams/{stream_id}/ndjson", response_class=Response, responses=openapi.ATTACH["ndjson"])
async def attach_ndjson(stream_id: str, request: Request,
                        after: Annotated[str | None, Query(json_schema_extra=openapi.SEQ)] = None):
    return await _attach(stream_id, parse_after(after, "after"), Transport.NDJSON, request)


async def _one_shot(body: StreamRequest, transport: Transport, request: Request) -> EventStream:
    ctx = context(request)
    stream = await ctx.create(body, True, request.scope.get(KEY))
    return EventStream(http_deps(request), stream, stream.attach(-1, transport, ctx.clock.now()), FORMAT[transport])


@router.post("/v1/sse", response_class=Response, responses=openapi.ONE_SHOT["sse"])
async def post_sse(body: StreamRequest, request: Request):
    return await _one_shot(body, Transport.SSE_POST, request)


@router.post("/v1/ndjson", response_class=Response, responses=openapi.ONE_SHOT["ndjson"])
async def post_ndjson(body: StreamRequest, request: Request):
    return await _one_shot(body, Transport.NDJSON, request)


@router.websocket("/v1/ws")
async def ws_session(websocket: WebSocket) -> None:
    await websocket.accept()
    session = WSSession(websocket.app.state.ws, websocket)
    if not defer(websocket.scope, session.run):
        await session.run()


@router.websocket("/v1/streams/{stream_id}/ws")
async def ws_attach(websocket: WebSocket, stream_id: str) -> None:
    ctx: Context = websocket.app.state.ctx
    try:
        after = parse_after(websocket.query_params.get("after"), "after")
        stream = await ctx.find(stream_id, after, websocket.scope.get(KEY))
    except Problem as exc:
        # Refuse before accepting: the client sees the HTTP status and problem body.
        await websocket.send_denial_response(response(exc))
        return
    await websocket.accept()
    if after >= 0:
        ctx.stats[Transport.WS].resumes += 1
    session = WSSession(websocket.app.state.ws, websocket, stream, after)
    if not defer(websocket.scope, session.run):
        await session.run()


@router.post("/v1/complete", responses=openapi.COMPLETE)
async def complete(body: StreamRequest, request: Request) -> JSONResponse:
    """The same generation, not streamed: the baseline for 'when not to stream'."""
    ctx = context(request)
    stream = await ctx.create(body, True, request.scope.get(KEY))
    await ctx.run_to_end(stream, request)
    if stream.status == "done":
        return JSONResponse({"id": stream.id, "model": stream.model, "text": stream.text(),
                             "tokens": stream.tokens, "finish_reason": stream.finish_reason,
                             "sha256": stream.sha256})
    status = 504 if stream.error_code == "upstream_timeout" else 502
    return problem(status, "Generation failed", f"the stream ended with {stream.error_code}",
                   code=stream.error_code, partial_text=stream.text(), tokens=stream.tokens)
