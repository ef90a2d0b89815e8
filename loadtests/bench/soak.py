"""Soak: many streams for a long time, some readers stalled; does memory stay flat and does nothing leak?

    python loadtests/bench/soak.py                       # 500 streams, 50 stalled, 10 minutes
    python loadtests/bench/soak.py --duration 60 --warmup 20 --streams 100 --stalled 10   # a quick look

Starts its own gateway (uvicorn, loopback) and keeps `--streams` streams open at all times:
`--stalled` of them have a reader that never reads, the rest are read to the end by the gateway's
own client over SSE, NDJSON and WebSocket in turn (each checks its text against the simulated
model's), spread over `--procs` load processes so the readers' own loops do not lag. Half the stalled readers sit on live streams (the kernel buffers what they do not read),
half ask for a large ended stream from its start (their writes block, and the gateway cuts them
after `send_timeout_s`). It samples the gateway's RSS and metrics every few seconds, then stops the
load and checks that streams and connections return to zero. Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.client import TRANSPORTS, Client  # noqa: E402
from gateway.sources.simulated import expected_text  # noqa: E402
from loadtests.procs import GatewayProcess as Gateway  # noqa: E402


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rpartition(" ")[2])
    return total


class Load:
    """One load process: its share of readers and stalled readers."""

    def __init__(self, args: argparse.Namespace, port: int, ids: range, t0: float) -> None:
        self.args = args
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ids = ids
        self.stop = False
        self.done = self.failed = self.wrong = 0
        self.gaps: list[tuple[float, float]] = []  # (time, inter-token gap) of normal readers
        self.ttfts: list[tuple[float, float]] = []
        self.backlog: str | None = None  # a large ended stream for the stalled readers that block
        self.t0 = t0
        self.sim = {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms, "jitter": 0.3}

    # -- load -----------------------------------------------------------------------------

    async def reader(self, client: Client, n: int) -> None:
        for i in itertools.count():
            if self.stop:
                return
            transport = TRANSPORTS[(n + i) % 3]
            prompt, seed = f"soak {n}", i
            try:
                r = await client.stream(transport, prompt, max_tokens=self.args.tokens, seed=seed, sim=self.sim)
            except Exception:
                self.failed += 1
                await asyncio.sleep(1)
                continue
            if r.done is None:
                self.failed += 1
                continue
            if r.text != expected_text(prompt, seed, self.args.tokens):
                self.wrong += 1
            self.done += 1
            now = time.time() - self.t0
            arr = r.token_arrivals
            self.ttfts.append((now, r.ttft))
            self.gaps.extend((now, b - a) for a, b in zip(arr, arr[1:]))

    async def stalled(self, client: Client, n: int) -> None:
        """Open a connection, read nothing, give up after a while, again."""
        loop = asyncio.get_running_loop()
        blocking = n % 2 == 1
        while not self.stop:
            if blocking:
                if self.backlog is None:
                    await asyncio.sleep(0.5)
                    continue
                path, hold = f"/v1/streams/{self.backlog}/sse", self.args.send_timeout + 3
            else:
                created = await client.create(f"stalled {n}", max_tokens=self.args.tokens, sim=self.sim)
                path = created["sse"]
                hold = (self.args.ttft_ms + self.args.tokens * self.args.itl_ms) / 1000 + 5
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", self.port))
                await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await asyncio.sleep(hold)
            finally:
                sock.close()

    async def refresh_backlog(self, client: Client) -> None:
        """A large ended stream; renewed well within its TTL."""
        while not self.stop:
            created = await client.create("backlog", max_tokens=self.args.backlog_tokens,
                                          sim={"ttft_ms": 0, "itl_ms": 0.05, "jitter": 0})
            self.backlog = created["id"]
            await asyncio.sleep(self.args.ttl / 2)

    async def run(self) -> dict:
        a = self.args
        normal = a.streams - a.stalled
        async with Client(self.url, read_timeout=120) as client:
            tasks = [asyncio.create_task(self.refresh_backlog(client))]
            for n in self.ids:
                task = self.reader(client, n) if n < normal else self.stalled(client, n)
                tasks.append(asyncio.create_task(task))
                await asyncio.sleep(a.ramp / len(self.ids))  # spread the starts
            await asyncio.sleep(max(0.0, a.duration - (time.time() - self.t0)))
            self.stop = True
            await asyncio.wait(tasks, timeout=(a.ttft_ms + a.tokens * a.itl_ms) / 1000 + a.send_timeout + 30)
            for t in tasks:
                t.cancel()
        return {"done": self.done, "failed": self.failed, "wrong": self.wrong, "gaps": self.gaps,
                "ttfts": self.ttfts}


def load_process(args: argparse.Namespace, port: int, ids: range, t0: float, out) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    out.put(asyncio.run(Load(args, port, ids, t0).run()))


class Soak:
    """Starts the load processes, samples the gateway, then checks that everything drains."""

    def __init__(self, args: argparse.Namespace, gw: Gateway) -> None:
        self.args = args
        self.gw = gw
        self.proc = psutil.Process(gw.proc.pid)
        self.stop = False
        self.samples: list[dict] = []
        self.t0 = time.time()
        self.done = self.failed = self.wrong = 0  # from the load processes, at the end
        self.gaps: list[tuple[float, float]] = []
        self.ttfts: list[tuple[float, float]] = []

    # -- watching ---------------------------------------------------------------------------

    async def sample(self, http: httpx.AsyncClient) -> dict:
        text = (await http.get("/metrics")).text
        health = (await http.get("/healthz")).json()
        s = {
            "t": round(time.time() - self.t0, 1),
            "rss_mb": round(self.proc.memory_info().rss / 2**20, 1),
            "cpu_s": round(sum(self.proc.cpu_times()[:2]), 1),
            "active_streams": health["active_streams"],
            "kept_streams": health["kept_streams"],
            "connections": metric(text, "gateway_connections{"),
            "slow_cuts": metric(text, "gateway_slow_cuts_total"),
            "created": metric(text, "gateway_streams_created_total"),
        }
        self.samples.append(s)
        return s

    async def watch(self, http: httpx.AsyncClient) -> None:
        while not self.stop:
            try:
                s = await self.sample(http)
            except httpx.HTTPError as exc:  # a slow answer under load: note it, sample again
                print(f"sample failed: {exc!r}", flush=True)
                continue
            if len(self.samples) % 6 == 1:
                print(json.dumps(s), flush=True)
            await asyncio.sleep(self.args.every)

    async def run(self) -> dict:
        a = self.args
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        shares = [range(i, a.streams, a.procs) for i in range(a.procs)]
        procs = [ctx.Process(target=load_process, args=(a, self.gw.port, ids, self.t0, out)) for ids in shares]
        for p in procs:
            p.start()
        async with httpx.AsyncClient(base_url=self.gw.url, timeout=30) as http:
            watcher = asyncio.create_task(self.watch(http))
            await asyncio.sleep(max(0.0, a.duration - (time.time() - self.t0)))
            load_end = time.time() - self.t0
            loop = asyncio.get_running_loop()
            for _ in procs:
                part = await loop.run_in_executor(None, out.get)
                self.done += part["done"]
                self.failed += part["failed"]
                self.wrong += part["wrong"]
                self.gaps += part["gaps"]
                self.ttfts += part["ttfts"]
            for p in procs:
                p.join()
            # Everything ends: one-shot streams at once, the rest after the detach grace, and then the TTL.
            deadline = time.monotonic() + a.ttl + 60
            while True:
                s = await self.sample(http)
                if (s["active_streams"] == 0 and s["connections"] == 0 and s["kept_streams"] == 0) \
                        or time.monotonic() > deadline:
                    break
                await asyncio.sleep(2)
            self.stop = True
            watcher.cancel()
        return self.report(load_end)

    def report(self, load_end: float) -> dict:
        a = self.args
        during = [s for s in self.samples if s["t"] <= load_end]
        after_warm = [s for s in during if s["t"] >= a.warmup]
        minute = max(1, int(60 / a.every))
        first = statistics.median(s["rss_mb"] for s in after_warm[:minute])
        last = statistics.median(s["rss_mb"] for s in after_warm[-minute:])
        final = self.samples[-1]

        def pct(values: list[float], q: float) -> float:
            values = sorted(values)
            return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

        gaps = [g for t, g in self.gaps if t >= a.warmup]
        ttfts = [x for t, x in self.ttfts if t >= a.warmup]
        return {
            "config": vars(a),
            # Medians of the first and the last minute after the warm-up.
            "rss_mb": {"start": during[0]["rss_mb"], "at_warmup": first, "end_of_load": last,
                       "max": max(s["rss_mb"] for s in during), "after_drain": final["rss_mb"],
                       "growth_after_warmup_pct": round(100 * (last - first) / first, 2)},
            "streams_read": self.done, "failed": self.failed, "wrong_text": self.wrong,
            "slow_cuts": final["slow_cuts"], "streams_created": final["created"],
            "gap_ms": {"p50": round(1000 * pct(gaps, 0.5), 1), "p99": round(1000 * pct(gaps, 0.99), 1),
                       "max": round(1000 * max(gaps, default=float("nan")), 1), "n": len(gaps)},
            "ttft_ms": {"p50": round(1000 * pct(ttfts, 0.5), 1), "p99": round(1000 * pct(ttfts, 0.99), 1)},
            "after_drain": {k: final[k] for k in ("active_streams", "kept_streams", "connections")},
            "cpu_s": final["cpu_s"],
            "samples": self.samples,
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--stalled", type=int, default=50)
    p.add_argument("--duration", type=float, default=600, help="seconds of load")
    p.add_argument("--warmup", type=float, default=300, help="seconds before RSS growth is measured")
    p.add_argument("--ramp", type=float, default=20, help="seconds to start all streams")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--itl-ms", type=float, default=100)
    p.add_argument("--ttft-ms", type=float, default=300)
    p.add_argument("--backlog-tokens", type=int, default=60_000, help="the ended stream blocking readers ask for")
    p.add_argument("--send-timeout", type=float, default=5)
    p.add_argument("--ttl", type=float, default=60, help="how long ended streams stay (GATEWAY_TTL_S)")
    p.add_argument("--every", type=float, default=5, help="seconds between samples")
    p.add_argument("--procs", type=int, default=3, help="load processes")
    p.add_argument("--out", default="soak.json")
    a = p.parse_args()
    env = {"GATEWAY_SEND_TIMEOUT_S": str(a.send_timeout), "GATEWAY_TTL_S": str(a.ttl),
           "GATEWAY_DETACH_GRACE_S": "10", "GATEWAY_MAX_TOKENS_LIMIT": str(max(a.tokens, a.backlog_tokens)),
           "GATEWAY_LOG_LEVEL": "warning"}
    gw = Gateway(env)
    try:
        result = asyncio.run(Soak(a, gw).run())
    finally:
        gw.stop()
    Path(a.out).write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k not in ("samples", "config")}
    print(json.dumps(summary, indent=1))
    print(f"RSS over time (MB): " + " ".join(f"{s['t']:.0f}s:{s['rss_mb']}" for s in result["samples"][::12]))
    print(f"full samples in {os.path.abspath(a.out)}")
    leaked = any(result["after_drain"].values())
    return 1 if leaked or result["wrong_text"] else 0


if __name__ == "__main__":
    sys.exit(main())
