"""Start-up storm: N streams opened over a short ramp, time to first token per stream, and refusals.

Each server (the gateway as it ships, the gateway with admission on, and the naive peers) runs fresh,
pinned to one core; this client, pinned to the other, opens N one-shot SSE streams (`POST /v1/sse`)
evenly over `--ramp` seconds on raw asyncio connections, and notes per stream the time from its
connect call to its first token, less the model's own TTFT, or its 503 (with or without
`Retry-After`) and how fast that came. A refused stream is not retried here: the figure is what the
first attempt met. On a shared machine `--priority K` runs server and client at nice -K in sessions
of their own (as `speed.py` does), so other work on the cores weighs less on the figures.

    python -m loadtests.bench.storm --n 2000 --ramp 2 --servers gateway,gateway-admit,fastapi,floor --priority 15

Several cores: `gateway-w2` is `gateway serve --workers 2` on a throwaway redis-server (the Redis store, as
workers need), `gateway-redis` one worker on it; `-admitMS` after either sets ADMIT_LAG_MS. Two workers
cannot have a core each and leave one to the client on a two-core machine, so these rows (and every row
with `--shared-cores`) run unpinned: servers, Redis and client share the cores, as the `cores` field says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter

from ..procs import ROOT, RedisServer, free_port, stop, wait_port
from .fleet import raise_fd_limit
from .speed import GATEWAY_ENV, _cores, _prioritize, server_command

__all__ = ["main"]

# The gateway with admission: refuse new streams while its loop or its tokens run over 20 ms late.
ADMIT_ENV = {"GATEWAY_ADMIT_LAG_MS": "20"}


def admit_env(name: str) -> dict[str, str]:
    """Settings for a server name: "gateway-admit" (ADMIT_ENV), "gateway-admit50" (ADMIT_LAG_MS=50),
    "gateway-max1000" (MAX_STREAMS=1000), "gateway-stock" (uvloop's accept, one per loop iteration), or none;
    after a "gateway-w2" or "gateway-redis" prefix too ("gateway-w2-admit10")."""
    name = "gateway" + name.removeprefix(gateway_base(name))
    if name == "gateway-stock":
        return {"GATEWAY_ACCEPT_BURST": "0"}
    if name == "gateway-admit":
        return dict(ADMIT_ENV)
    if name.startswith("gateway-admit"):
        return {"GATEWAY_ADMIT_LAG_MS": name.removeprefix("gateway-admit")}
    if name.startswith("gateway-max"):
        return {"GATEWAY_MAX_STREAMS": name.removeprefix("gateway-max")}
    return {}


def gateway_base(name: str) -> str:
    """"gateway-w2" (two workers), "gateway-redis" (one, Redis store) or "gateway": the process layout."""
    for base in ("gateway-redis", *(f"gateway-w{n}" for n in range(2, 10))):
        if name == base or name.startswith(base + "-"):
            return base
    return "gateway"


def workers(name: str) -> int:
    base = gateway_base(name)
    return int(base.removeprefix("gateway-w")) if base.startswith("gateway-w") else 1


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Stream(asyncio.Protocol):
    def __init__(self, start: float, done: asyncio.Future) -> None:
        self.start, self.done = start, done
        self.head = b""
        self.status = 0
        self.first: float | None = None
        self.worker = b""  # X-Gateway-Worker: the process that served it

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.head += data
            if b"\r\n" not in self.head:
                return
            self.status = int(self.head[9:12])
            at = self.head.lower().find(b"\r\nx-gateway-worker: ")
            if at >= 0:
                self.worker = self.head[at + 20:self.head.find(b"\r\n", at + 2)]
            if self.status != 200 and not self.done.done():
                kind = "refused" if b"\r\nretry-after:" in self.head.lower() else "refused-no-retry-after"
                self.done.set_result((kind, time.perf_counter() - self.start, self.status))
            data = self.head
        if self.first is None and (b'"type":"token"' in data or b'"type": "token"' in data):
            self.first = time.perf_counter()
            if not self.done.done():
                self.done.set_result(("ok", self.first - self.start, self.status))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(("cut", time.perf_counter() - self.start, self.status))


async def one(port: int, body: bytes, at: float, out: list, workers: Counter) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, at - loop.time()))
    done = loop.create_future()
    start = time.perf_counter()
    try:
        transport, stream = await loop.create_connection(lambda: Stream(start, done), "127.0.0.1", port)
    except OSError:
        out.append(("error", time.perf_counter() - start, 0))
        return
    transport.write(b"POST /v1/sse HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    out.append(await done)
    workers[stream.worker] += 1
    # Keep the stream open to its end: the load stays what a real crowd would be.
    await asyncio.sleep(5.0)
    transport.close()


async def storm(port: int, n: int, ramp: float, tokens: int, itl_ms: float, ttft_ms: float,
                workers: Counter) -> list:
    body = json.dumps({"prompt": "storm", "max_tokens": tokens,
                       "sim": {"ttft_ms": ttft_ms, "itl_ms": itl_ms, "jitter": 0}}).encode()
    out: list = []
    t0 = asyncio.get_running_loop().time() + 0.2
    await asyncio.gather(*(one(port, body, t0 + ramp * i / n, out, workers) for i in range(n)))
    return out


def run_server(name: str, args: argparse.Namespace) -> dict:
    server_core, client_core = _cores()
    shared = args.shared_cores or gateway_base(name) != "gateway"
    if shared:
        server_core = client_core = server_core | client_core
    port = free_port()
    cmd, env = server_command("gateway" if name.startswith("gateway") else name, port)
    env = {**env, **admit_env(name)}
    n_workers = workers(name)
    rds = RedisServer() if gateway_base(name) != "gateway" else None
    served: Counter = Counter()  # answers per worker process (X-Gateway-Worker), refusals included
    if rds is not None:
        env |= {"GATEWAY_STREAM_STORE": "redis", "GATEWAY_REDIS_URL": rds.url}
        cmd[cmd.index("--workers") + 1] = str(n_workers)
    nice = -args.priority
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **GATEWAY_ENV, **env, "GATEWAY_WORKERS": str(n_workers)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: _prioritize(nice))
        try:
            os.sched_setaffinity(proc.pid, server_core)  # (the workers it starts inherit it)
            os.sched_setaffinity(0, client_core)
            wait_port(port, proc, 60)
            time.sleep(1.0 + n_workers)  # every worker up: each binds the port once its app is built
            results = asyncio.run(storm(port, args.n, args.ramp, args.tokens, args.itl_ms, args.ttft_ms, served))
        finally:
            stop(proc, 15)
    finally:
        if rds is not None:
            rds.stop()
    ok = [(t * 1000 - args.ttft_ms) for kind, t, _ in results if kind == "ok"]
    refused = [t * 1000 for kind, t, _ in results if kind == "refused"]
    return {"server": name, "cores": "shared" if shared else "pinned", "n": args.n, "ramp_s": args.ramp,
            "ok": len(ok), "refused": len(refused),
            "other": len(results) - len(ok) - len(refused),
            "ttft_p50_ms": pct(ok, 50), "ttft_p99_ms": pct(ok, 99), "ttft_max_ms": max(ok, default=float("nan")),
            "refusal_p99_ms": pct(refused, 99),
            "per_worker": sorted(served.values(), reverse=True) if len(served) > 1 or b"" not in served else []}


HEAD = ("server", "cores", "N", "ramp s", "streamed", "refused 503", "cut/error", "TTFT-model p50 ms", "p99 ms", "max ms",
        "503 in p99 ms")


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in rows:
        cells = (r["server"], r["cores"], r["n"], r["ramp_s"], r["ok"], r["refused"], r["other"], f"{r['ttft_p50_ms']:.0f}",
                 f"{r['ttft_p99_ms']:.0f}", f"{r['ttft_max_ms']:.0f}", f"{r['refusal_p99_ms']:.0f}")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="streams opened")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which they open")
    p.add_argument("--servers", default="gateway,gateway-admit,fastapi,floor",
                   help="gateway, gateway-admit (ADMIT_LAG_MS=20), gateway-admitMS (ADMIT_LAG_MS=MS), gateway-maxN "
                        "(MAX_STREAMS=N), gateway-stock (ACCEPT_BURST=0); gateway-w2[-admitMS] (serve --workers 2, "
                        "Redis store), gateway-redis[-admitMS] (one worker, Redis store); and peers of "
                        "loadtests/bench/peers.py")
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--ttft-ms", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--shared-cores", action="store_true",
                   help="run every server unpinned, sharing the cores with the client (always so for -w2/-redis)")
    p.add_argument("--priority", type=int, default=0, metavar="K",
                   help="run server and client at nice -K, each in a session of its own (needs the right to)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    raise_fd_limit(2 * args.n + 1024)  # this client's sockets, and the server's (it inherits the limit)
    if args.priority and os.getsid(0) != os.getpid():
        # This process is the client: again, in a session of its own at that priority.
        nice = -args.priority
        return subprocess.run([sys.executable, "-m", "loadtests.bench.storm", *(sys.argv[1:] if argv is None else argv)],
                              cwd=ROOT, preexec_fn=lambda: _prioritize(nice)).returncode
    rows = []
    for run in range(args.runs):
        for name in args.servers.split(","):
            row = run_server(name, args)
            row["run"] = run + 1
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
