"""Command line: `python -m gateway serve` (more subcommands join as the lab grows)."""

from __future__ import annotations

import argparse
import copy
import sys

__all__ = ["main", "serve"]


def serve(host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from .app import create_app
    from .settings import get_settings

    settings = get_settings()
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["gateway"] = {"handlers": ["default"], "level": settings.log_level.upper(),
                                        "propagate": False}
    config = uvicorn.Config(
        create_app(settings),
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
    uvicorn.Server(config).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Stream model output over SSE, WebSocket and NDJSON.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway (simulated model by default)")
    p.add_argument("--host", help="bind address (default 127.0.0.1, or GATEWAY_HOST)")
    p.add_argument("--port", type=int, help="port (default 8000, or GATEWAY_PORT)")
    from . import compare
    compare.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.host, args.port)
    elif args.command == "compare":
        return compare.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
