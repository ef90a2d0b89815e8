"""Speed benchmark: the gateway and the naive peers, same load, same run, side by side.

For each transport and N it starts a fresh server (the gateway, then each
baseline from `peers.py`) pinned to one core, drives it from a load client
pinned to the other (`load.py`), and prints one row per server: delivered
token events per second, server CPU per event (utime + stime from /proc),
lateness of tokens against the source's schedule, memory per open stream
(RSS growth / N), and the gateway's ratio to each peer.

    python -m loadtests.bench.speed --n 100,1000,2000 --transports sse_post,ndjson,ws
    python -m loadtests.bench.speed --n 100,1000 --peers none      # the gateway alone
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gateway.names import parse

from ..procs import ROOT, free_port, stop, wait_port

from .peers import PEERS

__all__ = ["main", "run_one", "table"]

# What the benchmark sets on the gateway: quiet logs; ended streams kept 2 s
# instead of 300 s (resume still works), so RSS growth measures open streams.
GATEWAY_ENV = {"GATEWAY_LOG_LEVEL": "warning", "GATEWAY_TTL_S": "2"}


def _cores() -> tuple[set[int], set[int]]:
    """Server core, client core: separate when the machine has two or more."""
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, {cores[1]}) if len(cores) > 1 else ({cores[0]}, {cores[0]})


def _prioritize(nice: int) -> None:
    """In the child: a session of its own at `nice` (with autogroups on, plain nice only ranks
    processes within one session, so other sessions' tests would still get an equal share)."""
    if not nice:
        return
    os.setsid()
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass
    os.nice(nice)


def server_command(server: str, port: int) -> tuple[list[str], dict[str, str]]:
    if server.startswith("gateway"):
        # "gateway w40": the gateway with a 40 ms write window (each connection writes once per window);
        # "gateway@granian": on another ASGI server (`gateway serve --server`).
        name, _, asgi = server.partition("@")
        window = name.partition(" w")[2] or "0"
        return ([sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--server", asgi or "uvicorn", "--workers", "1"],
                {**GATEWAY_ENV, "GATEWAY_WRITE_WINDOW_MS": window})
    return [sys.executable, "-m", "loadtests.bench.peers", server, str(port)], {}


def run_one(server: str, transport: str, n: int, args: argparse.Namespace) -> dict:
    """One server, one transport, one N: a fresh server process, measured by a fresh client process."""
    server_core, client_core = _cores()
    ramp = _ramp(args, n)
    port = free_port()
    cmd, env = server_command(server, port)
    nice = -args.priority
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            preexec_fn=lambda: _prioritize(nice))
    try:
        os.sched_setaffinity(proc.pid, server_core)
        wait_port(port, proc)
        time.sleep(0.5)  # let start-up settle before the idle RSS is read
        pid = _serving_pid(proc.pid)  # granian serves from a worker process it starts
        os.sched_setaffinity(pid, server_core)
        load = [sys.executable, "-m", "loadtests.bench.load", "--port", str(port), "--transport", transport,
                "--n", str(n), "--server-pid", str(pid), "--tokens", str(args.tokens),
                "--itl-ms", str(args.itl_ms), "--ttft-ms", str(args.ttft_ms), "--ramp", str(ramp),
                "--warmup", str(args.warmup), "--duration", str(args.duration)]
        if server.startswith("gateway"):
            load.append("--check-text")
        client = subprocess.Popen(load, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: (os.sched_setaffinity(0, client_core), _prioritize(nice)))
        timeout = ramp + args.warmup + args.duration + args.tokens * args.itl_ms / 1000 + 60
        if args.profile and server.startswith("gateway"):
            profile(pid, ramp + args.warmup, args, args.profile / f"{server.replace(' ', '-')}-{transport}-{n}.txt")
        out, _ = client.communicate(timeout=timeout)
        if client.returncode != 0:
            raise RuntimeError(f"load client failed ({client.returncode})")
        row = json.loads(out.strip().splitlines()[-1])
    finally:
        stop(proc, 10)
    row["server"] = server
    return row


def _serving_pid(pid: int) -> int:
    """The process that serves: `pid`, or its only child process if it has one (a server's worker)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return pid
    return int(children[0]) if len(children) == 1 else pid


def _ramp(args: argparse.Namespace, n: int) -> float:
    return args.ramp if args.ramp is not None else max(2.0, n / 400)


def profile(pid: int, delay: float, args: argparse.Namespace, out: Path) -> None:
    """py-spy over the measured window (folded stacks, with native frames off), for finding the hot path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    time.sleep(delay)
    subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration", str(int(args.duration)), "--rate", "250",
                    "--format", "raw", "--output", str(out)], check=False, capture_output=True)


HEAD = ("transport", "N", "server", "events/s", "of offered", "us/event", "late p50 ms", "late p99 ms",
        "start p99 ms", "KB/stream", "server wait", "client CPU", "witness", "gateway CPU x")


def table(rows: list[dict]) -> str:
    """Markdown table; the last column is how many times cheaper per event the gateway is than that row."""
    gw = {(r["transport"], r["n"]): r for r in rows if r["server"] == "gateway"}
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in rows:
        g = gw.get((r["transport"], r["n"]))
        if g is None or r["server"].startswith("gateway"):
            ratio = ""
        elif not g["us_per_event"]:  # the gateway's CPU read 0 ticks (a run too short to measure)
            ratio = "n/a"
        else:
            ratio = f"{r['us_per_event'] / g['us_per_event']:.1f}x"
        cells = (r["transport"], r["n"], r["server"], f"{r['events_per_s']:.0f}",
                 f"{r['events_per_s'] / r['offered_per_s']:.0%}", f"{r['us_per_event']:.1f}",
                 f"{r['late_p50_ms']:.0f}", f"{r['late_p99_ms']:.0f}", f"{r['start_p99_ms']:.0f}",
                 f"{r['kb_per_stream']:.1f}", f"{r['server_wait_share']:.0%}", f"{r['client_cpu_share']:.0%}", r["witness"] if not r["errors"] else f"{r['witness']}, "
                 f"{r['errors']} errors", ratio)
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", default="100,1000,2000", help="concurrent streams, comma-separated")
    p.add_argument("--transports", default="sse_post,ndjson,ws",
                   help="sse_post (or sse), ndjson, ws; sse_get (create, then attach by id: the gateway only, "
                   "with --peers none)")
    p.add_argument("--peers", default="all", help="'all', 'none', or a comma-separated list of "
                   + ", ".join(PEERS))
    p.add_argument("--windows", default="0", help="gateway write windows in ms, comma-separated (0: one "
                   "write per event; e.g. 0,40 adds a 'gateway w40' row)")
    p.add_argument("--servers", default="uvicorn", help="ASGI servers to run the gateway on, comma-separated "
                   "(uvicorn, hypercorn, granian; each but uvicorn adds a 'gateway@NAME' row)")
    p.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    p.add_argument("--itl-ms", type=float, default=20.0, help="gap between tokens (20 ms = 50 tokens/s)")
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--ramp", type=float, help="seconds to open the N streams (default N/400, at least 2: "
                   "a faster burst of new streams queues their requests for seconds at 2,000)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--priority", type=int, default=0, metavar="K",
                   help="run server and client K nice levels above normal (root): less noise on a shared machine")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--profile", type=Path, help="record py-spy profiles of the gateway into this folder")
    args = p.parse_args(argv)
    ns = [int(x) for x in args.n.split(",")]
    transports = [parse(name).value for name in args.transports.split(",")]
    peers = [] if args.peers == "none" else list(PEERS) if args.peers == "all" else args.peers.split(",")
    rows = []
    for transport in transports:
        for n in ns:
            gateways = ["gateway" if w in ("0", "") else f"gateway w{w}" for w in args.windows.split(",")]
            gateways += [f"gateway@{name}" for name in args.servers.split(",") if name != "uvicorn"]
            for server in [*gateways, *[q for q in peers if transport in PEERS[q]]]:
                try:
                    row = run_one(server, transport, n, args)
                except Exception as exc:  # a peer that falls over is a result, not a crash
                    print(f"{server} {transport} N={n}: {exc}", file=sys.stderr)
                    continue
                rows.append(row)
                print(f"{transport:8} N={n:<5} {server:14} {row['events_per_s']:8.0f} ev/s "
                      f"{row['us_per_event']:6.1f} us/ev p50/p99 {row['late_p50_ms']:.0f}/{row['late_p99_ms']:.0f} ms "
                      f"start {row['start_p99_ms']:.0f} ms "
                      f"{row['kb_per_stream']:5.1f} KB server {row['server_cpu_share']:.0%} client {row['client_cpu_share']:.0%} "
                      f"lag {row['client_lag_p99_ms']:.0f} ms waits {row['server_wait_share']:.0%}/"
                      f"{row['client_wait_share']:.0%} {row['witness']}",
                      file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
