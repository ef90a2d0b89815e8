"""The FastAPI application: routes of the public API over the registry and transports."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Header, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from .api import messages, responses
from .auth import Auth, install_log_filters
from .chat import add_openai_routes
from .clock import Clock
from .codecs import sse
from .events import Reconnect
from .guard import KEY, Edge, Guard, cors, defer
from .journal import configure as configure_journal
from .limits import Buckets
from .metrics import Stats
from .middleware import BodyLimit
from . import memory, openapi
from .models import StreamRequest
from .page import add_page
from .problems import Problem, problem
from .registry import Registry, UnknownModel
from .settings import Settings, get_settings
from .sources.base import PreStreamError
from .store import make_store
from .stream import Stream, set_write_window
from .transports import DropConnection, EventStream, WSSession

__all__ = ["create_app", "Context"]

log = logging.getLogger("gateway")


class Context:
    """Everything a request handler needs, built once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = Clock()
        self.stats = Stats()
        self.store = make_store(settings, self.clock, self.stats)
        self.registry = Registry(settings, self.clock, self.stats, self.store)
        self.auth = Auth(settings)
        self.rates = Buckets(settings.rate_per_key) if settings.rate_per_key else None
        self.draining = False  # SIGTERM came: no new streams or clients here (gateway/drain.py)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise Problem(503, "Draining", "this replica is shutting down: use another one",
                          retry_after=1, code="draining")

    def check_request(self, request: StreamRequest) -> None:
        self.refuse_if_draining()
        s = self.settings
        if "max_tokens" not in request.model_fields_set:  # the default, never over this server's limit
            request.max_tokens = min(request.max_tokens, s.max_tokens_limit)
        if len(request.prompt.encode()) > s.max_prompt_bytes:
            raise Problem(413, "Prompt too large", f"the prompt is over {s.max_prompt_bytes} bytes")
        if request.max_tokens > s.max_tokens_limit:
            raise Problem(422, "Invalid request", f"max_tokens is over the limit of {s.max_tokens_limit}")

    async def owned(self, stream_id: str, key: str | None) -> Stream:
        """The stream if `key` owns it; another key's stream is not found (404, no existence oracle)."""
        stream = await self.store.get(stream_id)
        if stream is None or stream.owner_key != key:
            if stream is None and await self.store.expired(stream_id, key):
                raise Problem(410, "Stream expired", "the stream ended and its events are gone", code="expired")
            raise Problem(404, "Stream not found", f"no stream {stream_id[:64]!r}", code="not_found")
        return stream

    async def find(self, stream_id: str, after: int, key: str | None) -> Stream:
        """The stream to attach to, with the resume point checked; raises Problem."""
        self.refuse_if_draining()
        stream = await self.owned(stream_id, key)
        limit = self.settings.clients_per_stream
        if limit and len(stream.subs) >= limit:
            self.stats.refused["clients"] += 1
            raise Problem(429, "Too many clients", f"this stream has {limit} clients already",
                          retry_after=1, code="too_many_clients")
        last = stream.last_seq
        if after > last and stream.running and self.store.shared:
            # The client may have read up to `after` on another replica: this copy can lag behind.
            await self.store.catch_up(stream, after)
            last = stream.last_seq
        if after > last or (after == last and not stream.running):
            raise Problem(409, "Nothing to resume",
                          f"resume point {after} is past the stream's last event {last}"
                          + ("" if stream.running else " (the stream has ended)"), code="past_end")
        return stream

    async def create(self, request: StreamRequest, one_shot: bool, key: str | None = None) -> Stream:
        self.check_request(request)
        return await self.registry.create(request, one_shot=one_shot, owner_key=key)

    async def run_to_end(self, stream: Stream, request: Request) -> None:
        """Wait, unstreamed, until `stream` ends or the client leaves (which cancels it)."""
        sub = stream.attach(-1, "complete", self.clock.now())
        left = asyncio.get_running_loop().create_task(_disconnected(request))
        left.add_done_callback(lambda _: (setattr(sub, "gone", True), sub.wake()))
        try:
            while stream.running and not sub.gone:
                sub.cursor = len(stream.log)
                sub.beat = False  # no heartbeats here; left set, wait() would return at once, forever
                await stream.wait(sub)
        finally:
            left.cancel()
            stream.detach(sub, self.clock.now(), client_left=sub.gone)


class _App(FastAPI):
    async def __call__(self, scope, receive, send) -> None:
        # The server's own `send`, under every middleware: streams write their
        # events through it (after the response start went the usual way).
        scope["gateway.send"] = send
        try:
            await super().__call__(scope, receive, send)
        finally:
            # `send` is bound to uvicorn's request cycle, which holds this scope: left here, the
            # cycle and all it holds (transport, buffers) waited for a full GC (gateway/memory.py).
            scope.pop("gateway.send", None)


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
        # Everything alive now lives for the process: keep the cyclic GC from rescanning it.
        gc.collect()
        gc.freeze()
        # Streams make few reference cycles: collect young objects 70x less often
        # (measured: the collector's CPU fell from ~7% to ~4% at 1,000 streams).
        gc.set_threshold(50_000, 20, 100)
        memory.set_mmap_threshold(settings.malloc_mmap_threshold)
        yield
        for stream in ctx.store.local():
            stream.cancel("shutdown")
        ctx.clock.stop()
        await ctx.store.close()
        await ctx.registry.aclose()

    app = _App(title="LLM stream gateway", version="0.1.0", lifespan=lifespan)
    app.state.ctx = ctx
    openapi.install(app, settings)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Guard, ctx=ctx)
    if settings.allowed_origins:
        app.add_middleware(cors, ctx=ctx)
    stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: Edge(stack(), ctx)  # outermost, so it sees uvicorn's own send

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
        return JSONResponse(out, status_code=201, headers={"Location": f"/v1/streams/{stream.id}"})

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

    async def attach(stream_id: str, after: int, fmt: str, request: Request) -> EventStream:
        stream = await ctx.find(stream_id, after, request.scope.get(KEY))
        if after >= 0:
            ctx.stats[fmt].resumes += 1
        return EventStream(ctx, stream, stream.attach(after, fmt, ctx.clock.now()), fmt)

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
        return await attach(stream_id, _parse_after(value, "Last-Event-ID"), "sse", request)

    @app.get("/v1/streams/{stream_id}/ndjson", response_class=Response, responses=openapi.ATTACH["ndjson"])
    async def attach_ndjson(stream_id: str, request: Request, after: Annotated[str | None, Query(json_schema_extra=openapi.SEQ)] = None):
        return await attach(stream_id, _parse_after(after, "after"), "ndjson", request)

    async def one_shot(body: StreamRequest, fmt: str, request: Request) -> EventStream:
        stream = await ctx.create(body, True, request.scope.get(KEY))
        return EventStream(ctx, stream, stream.attach(-1, fmt, ctx.clock.now()), fmt)

    @app.post("/v1/sse", response_class=Response, responses=openapi.ONE_SHOT["sse"])
    async def post_sse(body: StreamRequest, request: Request):
        return await one_shot(body, "sse", request)

    @app.post("/v1/ndjson", response_class=Response, responses=openapi.ONE_SHOT["ndjson"])
    async def post_ndjson(body: StreamRequest, request: Request):
        return await one_shot(body, "ndjson", request)

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
            ctx.stats["ws"].resumes += 1
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
                "kept_streams": len(ctx.store.local())}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", response_class=Response, responses=openapi.METRICS)
    async def metrics() -> Response:
        return Response(generate_latest(ctx.stats.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
