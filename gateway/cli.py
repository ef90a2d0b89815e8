"""Command line: `python -m gateway serve` (more subcommands join as the lab grows)."""

from __future__ import annotations

import argparse
import copy
import sys

__all__ = ["main", "serve"]


SERVERS = ("uvicorn", "hypercorn", "granian")


def serve(host: str | None = None, port: int | None = None, server: str = "uvicorn") -> None:
    """Run the gateway on `server`; every one drains on SIGTERM (gateway/drain.py, from the lifespan)."""
    from .settings import get_settings

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    if server == "uvicorn":
        _uvicorn(settings, host, port)
    elif server == "hypercorn":
        _hypercorn(settings, host, port)
    elif server == "granian":
        _granian(settings, host, port)
    else:
        raise ValueError(f"unknown server {server!r}; one of {SERVERS}")


def _uvicorn(settings, host: str, port: int) -> None:
    import uvicorn

    from .adapter.uvicorn import FastPath
    from .app import create_app

    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["gateway"] = {"handlers": ["default"], "level": settings.log_level.upper(),
                                        "propagate": False}
    config = uvicorn.Config(
        FastPath(create_app(settings)),  # the fast path is offered per connection, after a capability check
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        log_level=settings.log_level,
        log_config=log_config,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()


def _hypercorn(settings, host: str, port: int) -> None:
    import asyncio
    import signal

    import uvloop
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from .app import create_app

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.websocket_max_message_size = settings.ws_max_message_bytes
    config.graceful_timeout = 5
    config.loglevel = settings.log_level.upper()
    config.accesslog = None
    app = create_app(settings)

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

    Granian("gateway.app:create_app", factory=True, address=host, port=port, interface=Interfaces.ASGI,
            loop=Loops.uvloop, log_level=settings.log_level, websockets=True).serve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Stream model output over SSE, WebSocket and NDJSON.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway (simulated model by default)")
    p.add_argument("--host", help="bind address (default 127.0.0.1, or GATEWAY_HOST)")
    p.add_argument("--port", type=int, help="port (default 8000, or GATEWAY_PORT)")
    p.add_argument("--server", choices=SERVERS, default="uvicorn",
                   help="ASGI server (default uvicorn; see docs/servers.md)")
    p = sub.add_parser("lab", help="the gateway behind real nginx and HAProxy, on loopback ports")
    p.add_argument("--port", type=int, default=8000, help="base port: gateway here, proxies above it (0: free ports)")
    p.add_argument("--only", help="comma-separated proxy paths to start (default: all installed)")
    p.add_argument("--read-timeout", default="60s", help="the proxies' read timeout (default 60s)")
    p.add_argument("--measure", action="store_true", help="probe every path, print a table, and stop")
    p.add_argument("--idle", type=float, default=0.0, help="with --measure: idle gap to check, in seconds")
    p = sub.add_parser("probe", help="check a deployment path: reachability, TTFT, buffering, idle gaps, resume")
    p.add_argument("url", help="base URL of a gateway, directly or through proxies")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--idle", type=float, default=20.0, help="idle gap to survive, in seconds (0: skip)")
    p.add_argument("--tokens", type=int, default=40, help="tokens per test stream")
    p.add_argument("--itl-ms", type=float, default=50.0, help="gap between tokens as sent")
    from . import compare
    compare.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.host, args.port, args.server)
    elif args.command == "compare":
        return compare.main(args)
    elif args.command == "lab":
        from .lab import run

        return run(args.port, tuple(args.only.split(",")) if args.only else None, args.read_timeout,
                   args.idle if args.measure else None)
    elif args.command == "probe":
        from .probe import main as probe

        return probe(args.url, as_json=args.json, idle_s=args.idle, tokens=args.tokens, itl_ms=args.itl_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
