"""When not to stream: `POST /v1/complete` against a stream, for short and long answers.

What the user waits for: with streaming, the first words (TTFT); without it,
the whole answer. Both are timed with the project's client, at low load, on
the same simulated model and timing as the load cells.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from gateway.client import Client

__all__ = ["baseline"]


async def _complete(client: Client, n: int, seed: int, sim: dict, prompt: str) -> float:
    started = time.perf_counter()
    body = await client.complete(prompt, max_tokens=n, seed=seed, sim=sim)
    if body["tokens"] != n:
        raise RuntimeError(f"a {n}-token baseline answer came back with {body['tokens']} tokens")
    return time.perf_counter() - started


async def _stream(client: Client, transport: str, n: int, seed: int, sim: dict, prompt: str) -> tuple[float, float]:
    result = await client.stream(transport, prompt, max_tokens=n, seed=seed, sim=sim)
    if result.done is None or len(result.tokens) != n:
        raise RuntimeError(f"a {n}-token baseline stream ended early: {result.terminal}")
    return result.ttft, result.arrivals[-1] - result.started


async def _run(url: str, lengths: list[int], repeats: int, sim: dict, prompt: str, transport: str) -> list[dict]:
    async with Client(url) as client:
        jobs = []
        for n in lengths:
            for r in range(repeats):
                jobs.append(_complete(client, n, r, sim, prompt))
                jobs.append(_stream(client, transport, n, r, sim, prompt))
        # All at once: the longest answer sets the phase's duration, and the load stays tiny.
        out = await asyncio.gather(*jobs)
    rows = []
    for i, n in enumerate(lengths):
        chunk = out[i * 2 * repeats:(i + 1) * 2 * repeats]
        complete = [chunk[k] for k in range(0, len(chunk), 2)]
        streamed = [chunk[k] for k in range(1, len(chunk), 2)]
        ttft = statistics.median(s[0] for s in streamed)
        whole = statistics.median(s[1] for s in streamed)
        done = statistics.median(complete)
        rows.append({"tokens": n, "repeats": repeats,
                     "complete_ms": round(done * 1000, 1),
                     "stream_first_words_ms": round(ttft * 1000, 1),
                     "stream_whole_ms": round(whole * 1000, 1),
                     "gain_ms": round((done - ttft) * 1000, 1)})
    return rows


def baseline(url: str, lengths: list[int], ttft_ms: float, itl_ms: float, prompt: str = "",
             repeats: int = 3, transport: str = "sse_post") -> list[dict]:
    """Per answer length: median time to the whole answer without streaming, and to the first
    words and the whole answer with it."""
    sim = {"ttft_ms": ttft_ms, "itl_ms": itl_ms}
    return asyncio.run(_run(url, sorted(lengths), repeats, sim, prompt, transport))
