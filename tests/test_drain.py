"""SIGTERM on a gateway with the memory store: no new streams, in-flight ones finish or end in-band."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from gateway.client import Client
from gateway.sources.simulated import expected_text

from .support import Gateway

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SIM = {"ttft_ms": 20, "itl_ms": 20, "jitter": 0}


def test_sigterm_finishes_short_streams_and_ends_long_ones():
    # Nobody else holds these streams: clients stay attached while the drain runs.
    gw = Gateway({"GATEWAY_DRAIN_TIMEOUT_S": "1.5"})
    try:
        async def go():
            async with Client(gw.url) as client:
                short = asyncio.create_task(client.stream("sse", prompt="s", max_tokens=40, seed=1, sim=SIM))
                long_ = asyncio.create_task(client.stream("ws", prompt="l", max_tokens=1000, seed=1, sim=SIM))
                await asyncio.sleep(0.3)
                os.kill(gw.proc.pid, signal.SIGTERM)
                sigterm_at = time.monotonic()
                await asyncio.sleep(0.2)
                refused = httpx.post(f"{gw.url}/v1/ndjson", json={})
                results = await asyncio.gather(short, long_)
                await asyncio.to_thread(gw.proc.wait, 20)
                return results, refused, time.monotonic() - sigterm_at

        (short, long_), refused, took = asyncio.run(go())
        assert short.text == expected_text("s", 1, 40) and short.done is not None and short.reconnects == 0
        assert long_.error.code == "shutdown" and long_.error.retryable
        assert long_.text == expected_text("l", 1, 1000)[: len(long_.text)] and 30 < len(long_.tokens) < 1000
        assert refused.status_code == 503 and refused.json()["code"] == "draining"
        assert 1.2 < took < 12
    finally:
        gw.stop()
