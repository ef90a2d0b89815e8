"""`python -m gateway compare`: one command from question to answer, a transport comparison report."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from .matrix import PATHS, PRESETS, TRANSPORTS, Matrix, from_args

__all__ = ["add_parser", "main", "Matrix", "PRESETS"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compare", help="run the transport comparison and write a report folder",
                       description="Start the gateway (and proxies when the lab is present) on loopback, run "
                                   "Locust headless over a matrix of transports and concurrency levels, measure "
                                   "the gateway's cost, and write index.html, summary.md and the raw data.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: every transport, stock nginx and HAProxy, 3 runs a cell (11 min on a shared 2-core box); full: every path, up to 400 streams (about 50 min)")
    p.add_argument("--out", type=Path, help="report folder (default reports/compare-<time>)")
    p.add_argument("--transports", help=f"comma-separated, from {','.join(TRANSPORTS)}")
    p.add_argument("--concurrency", help="concurrent streams per load cell, comma-separated, e.g. 10,50,200")
    p.add_argument("--paths", help=f"deployment paths, comma-separated, from {','.join(PATHS)}")
    p.add_argument("--token-rate", type=float, help="tokens per second per stream (the simulated model's pace)")
    p.add_argument("--ttft-ms", type=float, help="the model's time to first token")
    p.add_argument("--max-tokens", type=int, help="tokens per answer")
    p.add_argument("--prompt-bytes", type=int, help="prompt size in bytes")
    p.add_argument("--drop-rate", type=float, help="share of streams cut mid-way in the reconnection cells (0 skips them)")
    p.add_argument("--duration", type=float, help="seconds per load cell")
    p.add_argument("--runs", type=int, help="runs of every cell (default 3; verdicts need 3 or more)")
    p.add_argument("--drop-by", help="reconnection cells, comma-separated: the user closes its socket (client), "
                                     "the gateway cuts (server), a lab relay resets each connection mid-stream "
                                     "(proxy); default client,proxy")
    p.add_argument("--locustfile", type=Path, help="another locustfile with the same arguments and rows")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--networks", metavar="measure|FILE",
                   help="decide mobile networks, strict proxies, many tabs and dead connections from the lab's "
                        "profiles and paths: 'measure' runs them (about 16 min), or a networks.json from "
                        "python -m loadtests networks")
    return p


def main(args: argparse.Namespace) -> int:
    from .runner import run

    matrix = from_args(args)
    out = args.out or Path("reports") / f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    index = run(matrix, out, locustfile=args.locustfile, quiet=args.quiet, networks=args.networks)
    print(index)
    return 0
