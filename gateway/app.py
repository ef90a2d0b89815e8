"""The FastAPI application: routes of the public API over the registry and transports."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Literal

from fastapi import FastAPI, Header, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from .api import messages, responses
from .auth import install_log_filters
from .names import FORMAT, Transport
from .chat import ChatRequest, add_openai_routes
from .codecs import sse
from .events import Reconnect
from .guard import KEY, Edge, Guard, cors, defer
from .journal import configure as configure_journal
from .middleware import BodyLimit
from . import drain, memory, openapi
from .models import StreamRequest
from .page import add_page
from .problems import Problem, problem
from .registry import UnknownModel
from .service import Context
from .settings import Settings, get_settings
from .sources.base import PreStreamError
from .stream import Stream, set_write_window
from .transports import DropConnection, EventStream, WSSession
from .workers import fleet_metrics

__all__ = ["create_app", "Context"]  # Context lives in gateway/service.py

log = logging.getLogger("gateway")


class _App(FastAPI):
    """FastAPI behind the edge: the edge sees each connection before every other layer (error
    handling included), and runs a stream's body once they have all returned (guard.defer)."""

    def __init__(self, ctx: Context, **kw) -> None:
        super().__init__(**kw)
        self.edge = Edge(partial(FastAPI.__call__, self), ctx)

    async def __call__(self, scope, receive, send) -> None:
        await self.edge(scope, receive, send)


class _QuietDrops(logging.Filter):
    """Injected drops raise through uvicorn to cut the socket: not worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


def _parse_after(value: str | None, name: str) -> int:
    if value is None or value == "":
        return -1
    if value == "-1":
        return -1
    if not (value.isascii() and value.isdigit() and len(value) <= 18):  # int() would take "1_0", " 7", "٣"
        raise Problem(400, "Bad resume point", f"{name} must be a seq (ASCII digits) or -1, got {value[:40]!r}")
    return int(value)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    ctx = Context(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
        install_log_filters()  # attach tokens out of the servers' request lines; refused upgrades quiet
        configure_journal(settings)
        set_write_window(settings.write_window_ms / 1000)
        await ctx.store.open()
        ctx.registry.start()
        ctx.admission.start()
        # Everything alive now lives for the process: keep the cyclic GC from rescanning it.
        gc.collect()
        gc.freeze()
        # Streams make few reference cycles: collect young objects 70x less often
        # (measured: the collector's CPU fell from ~7% to ~4% at 1,000 streams).
        gc.set_threshold(50_000, 20, 100)
        memory.set_mmap_threshold(settings.malloc_mmap_threshold)
        drain.install(ctx)
        yield
        for stream in ctx.store.local():
            stream.cancel("shutdown")
        ctx.clock.stop()
        ctx.admission.stop()
        await ctx.store.close()
        await ctx.registry.aclose()

    app = _App(ctx, title="LLM stream gateway", version="0.1.0", lifespan=lifespan)
    app.state.ctx = ctx
    openapi.install(app, settings, [
        ("/v1/chat/completions", ChatRequest, ("max_tokens", "max_completion_tokens")),
        ("/v1/responses", responses.ResponsesRequest, ("max_output_tokens",)),
        ("/v1/messages", messages.MessagesRequest, ("max_tokens",))])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Guard, ctx=ctx)
    if settings.allowed_origins:
        app.add_middleware(cors, ctx=ctx)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return exc.response()

    @app.exception_handler(PreStreamError)
    async def _refused(request: Request, exc: PreStreamError) -> JSONResponse:
        return problem(exc.status, "Model refused the request", exc.detail,
                       retry_after=exc.retry_after, code=exc.code)

    @app.exception_handler(UnknownModel)
    async def _unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
        return problem(404, "Model not found", f"unknown model {exc}", code="model_not_found")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return problem(422, "Invalid request", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                         for e in errors), errors=errors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        response = problem(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first route's methods only
            response.headers["Allow"] = openapi.allowed(app, request.scope)
        return response

    def links(stream: Stream) -> dict:
        base = f"/v1/streams/{stream.id}"
        out = {"id": stream.id, "sse": f"{base}/sse", "ndjson": f"{base}/ndjson", "ws": f"{base}/ws"}
        if ctx.auth.enabled:
            # For EventSource and WebSocket, which cannot send an Authorization header.
            out["token"] = token = ctx.auth.token(stream.id, stream.owner_key)
            for kind in ("sse", "ndjson", "ws"):
                out[kind] += "?token=" + token
        return out

    @app.post("/v1/streams", status_code=201, responses=openapi.CREATE)
    async def create_stream(body: StreamRequest, request: Request) -> JSONResponse:
        stream = await ctx.create(body, False, request.scope.get(KEY))
        out = links(stream)
        return JSONResponse(out, status_code=201, headers={"Location": f"/v1/streams/{stream.id}",
                                                           "X-Gateway-Worker": str(os.getpid())})

    @app.get("/v1/streams/{stream_id}", responses=openapi.STATUS)
    async def stream_status(stream_id: str, request: Request) -> dict:
        stream = await ctx.owned(stream_id, request.scope.get(KEY))
        return stream.status_info() | links(stream)

    @app.delete("/v1/streams/{stream_id}", status_code=204, responses=openapi.CANCEL)
    async def cancel_stream(stream_id: str, request: Request) -> Response:
        return await cancel(stream_id, request, "delete")

    @app.post("/v1/streams/{stream_id}/cancel", status_code=204, responses=openapi.CANCEL)
    async def abort_stream(stream_id: str, request: Request) -> Response:
        """DELETE's twin for clients that can only POST (`navigator.sendBeacon` on page unload)."""
        return await cancel(stream_id, request, "abort")

    async def cancel(stream_id: str, request: Request, reason: str) -> Response:
        await ctx.owned(stream_id, request.scope.get(KEY))
        done = await ctx.store.cancel(stream_id, reason)
        if done is None:
            raise Problem(404, "Stream not found", f"no stream {stream_id[:64]!r}", code="not_found")
        if not done:
            raise Problem(409, "Stream already ended", "nothing to cancel")
        return Response(status_code=204)

    async def attach(stream_id: str, after: int, transport: Transport, request: Request) -> EventStream:
        stream = await ctx.find(stream_id, after, request.scope.get(KEY))
        if after >= 0:
            ctx.stats[transport].resumes += 1
        return EventStream(ctx, stream, stream.attach(after, transport, ctx.clock.now()), FORMAT[transport])

    @app.get("/v1/streams/{stream_id}/sse", response_class=Response, responses=openapi.ATTACH["sse"])
    async def attach_sse(
        stream_id: str,
        request: Request,
        last_event_id: Annotated[str | None, Header(json_schema_extra=openapi.SEQ)] = None,
        last_event_id_q: Annotated[str | None, Query(alias="last_event_id", json_schema_extra=openapi.SEQ)] = None,
    ):
        value = last_event_id if last_event_id is not None else last_event_id_q
        if ctx.draining:
            # EventSource gives up on a 503 but reconnects after a `retry` and a clean close.
            return Response(sse.encode(Reconnect(settings.sse_retry_ms)), media_type=sse.MEDIA_TYPE,
                            headers={"Cache-Control": "no-cache"})
        return await attach(stream_id, _parse_after(value, "Last-Event-ID"), Transport.SSE_GET, request)

    @app.get("/v1/streams/{stream_id}/ndjson", response_class=Response, responses=openapi.ATTACH["ndjson"])
    async def attach_ndjson(stream_id: str, request: Request, after: Annotated[str | None, Query(json_schema_extra=openapi.SEQ)] = None):
        return await attach(stream_id, _parse_after(after, "after"), Transport.NDJSON, request)

    async def one_shot(body: StreamRequest, transport: Transport, request: Request) -> EventStream:
        stream = await ctx.create(body, True, request.scope.get(KEY))
        return EventStream(ctx, stream, stream.attach(-1, transport, ctx.clock.now()), FORMAT[transport])

    @app.post("/v1/sse", response_class=Response, responses=openapi.ONE_SHOT["sse"])
    async def post_sse(body: StreamRequest, request: Request):
        return await one_shot(body, Transport.SSE_POST, request)

    @app.post("/v1/ndjson", response_class=Response, responses=openapi.ONE_SHOT["ndjson"])
    async def post_ndjson(body: StreamRequest, request: Request):
        return await one_shot(body, Transport.NDJSON, request)

    @app.websocket("/v1/ws")
    async def ws_session(websocket: WebSocket) -> None:
        await websocket.accept()
        session = WSSession(ctx, websocket)
        if not defer(websocket.scope, session.run):
            await session.run()

    @app.websocket("/v1/streams/{stream_id}/ws")
    async def ws_attach(websocket: WebSocket, stream_id: str) -> None:
        try:
            after = _parse_after(websocket.query_params.get("after"), "after")
            stream = await ctx.find(stream_id, after, websocket.scope.get(KEY))
        except Problem as exc:
            # Refuse before accepting: the client sees the HTTP status and problem body.
            await websocket.send_denial_response(exc.response())
            return
        await websocket.accept()
        if after >= 0:
            ctx.stats[Transport.WS].resumes += 1
        session = WSSession(ctx, websocket)
        if not defer(websocket.scope, lambda: session.run(stream, after)):
            await session.run(stream, after)

    @app.post("/v1/complete", responses=openapi.COMPLETE)
    async def complete(body: StreamRequest, request: Request) -> JSONResponse:
        """The same generation, not streamed: the baseline for 'when not to stream'."""
        stream = await ctx.create(body, True, request.scope.get(KEY))
        await ctx.run_to_end(stream, request)
        if stream.status == "done":
            return JSONResponse({"id": stream.id, "model": stream.model, "text": stream.text(),
                                 "tokens": stream.tokens, "finish_reason": stream.finish_reason,
                                 "sha256": stream.sha256})
        status = 504 if stream.error_code == "upstream_timeout" else 502
        return problem(status, "Generation failed", f"the stream ended with {stream.error_code}",
                       code=stream.error_code, partial_text=stream.text(), tokens=stream.tokens)

    add_openai_routes(app, ctx)
    app.include_router(responses.router)
    app.include_router(messages.router)

    add_page(app)

    @app.get("/healthz", responses=openapi.OPEN)
    async def healthz() -> JSONResponse:
        # 503 while draining or while the store cannot take new streams, so a load balancer
        # sends clients elsewhere.
        status = "draining" if ctx.draining else "ok" if ctx.store.ready else "store_unavailable"
        body = {"status": status, "active_streams": ctx.stats.active_streams,
                "kept_streams": len(ctx.store.local()), "pid": os.getpid(), "worker": settings.worker}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", response_class=Response, responses=openapi.METRICS)
    async def metrics(worker: Annotated[Literal["self", "all"], Query()] = "all") -> Response:
        if settings.worker is None or len(settings.worker_ports) < 2 or worker == "self":
            body = generate_latest(ctx.stats.registry)
        else:  # `serve --workers`: every worker's figures, labelled (gateway/workers.py)
            body = await fleet_metrics(ctx.stats.registry, settings.worker, settings.worker_ports)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app
