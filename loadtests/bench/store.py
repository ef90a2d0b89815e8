"""Benchmark (not a test): the memory store against the Redis store, over real processes.

    python -m loadtests.bench.store [--streams 50 --tokens 400 --itl-ms 2 --resumes 200]

Memory: one gateway generates and serves. Redis: replica A generates (and writes to Redis), replica B
serves every client from its mirrors (one reader), so each event crosses Redis once. Prints:
- events/s delivered to clients (NDJSON) while `streams` streams run at once, each `tokens` tokens
  one per `itl-ms` (the offered rate is printed too); on a small box the Python load generator
  bounds this figure, so "per core" gives the servers' side: 1e6 / (CPU us per event, all processes);
- CPU per delivered event: user+system time of the gateway processes (and redis-server), per event;
- resume latency: GET .../ndjson?after=10 on an ended stream, to the first event (p50/p99); for Redis
  the first resume on B loads the stream from Redis, "again" is served from B's local copy.
Stores alternate (throughput rounds, then single resume requests), so machine noise hits both alike.
The load generator shares the machine: figures are for comparison, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
import psutil

from gateway.codecs import ndjson
from gateway.events import Done, Token
from ..procs import GatewayProcess as Gateway, RedisServer


def cpu(pids: list[int]) -> list[float]:
    return [sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids]


async def read(http: httpx.AsyncClient, url: str) -> tuple[int, float | None]:
    """Read an NDJSON stream to its end: (tokens, seconds to the first event)."""
    decoder = ndjson.Decoder()
    tokens, first, t0 = 0, None, time.perf_counter()
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            for event in decoder.feed(chunk):
                if first is None:
                    first = time.perf_counter() - t0
                if type(event) is Token:
                    tokens += 1
                elif type(event) is Done:
                    return tokens, first
    return tokens, first


async def create(http: httpx.AsyncClient, base: str, tokens: int, itl_ms: float, seed: int) -> str:
    r = await http.post(base + "/v1/streams", json={"prompt": "bench", "max_tokens": tokens, "seed": seed,
                                                    "sim": {"ttft_ms": 50, "itl_ms": itl_ms, "jitter": 0}})
    r.raise_for_status()
    return r.json()["id"]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Setup:
    """One store's processes: `gen` creates streams, `serve` serves the clients."""

    def __init__(self, store: str) -> None:
        env = {"GATEWAY_LOG_LEVEL": "warning", "GATEWAY_TTL_S": "600", "GATEWAY_DETACH_GRACE_S": "60"}
        self.store = store
        self.redis = RedisServer() if store == "redis" else None
        if self.redis is not None:
            env |= {"GATEWAY_STREAM_STORE": "redis", "GATEWAY_REDIS_URL": self.redis.url}
        self.gateways = [Gateway(env) for _ in range(2 if self.redis else 1)]
        self.gen, self.serve = self.gateways[0].url, self.gateways[-1].url
        self.pids = [g.proc.pid for g in self.gateways] + ([self.redis.proc.pid] if self.redis else [])
        self.names = ["A (generates)", "B (serves)", "redis-server"] if self.redis else ["gateway"]

    def stop(self) -> None:
        for g in self.gateways:
            g.stop()
        if self.redis is not None:
            self.redis.stop()


async def throughput(http: httpx.AsyncClient, setup: Setup, args, seed: int) -> tuple[float, int, list[float]]:
    """All streams at once, every client on the serving replica: (events/s, events, CPU s by process)."""
    ids = await asyncio.gather(*(create(http, setup.gen, args.tokens, args.itl_ms, seed + i)
                                 for i in range(args.streams)))
    c0, t0 = cpu(setup.pids), time.perf_counter()
    counts = await asyncio.gather(*(read(http, f"{setup.serve}/v1/streams/{sid}/ndjson") for sid in ids))
    wall = time.perf_counter() - t0
    events = sum(n for n, _ in counts)
    assert events == args.streams * args.tokens, "a stream lost tokens"
    return events / wall, events, [b - a for a, b in zip(c0, cpu(setup.pids))]


async def bench(setups: list[Setup], args) -> None:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        rates: dict[str, list[float]] = {s.store: [] for s in setups}
        events = {s.store: 0 for s in setups}
        cpus: dict[str, list[float]] = {s.store: [0.0] * len(s.pids) for s in setups}
        for round_ in range(args.rounds):  # alternate stores, so machine noise hits both
            for setup in setups:
                rate, n, used = await throughput(http, setup, args, 1000 * round_)
                rates[setup.store].append(rate)
                events[setup.store] += n
                cpus[setup.store] = [a + b for a, b in zip(cpus[setup.store], used)]
        # Resume latency on ended streams, requests alternating between the stores.
        short = {}
        for setup in setups:
            short[setup.store] = [await create(http, setup.gen, 20, 0, 50_000 + j) for j in range(args.resumes)]
        await asyncio.sleep(1.0)
        lat: dict[tuple[str, str], list[float]] = {}
        for label in ("cold", "warm"):
            for j in range(args.resumes):
                for setup in setups:
                    url = f"{setup.serve}/v1/streams/{short[setup.store][j]}/ndjson?after=10"
                    lat.setdefault((setup.store, label), []).append((await read(http, url))[1] * 1000)
    print(f"{'store':8} {'events/s':>9} {'per core':>9} {'cpu us/event':>13} {'resume p50 ms':>14} {'p99':>7}   "
          f"{'again p50':>9} {'p99':>7}   cpu us/event by process")
    for setup in setups:
        st = setup.store
        per = [c / events[st] * 1e6 for c in cpus[st]]
        cold, warm = lat[(st, "cold")], lat[(st, "warm")]
        print(f"{st:8} {statistics.median(rates[st]):>9,.0f} {1e6 / sum(per):>9,.0f} {sum(per):>13.1f} "
              f"{statistics.median(cold):>14.2f} {pct(cold, 99):>7.2f}   "
              f"{statistics.median(warm):>9.2f} {pct(warm, 99):>7.2f}   "
              + ", ".join(f"{n} {v:.1f}" for n, v in zip(setup.names, per)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--itl-ms", type=float, default=2.0)
    parser.add_argument("--resumes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default="memory,redis")
    args = parser.parse_args()
    offered = args.streams * 1000 / args.itl_ms if args.itl_ms else float("inf")
    print(f"{args.streams} streams x {args.tokens} tokens, one per {args.itl_ms:g} ms (offered {offered:,.0f} "
          f"events/s), median of {args.rounds} rounds; {args.resumes} resumes per store")
    setups: list[Setup] = []
    try:
        for store in args.stores.split(","):
            setups.append(Setup(store))
        asyncio.run(bench(setups, args))
    finally:
        for setup in setups:
            setup.stop()


if __name__ == "__main__":
    main()
