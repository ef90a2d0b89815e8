"""Reconnect storm: N clients on one replica that is killed (SIGKILL) all resume on another.

Three gateway replicas on one redis-server: G generates S streams; the N clients (N/S per stream) read
them as NDJSON through R1, which serves them from its mirrors. R1 is killed; each client waits a
jittered backoff (uniform in [0, base], doubling per failed try) and attaches to R2 after the last seq
it saw. Printed: time from the kill until 50/99/100% of clients got their next event, gaps or
duplicates seen, and what R2 read from Redis for them (XRANGE loads and catch-ups per stream and
per client, from Redis's own command counters).

    python -m loadtests.bench.reconnect --clients 400 --streams 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import httpx
import redis

from ..procs import GatewayProcess, RedisServer

__all__ = ["main"]


class Client:
    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.last = -1
        self.seqs: list[int] = []
        self.cut_at: float | None = None
        self.resumed_at: float | None = None
        self.tries = 0

    async def read(self, port: int, after: int, first: asyncio.Event | None = None) -> bool:
        """Read until the stream ends (True) or the connection goes (False)."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.write(f"GET /v1/streams/{self.id}/ndjson?after={after} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        try:
            status = await reader.readline()
            if b" 200 " not in status:
                return False
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            while True:
                size = await reader.readline()
                if not size or size == b"0\r\n":
                    return False
                chunk = await reader.readexactly(int(size, 16) + 2)
                for line in chunk[:-2].splitlines():
                    event = json.loads(line)
                    if "seq" not in event:
                        continue
                    self.seqs.append(event["seq"])
                    self.last = event["seq"]
                    if first is not None and not first.is_set():
                        first.set()
                    if self.cut_at is not None and self.resumed_at is None:
                        self.resumed_at = time.perf_counter()
                    if event["type"] in ("done", "error"):
                        return True
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return False
        finally:
            writer.close()

    async def run(self, r1: int, r2: int, base_s: float, attached: asyncio.Event) -> None:
        if await self.read(r1, -1, attached):
            return
        self.cut_at = time.perf_counter()
        delay = base_s
        while self.tries < 12:
            await asyncio.sleep(random.uniform(0, delay))
            self.tries += 1
            if await self.read(r2, self.last):
                return
            delay *= 2


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


async def storm(args: argparse.Namespace, gen: str, r1: GatewayProcess, r2: GatewayProcess, rds) -> dict:
    async with httpx.AsyncClient(timeout=30) as http:
        ids = []
        for i in range(args.streams):
            r = await http.post(gen + "/v1/streams", json={"prompt": f"storm {i}", "max_tokens": args.tokens,
                                                           "sim": {"ttft_ms": 50, "itl_ms": args.itl_ms, "jitter": 0}})
            ids.append(r.json()["id"])
    clients = [Client(ids[i % len(ids)]) for i in range(args.clients)]
    events = [asyncio.Event() for _ in clients]
    tasks = [asyncio.create_task(c.run(r1.port, r2.port, args.backoff_s, e)) for c, e in zip(clients, events)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
    await asyncio.sleep(1.0)
    before = rds.info("commandstats")
    r1.proc.kill()
    killed = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*tasks), args.tokens * args.itl_ms / 1000 + 120)
    after = rds.info("commandstats")

    def calls(cmd: str) -> int:
        return after.get(f"cmdstat_{cmd}", {}).get("calls", 0) - before.get(f"cmdstat_{cmd}", {}).get("calls", 0)

    cut = [c for c in clients if c.cut_at is not None]
    resumed = [c.resumed_at - killed for c in cut if c.resumed_at is not None]
    bad = sum(1 for c in clients if c.seqs != list(range(c.seqs[0], c.seqs[0] + len(c.seqs))) or c.seqs[0] != 0)
    return {"clients": args.clients, "streams": args.streams, "cut": len(cut), "resumed": len(resumed),
            "p50_s": pct(resumed, 50), "p99_s": pct(resumed, 99), "max_s": max(resumed, default=float("nan")),
            "tries_mean": sum(c.tries for c in cut) / max(1, len(cut)), "gaps_or_dups": bad,
            "xrange": calls("xrange"), "xread": calls("xread"),
            "xrange_per_stream": calls("xrange") / args.streams, "xrange_per_client": calls("xrange") / max(1, len(cut))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=400)
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--tokens", type=int, default=600)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--backoff-s", type=float, default=0.5, help="first backoff bound (jitter uniform in [0, it])")
    args = p.parse_args(argv)
    rp = RedisServer()
    env = {"GATEWAY_STREAM_STORE": "redis", "GATEWAY_REDIS_URL": rp.url, "GATEWAY_WORKERS": "1",
           "GATEWAY_IDLE_TIMEOUT_S": "30", "GATEWAY_CLIENTS_PER_STREAM": "10000"}
    gws = [GatewayProcess(env) for _ in range(3)]
    try:
        row = asyncio.run(storm(args, gws[0].url, gws[1], gws[2], redis.Redis.from_url(rp.url)))
    finally:
        for g in gws:
            g.stop()
        rp.stop()
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
