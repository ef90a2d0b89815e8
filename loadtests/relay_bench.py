"""What a relay hop costs: gateway B relaying gateway A's /v1/chat/completions, against A direct.

    python -m loadtests.relay_bench [--streams 50] [--tokens 200] [--itl-ms 20] [--sequential 30]

Prints TTFT (sequential streams, no simulated delay) direct and through the relay, the gaps between
tokens under a paced load, and the CPU each gateway spent per token delivered (from /proc via psutil).
All traffic is on loopback; both gateways run as real uvicorn processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics

import psutil

from gateway.client import Client
from gateway.sources.simulated import expected_text
from loadtests.procs import GatewayProcess as gateway


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def ttfts(url: str, model: str, n: int) -> list[float]:
    out = []
    async with Client(url) as client:
        for i in range(n):
            r = await client.stream("sse_post", f"ttft {i}", model=model, max_tokens=5, seed=i,
                                    sim={"ttft_ms": 0, "itl_ms": 0, "jitter": 0})
            assert r.done is not None
            out.append(r.ttft)
    return out


async def paced(url: str, model: str, streams: int, tokens: int, itl_ms: float) -> tuple[list[float], int]:
    """Concurrent paced streams; returns every gap between tokens, and tokens received."""
    sim = {"ttft_ms": 50, "itl_ms": itl_ms, "jitter": 0}
    async with Client(url) as client:
        results = await asyncio.gather(*(
            client.stream("sse_post", f"load {i}", model=model, max_tokens=tokens, seed=i, sim=sim)
            for i in range(streams)))
    gaps, received = [], 0
    for i, r in enumerate(results):
        assert r.text == expected_text(f"load {i}", i, tokens), "relay changed the text"
        arr = r.token_arrivals
        gaps += [b - a for a, b in zip(arr, arr[1:])]
        received += len(arr)
    return gaps, received


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--sequential", type=int, default=30)
    args = p.parse_args()
    with gateway() as a:
        models = {"relay": {"kind": "openai", "base_url": a.url + "/v1", "upstream_model": "sim"}}
        with gateway({"GATEWAY_MODELS": json.dumps(models)}) as b:
            pa, pb = psutil.Process(a.proc.pid), psutil.Process(b.proc.pid)
            print(f"{'path':<22}{'TTFT p50 ms':>12}{'p90 ms':>9}")
            for label, url, model in (("A direct", a.url, "sim"), ("B relaying A", b.url, "relay")):
                t = asyncio.run(ttfts(url, model, args.sequential))
                print(f"{label:<22}{1000 * statistics.median(t):>12.2f}{1000 * pct(t, 0.9):>9.2f}")
            print(f"\n{args.streams} streams x {args.tokens} tokens, one every {args.itl_ms:g} ms")
            print(f"{'path':<22}{'gap p50 ms':>11}{'p99 ms':>9}{'A cpu us/tok':>14}{'B cpu us/tok':>14}")
            for label, url, model in (("A direct", a.url, "sim"), ("B relaying A", b.url, "relay")):
                a0, b0 = cpu(pa), cpu(pb)
                gaps, n = asyncio.run(paced(url, model, args.streams, args.tokens, args.itl_ms))
                da, db = cpu(pa) - a0, cpu(pb) - b0
                print(f"{label:<22}{1000 * pct(gaps, 0.5):>11.2f}{1000 * pct(gaps, 0.99):>9.2f}"
                      f"{1e6 * da / n:>14.1f}{1e6 * db / n:>14.1f}")


if __name__ == "__main__":
    main()
