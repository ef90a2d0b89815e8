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
from .support import SERVERS, Gateway, run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SIM = {"ttft_ms": 20, "itl_ms": 20, "jitter": 0}


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_finishes_short_streams_and_ends_long_ones(server):
    """The first SIGTERM lets short streams finish, ends long ones in band after drain_timeout_s and
    refuses new streams, on every server, with granian's differences (docs/servers.md): its main process
    stops listening at once (refused at connect, where uvicorn and hypercorn answer 503 `draining`) and
    closes WebSockets itself, with no close frame, before the app can end them in band."""
    # Nobody else holds these streams: clients stay attached while the drain runs.
    gw = Gateway({"GATEWAY_DRAIN_TIMEOUT_S": "1.5"}, args=("--server", server))
    try:
        async def go():
            def start(transport: str, prompt: str, n: int) -> asyncio.Task:
                body = {"prompt": prompt, "max_tokens": n, "seed": 1, "sim": SIM}
                return asyncio.create_task(wire.read(gw.url, transport, body=body))

            readers = [start("sse", "s", 40), start("ndjson", "l", 1000), start("ws", "l", 1000)]
            await asyncio.sleep(0.3)
            os.kill(gw.proc.pid, signal.SIGTERM)
            sigterm_at = time.monotonic()
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient() as http:
                try:
                    refused = await http.post(f"{gw.url}/v1/ndjson", json={})
                except httpx.ConnectError as exc:
                    refused = exc
            results = await asyncio.gather(*readers)
            await asyncio.to_thread(gw.proc.wait, 20)
            return results, refused, time.monotonic() - sigterm_at

        (short, *long_), refused, took = run(go())
        wire.assert_exact(short.events, 0, 41)
        assert short.text == expected_text("s", 1, 40) and short.terminal["type"] == "done"
        for r in long_:
            wire.assert_exact(r.events, 0)
            assert expected_text("l", 1, 1000).startswith(r.text) and 5 < len(r.tokens) < 1000
            if server == "granian" and r.transport == "ws":
                assert r.ended == "closed" and r.terminal is None and r.close_code is None, r.events[-3:]
            else:
                assert r.terminal["code"] == "shutdown" and r.terminal["retryable"], (r.transport, r.events[-3:])
                assert len(r.tokens) > 30
        if server == "granian":
            assert isinstance(refused, httpx.ConnectError), refused
        else:
            assert refused.status_code == 503 and refused.json()["code"] == "draining"
        assert 1.2 < took < 30  # drain_timeout_s (1.5 s) held the exit, then it went
    finally:
        gw.stop()


def _second_signal() -> tuple[wire.Read, float]:
    """A 5000-token stream; SIGTERM (a drain of up to 30 s), then a second SIGTERM 1 s later."""
    gw = Gateway({"GATEWAY_DRAIN_TIMEOUT_S": "30"})
    try:
        async def go():
            reader = asyncio.create_task(wire.read(gw.url, "ndjson", body={"prompt": "l", "max_tokens": 5000,
                                                                         "seed": 1, "sim": SIM}))
            await asyncio.sleep(0.5)
            os.kill(gw.proc.pid, signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert gw.proc.poll() is None  # still draining after the first signal
            os.kill(gw.proc.pid, signal.SIGTERM)
            second_at = time.monotonic()
            result = await reader
            await asyncio.to_thread(gw.proc.wait, 30)
            return result, time.monotonic() - second_at

        return run(go())
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def second_signal() -> tuple[wire.Read, float]:
    """One run of the scenario for the two tests below (each ran its own: a gateway and ~6-13 s more)."""
    return _second_signal()


def test_a_second_signal_skips_the_wait(second_signal):
    r, took = second_signal
    assert took < 15  # against the 30 s the first signal allowed
    wire.assert_exact(r.events, 0)  # what came before the end came whole
    assert expected_text("l", 1, 5000).startswith(r.text) and len(r.tokens) > 10


def test_a_second_signal_still_ends_streams_in_band(second_signal):
    r, _ = second_signal
    assert r.terminal is not None and r.terminal["code"] == "shutdown" and r.terminal["retryable"]


def test_attach_during_a_drain_tells_each_transport_to_go_elsewhere():
    """While draining, a new attach is refused the way each client handles: SSE gets 200 with `retry:` and a
    `reconnect` event (EventSource gives up on a 503 but reconnects after a clean close), NDJSON a 503
    problem, a WebSocket attach a 503 before the upgrade."""
    gw = Gateway({"GATEWAY_DRAIN_TIMEOUT_S": "30", "GATEWAY_SSE_RETRY_MS": "700"})
    try:
        sid = httpx.post(f"{gw.url}/v1/streams", json={"prompt": "d", "max_tokens": 5000, "sim": SIM}).json()["id"]

        async def go():
            holder = asyncio.create_task(wire.read(gw.url, "ndjson", stream_id=sid))  # keeps the drain going
            await asyncio.sleep(0.5)
            os.kill(gw.proc.pid, signal.SIGTERM)
            await asyncio.sleep(0.5)
            out = await asyncio.gather(wire.read(gw.url, "sse", stream_id=sid, after=3),
                                       wire.read(gw.url, "ndjson", stream_id=sid, after=3),
                                       wire.read(gw.url, "ws", stream_id=sid, after=3, ws_attach=True))
            os.kill(gw.proc.pid, signal.SIGTERM)  # done: skip the rest of the wait
            await holder
            return out

        sse, ndjson, ws = run(go())
        assert sse.status == 200 and sse.headers["content-type"].startswith("text/event-stream")
        assert [e["type"] for e in sse.events] == ["reconnect"] and sse.ended == "reconnect"
        assert sse.events[0]["retry_ms"] == 700
        assert ndjson.status == 503 and ndjson.problem["code"] == "draining"
        assert ws.status == 503 and ws.problem["code"] == "draining"
    finally:
        gw.stop()
