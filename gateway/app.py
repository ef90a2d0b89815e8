"""The FastAPI application: the service (`Context`), the edge, and one router per concern (gateway/api/)."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from . import chat, drain, memory, openapi
from .api import errors, health, messages, responses, streams
from .auth import install_log_filters
from .guard import Edge, Guard, cors
from .journal import configure as configure_journal
from .middleware import BodyLimit
from .page import add_page
from .service import Context
from .settings import Settings, get_settings
from .names import Transport
from .stream import set_write_window
from .transports import DropConnection, HttpDeps, WSDeps

__all__ = ["create_app", "Context"]  # Context lives in gateway/service.py

log = logging.getLogger("gateway")


class _App(FastAPI):
    """FastAPI behind the edge: the edge sees each connection before every other layer (error
    handling included), and runs a stream's body once they have all returned (guard.defer)."""

    def __init__(self, ctx: Context, **kw) -> None:
        super().__init__(**kw)
        self.edge = Edge(partial(FastAPI.__call__, self), ctx.settings.max_connections, ctx.stats.refused)

    async def __call__(self, scope, receive, send) -> None:
        await self.edge(scope, receive, send)


class _QuietDrops(logging.Filter):
    """Injected drops raise through uvicorn to cut the socket: not worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


def _transports(ctx: Context) -> tuple[HttpDeps, WSDeps]:
    """What the transports use, taken from the service once: they get no `Context`."""
    s = ctx.settings
    return (HttpDeps(ctx.stats, ctx.clock, s.max_batch_bytes, s.x_accel_buffering, s.sse_retry_ms, s.sse_retry_jitter),
            WSDeps(ctx.create, ctx.find, ctx.stats[Transport.WS], ctx.stats.refused, ctx.clock, ctx.rates,
                   s.max_batch_bytes, s.ws_max_message_bytes, s.ws_messages_per_s, s.sse_retry_ms))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    ctx = Context(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
        install_log_filters()  # attach tokens out of the servers' request lines; refused upgrades quiet
        configure_journal(settings)
        set_write_window(settings.write_window_ms / 1000)
        await ctx.open()
        # Everything alive now lives for the process: keep the cyclic GC from rescanning it.
        gc.collect()
        gc.freeze()
        # Streams make few reference cycles: collect young objects 70x less often
        # (measured: the collector's CPU fell from ~7% to ~4% at 1,000 streams).
        gc.set_threshold(50_000, 20, 100)
        memory.set_mmap_threshold(settings.malloc_mmap_threshold)
        drain.install(ctx)
        yield
        await ctx.close()

    app = _App(ctx, title="LLM stream gateway", version="0.1.0", lifespan=lifespan)
    app.state.ctx = ctx
    app.state.http, app.state.ws = _transports(ctx)  # read by the routers (gateway/api/start.py)
    openapi.install(app, settings, [
        ("/v1/chat/completions", chat.ChatRequest, ("max_tokens", "max_completion_tokens")),
        ("/v1/responses", responses.ResponsesRequest, ("max_output_tokens",)),
        ("/v1/messages", messages.MessagesRequest, ("max_tokens",))])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Guard, auth=ctx.auth, rates=ctx.rates, clock=ctx.clock, refused=ctx.stats.refused,
                       allowed_origins=settings.allowed_origins, metrics_public=settings.metrics_public,
                       docs_public=settings.docs_public, unauthorized_per_s=settings.unauthorized_per_s)
    if settings.allowed_origins:
        app.add_middleware(cors, origins=settings.allowed_origins)

    errors.install(app)
    # These routes go onto the app itself, not as an included router (FastAPI 0.165 includes one lazily, as
    # a single entry): the gate's stream-creating paths (cli.py) and a 405's Allow read `app.routes`. The
    # Responses and Messages routers stay included: they answer refusals in their APIs' own error shapes.
    app.router.routes.extend([*streams.router.routes, *chat.router.routes])
    app.include_router(responses.router)
    app.include_router(messages.router)
    add_page(app)
    app.router.routes.extend(health.router.routes)
    return app
