"""The tools' command line: `python -m loadtests lab | probe | compare` (also as `python -m gateway ...`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "lab": "the gateway behind real nginx and HAProxy, on loopback ports",
    "probe": "check a deployment path: reachability, TTFT, buffering, idle gaps, resume",
    "compare": "run the transport comparison and write a report folder",
    "networks": "measure the network profiles and hard paths: the report's mobile, strict-proxy, tabs and dead-connection rows",
}


def main(argv: list[str] | None = None, prog: str = "python -m loadtests") -> int:
    from . import compare

    parser = argparse.ArgumentParser(prog=prog, description="The lab, the path probe and the comparison.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lab", help=COMMANDS["lab"])
    p.add_argument("--port", type=int, default=8000, help="base port: gateway here, proxies above it (0: free ports)")
    p.add_argument("--only", help="comma-separated proxy paths to start (default: all installed)")
    p.add_argument("--read-timeout", default="60s", help="the proxies' read timeout (default 60s)")
    p.add_argument("--measure", action="store_true", help="probe every path, print a table, and stop")
    p.add_argument("--idle", type=float, default=0.0, help="with --measure: idle gap to check, in seconds")
    p = sub.add_parser("probe", help=COMMANDS["probe"])
    p.add_argument("url", help="base URL of a gateway, directly or through proxies")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--idle", type=float, default=20.0, help="idle gap to survive, in seconds (0: skip)")
    p.add_argument("--tokens", type=int, default=40, help="tokens per test stream")
    p.add_argument("--itl-ms", type=float, default=50.0, help="gap between tokens as sent")
    p.add_argument("--profile", help="probe through a network profile (lab/links.py): good-4g, 3g, flaky-wifi, "
                                     "train, half-open")
    p = sub.add_parser("path", help="run one lab path in the foreground (a container of compose.yaml)")
    p.add_argument("name", help="a lab path: nginx-tuned, haproxy, 3g, ...")
    p.add_argument("--listen", default="0.0.0.0:8080", help="host:port the proxy listens on")
    p.add_argument("--upstream", action="append", required=True, help="host:port behind it (twice for nginx-lb)")
    p.add_argument("--read-timeout", default="60s", help="the proxy's read timeout (default 60s)")
    p.add_argument("--run-dir", type=Path, default=Path("/tmp/lab-path"), help="rendered configuration and temp files")
    compare.add_parser(sub)
    sub.add_parser("networks", help=COMMANDS["networks"], add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["networks"]:
        from .networks import main as networks

        return networks(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "path":
        from .lab import serve_path

        serve_path(args.name, args.listen, args.upstream, args.read_timeout, args.run_dir)
        return 1  # not reached: serve_path execs the proxy
    if args.command == "compare":
        return compare.main(args)
    if args.command == "lab":
        from .lab import run

        return run(args.port, tuple(args.only.split(",")) if args.only else None, args.read_timeout,
                   args.idle if args.measure else None)
    from .probe import main as probe

    return probe(args.url, as_json=args.json, idle_s=args.idle, tokens=args.tokens, itl_ms=args.itl_ms,
                 profile=args.profile)


if __name__ == "__main__":
    sys.exit(main())
