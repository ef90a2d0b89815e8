"""Command line: `python -m gateway serve`; `lab`, `probe` and `compare` forward to the tools (loadtests/)."""

from __future__ import annotations

import argparse
import copy
import importlib
import sys

__all__ = ["main", "serve", "SERVERS"]


SERVERS = ("uvicorn", "hypercorn", "granian")


def serve(host: str | None = None, port: int | None = None, server: str = "uvicorn", workers: int | None = None,
          fds: str | None = None) -> int:
    """Run the gateway on `server`; each drains on SIGTERM (gateway/drain.py, from the lifespan). With
    `workers` other than 1, a supervisor of that many uvicorn processes on the port (gateway/workers.py)."""
    import os

    from .app import create_app
    from .settings import get_settings

    try:
        settings = get_settings()
        if fds is None:
            n = workers if workers is not None else settings.workers
            if n == 0:
                n = (os.cpu_count() or 1) if settings.stream_store != "memory" else 1
            if n != 1:
                from . import workers as pool

                return pool.run(n, host or settings.host, port or settings.port, server)
        app = create_app(settings)
    except ValueError as exc:  # a setting that cannot work: say which, without a traceback
        sys.exit(f"gateway: {exc}")
    host, port = host or settings.host, port or settings.port
    if server == "uvicorn":
        _uvicorn(app, settings, host, port, fds)
    elif server == "hypercorn":
        _hypercorn(app, settings, host, port)
    elif server == "granian":
        del app  # granian's worker process builds its own, from the same settings
        _granian(settings, host, port)
    else:
        raise ValueError(f"unknown server {server!r}; one of {SERVERS}")
    return 0


def _uvicorn(app, settings, host: str, port: int, fds: str | None = None) -> None:
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from .adapter.uvicorn import FastPath
    from .gate import Gate, gated

    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["gateway"] = {"handlers": ["default"], "level": settings.log_level.upper(),
                                        "propagate": False}
    # uvicorn has no header timeout or header size limit under httptools: the gate adds them in
    # front of its parser (uvicorn's `http` option takes a protocol class); h11's own limit as well.
    from .admission import refusal

    ctx = app.state.ctx
    gate = Gate(settings.header_timeout_s, settings.max_header_bytes, settings.max_connections,
                settings.max_pending_connections, ctx.stats.refused, ctx.admission.over, refusal, _creates(app))
    config = uvicorn.Config(
        # FastPath offers the fast path per connection, after a capability check. It calls the app's edge
        # (gateway/guard.py) itself: the app's own `__call__` would only await it, a frame per connection.
        FastPath(app.edge),
        host=host,
        port=port,
        # uvloop, with listening sockets served by gateway/accept.py: bursts of accepts per wake-up,
        # not libuv's one per loop iteration (a start-up storm waited seconds in the accept queue).
        loop="gateway.accept:Loop" if settings.accept_burst else "uvloop",
        backlog=settings.backlog,
        http=gated(HttpToolsProtocol, gate),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_s,
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        log_level=settings.log_level,
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    from .accept import configure

    # Past capacity, a new stream's connection is refused as it is accepted.
    configure(settings.accept_burst, gate.screen)
    server = uvicorn.Server(config)
    if fds is None:
        # The socket bound here (uvicorn's own `bind_socket`), so that uvicorn hands it to the loop.
        server.run(sockets=[config.bind_socket()])
        return
    # A worker of `serve --workers`: its own socket on the shared port (bound now that the app is
    # built, so the kernel routes nothing here before), and its private one from the supervisor.
    import socket

    from .drain import stop_listening
    from .workers import listen

    app.state.ctx.stop_listening = lambda: stop_listening(server)
    server.run(sockets=[listen(host, port, settings.backlog), socket.socket(fileno=int(fds))])


def _creates(app) -> frozenset[bytes]:
    """The paths a POST to which creates a stream: the POST routes without path parameters (/v1/sse,
    /v1/streams, /v1/chat/completions, /v1/responses ...), from the app's routes and its OpenAPI paths
    (routers included into the app show there). Past capacity the gate refuses those at once."""
    paths = {r.path for r in app.routes if "POST" in (getattr(r, "methods", None) or ()) and "{" not in r.path}
    paths |= {p for p, ops in app.openapi().get("paths", {}).items() if "post" in ops and "{" not in p}
    return frozenset(p.encode() for p in paths)


def _hypercorn(app, settings, host: str, port: int) -> None:
    import asyncio
    import signal

    import uvloop
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.websocket_max_message_size = settings.ws_max_message_bytes
    # Hypercorn's own bounds for a request head and idle keep-alive (no header timeout option exists).
    config.h11_max_incomplete_size = settings.max_header_bytes
    config.keep_alive_timeout = settings.keep_alive_s
    config.graceful_timeout = 5
    config.loglevel = settings.log_level.upper()
    config.accesslog = None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # The drain (installed by the lifespan) runs first, then hands the signal on to this.
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        await hypercorn_serve(app, config, shutdown_trigger=stop.wait)

    uvloop.run(main())


def _granian(settings, host: str, port: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    # Granian's own header timeout and read buffer bound (what the gate adds in front of uvicorn).
    http1 = HTTP1Settings(header_read_timeout=int(settings.header_timeout_s * 1000) or 30_000,
                          max_buffer_size=max(settings.max_header_bytes, 65_536))
    Granian("gateway.app:create_app", factory=True, address=host, port=port, interface=Interfaces.ASGI,
            loop=Loops.uvloop, log_level=settings.log_level, websockets=True, http1_settings=http1).serve()


# Tools that live beside the server package (loadtests/, installed with the lab extra): the server never
# imports them; these names forward to `python -m loadtests`.
TOOLS = ("lab", "probe", "compare")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        try:
            tools = importlib.import_module("loadtests.cli")
        except ModuleNotFoundError as exc:
            print(f"error: `{argv[0]}` is one of the tools (loadtests/), not importable here ({exc}); "
                  "run it from a clone with the lab extra: uv run --locked --extra lab python -m gateway "
                  f"{argv[0]}", file=sys.stderr)
            return 2
        return tools.main(argv, prog="python -m gateway")
    parser = argparse.ArgumentParser(prog="gateway", description="Stream model output over SSE, WebSocket and NDJSON.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway (simulated model by default)")
    p.add_argument("--host", help="bind address (default 127.0.0.1, or GATEWAY_HOST)")
    p.add_argument("--port", type=int, help="port (default 8000, or GATEWAY_PORT)")
    p.add_argument("--server", choices=SERVERS, default="uvicorn",
                   help="ASGI server (default uvicorn; see docs/servers.md)")
    p.add_argument("--workers", type=int, help="uvicorn processes on the one port (default: one per core with "
                   "the Redis store, else 1; GATEWAY_WORKERS); more than 1 needs GATEWAY_STREAM_STORE=redis")
    p.add_argument("--fds", help=argparse.SUPPRESS)  # a worker's private socket, from the supervisor
    for name in TOOLS:
        sub.add_parser(name, help=f"a tool in loadtests/: python -m gateway {name} --help")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.host, args.port, args.server, args.workers, args.fds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
