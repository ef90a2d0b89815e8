"""SIGTERM on a gateway with the memory store: no new streams, in-flight ones finish or end in-band."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from gateway.sources.simulated import expected_text

from . import wire
from .support import Gateway, run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SIM = {"ttft_ms": 20, "itl_ms": 20, "jitter": 0}


def test_sigterm_finishes_short_streams_and_ends_long_ones():
    # Nobody else holds these streams: clients stay attached while the drain runs.
    gw = Gateway({"GATEWAY_DRAIN_TIMEOUT_S": "1.5"})
    try:
        async def go():
            short = asyncio.create_task(wire.read(gw.url, "sse", body={"prompt": "s", "max_tokens": 40,
                                                                       "seed": 1, "sim": SIM}))
            long_ = asyncio.create_task(wire.read(gw.url, "ws", body={"prompt": "l", "max_tokens": 1000,
                                                                      "seed": 1, "sim": SIM}))
            await asyncio.sleep(0.3)
            os.kill(gw.proc.pid, signal.SIGTERM)
            sigterm_at = time.monotonic()
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient() as http:
                refused = await http.post(f"{gw.url}/v1/ndjson", json={})
            results = await asyncio.gather(short, long_)
            await asyncio.to_thread(gw.proc.wait, 20)
            return results, refused, time.monotonic() - sigterm_at

        (short, long_), refused, took = run(go())
        wire.assert_exact(short.events, 0, 41)
        assert short.text == expected_text("s", 1, 40) and short.terminal["type"] == "done"
        assert long_.terminal["code"] == "shutdown" and long_.terminal["retryable"]
        wire.assert_exact(long_.events, 0)
        assert expected_text("l", 1, 1000).startswith(long_.text) and 30 < len(long_.tokens) < 1000
        assert refused.status_code == 503 and refused.json()["code"] == "draining"
        assert 1.2 < took < 30  # drain_timeout_s (1.5 s) held the exit, then it went
    finally:
        gw.stop()
