"""Redis cost per token: commands, bytes in and memory per event, for S streams of T tokens written by one
replica with the Redis store (and read by a second one, each stream by one client).

    python -m loadtests.bench.redis_cost --streams 50 --tokens 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import httpx
import redis

from .fleet import create_streams, replicas

__all__ = ["main"]


async def run(args: argparse.Namespace, gen: str, reader: str) -> list[str]:
    ids = await create_streams(gen, args.streams, tokens=args.tokens, itl_ms=args.itl_ms, prompt="cost")
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as http:
        async def read(sid: str) -> None:
            async with http.stream("GET", f"{reader}/v1/streams/{sid}/ndjson") as r:
                async for _ in r.aiter_lines():
                    pass

        await asyncio.gather(*(read(sid) for sid in ids))
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--itl-ms", type=float, default=20.0)
    args = p.parse_args(argv)
    with replicas(2) as (rp, gws):
        r = redis.Redis.from_url(rp.url)
        s0, c0 = r.info("stats"), r.info("commandstats")
        ids = asyncio.run(run(args, gws[0].url, gws[1].url))
        s1, c1 = r.info("stats"), r.info("commandstats")
        events = args.streams * (args.tokens + 2)
        memory = sum(r.memory_usage(k) or 0 for sid in ids for k in r.keys(f"gw:{{{sid}}}:*"))
        calls = {k[8:]: v["calls"] - c0.get(k, {}).get("calls", 0) for k, v in c1.items()}
        calls = {k: v for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v}
        row = {"streams": args.streams, "tokens": args.tokens, "events": events,
               "commands": sum(calls.values()), "commands_per_event": sum(calls.values()) / events,
               "by_command": calls,
               "bytes_in_per_event": (s1["total_net_input_bytes"] - s0["total_net_input_bytes"]) / events,
               "bytes_out_per_event": (s1["total_net_output_bytes"] - s0["total_net_output_bytes"]) / events,
               "memory_per_event": memory / events}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
