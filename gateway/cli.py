"""Command line: `python -m gateway serve` (more subcommands join as the lab grows)."""

from __future__ import annotations

import argparse
import copy
import sys

__all__ = ["main", "serve"]


def serve(host: str | None = None, port: int | None = None, workers: int | None = None,
          fds: str | None = None) -> int:
    """One server process; with `workers` other than 1, a supervisor of that many (gateway/workers.py)."""
    import os
    import socket

    import uvicorn

    from .app import create_app
    from .drain import DrainingServer
    from .settings import get_settings

    settings = get_settings()
    if fds is None:
        from . import workers as pool

        n = workers if workers is not None else settings.workers
        if n == 0:
            n = (os.cpu_count() or 1) if settings.stream_store == "redis" else 1
        if n != 1:
            return pool.run(n, host or settings.host, port or settings.port, [])
    app = create_app(settings)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["gateway"] = {"handlers": ["default"], "level": settings.log_level.upper(),
                                        "propagate": False}
    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=port or settings.port,
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
    server = DrainingServer(config, app.state.ctx)
    if fds is None:
        server.run()
    else:  # a worker: the supervisor's sockets (the shared port, then its private one)
        server.stop_accepting = True
        server.run(sockets=[socket.socket(fileno=int(fd)) for fd in fds.split(",")])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Stream model output over SSE, WebSocket and NDJSON.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway (simulated model by default)")
    p.add_argument("--host", help="bind address (default 127.0.0.1, or GATEWAY_HOST)")
    p.add_argument("--port", type=int, help="port (default 8000, or GATEWAY_PORT)")
    p.add_argument("--workers", type=int, help="processes on the one port (default: one per core with the "
                   "Redis store, else 1; GATEWAY_WORKERS); more than 1 needs GATEWAY_STREAM_STORE=redis")
    p.add_argument("--fds", help=argparse.SUPPRESS)  # a worker's sockets, from the supervisor
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
        return serve(args.host, args.port, args.workers, args.fds)
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
