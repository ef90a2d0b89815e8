"""Admission: past capacity a new stream is refused at once with 503 + Retry-After; existing streams are not.
And the jittered SSE `retry`, which spreads the clients of a drained or dead replica."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from gateway.admission import Admission
from gateway.clock import Clock
from gateway.metrics import Stats
from gateway.models import StreamRequest
from gateway.problems import Problem
from gateway.service import Context
from gateway.settings import Settings
from lab.links import Relay

from .support import gateway, run

LONG = {"prompt": "hold", "max_tokens": 2000, "sim": {"ttft_ms": 10, "itl_ms": 50, "jitter": 0}}


@pytest.fixture(scope="module")
def gw():
    with gateway({"GATEWAY_MAX_STREAMS": "3"}) as g:
        yield g


def test_past_max_streams_new_streams_get_503_and_existing_ones_go_on(gw):
    ids = []
    for _ in range(3):
        r = httpx.post(gw.url + "/v1/streams", json=LONG, timeout=10)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    try:
        r = httpx.post(gw.url + "/v1/streams", json=LONG, timeout=10)
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "over_capacity" and 1 <= int(r.headers["retry-after"]) <= 3
        # A one-shot stream too, before its first byte; a WebSocket `start` gets close 1013 (try again).
        r = httpx.post(gw.url + "/v1/sse", json=LONG, timeout=10)
        assert r.status_code == 503 and r.json()["code"] == "over_capacity"

        async def ws_start():
            async with websockets.connect(gw.ws_url + "/v1/ws") as ws:
                await ws.send(json.dumps({"type": "start", **LONG}))
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None

        assert run(ws_start(), 30) == 1013
        # Attaching to a running stream is never refused here.
        with httpx.stream("GET", f"{gw.url}/v1/streams/{ids[0]}/ndjson", timeout=10) as r:
            assert r.status_code == 200
            assert json.loads(next(r.iter_lines()))["type"] == "meta"
        refused = gw.metrics()['gateway_refused_total{reason="capacity"}']
        assert refused == 3
    finally:
        for sid in ids:
            httpx.delete(f"{gw.url}/v1/streams/{sid}", timeout=10)
    # Below capacity again: admitted.
    deadline = time.monotonic() + 10
    while httpx.get(gw.url + "/healthz").json()["active_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    r = httpx.post(gw.url + "/v1/streams", json={**LONG, "max_tokens": 2}, timeout=10)
    assert r.status_code == 201, r.text


def test_a_late_loop_refuses_new_streams_until_it_catches_up():
    async def go():
        admission = Admission(Settings(admit_lag_ms=300), Stats())
        admission.start()
        try:
            await asyncio.sleep(0.2)
            admission.check()  # an idle loop is on time
            time.sleep(1.0)  # the loop is busy: every callback is ~1 s late
            await asyncio.sleep(0.06)
            with pytest.raises(Problem) as refused:
                admission.check()
            assert refused.value.status == 503 and refused.value.extra["code"] == "over_capacity"
            assert admission.stats.refused["capacity"] == 1
            await asyncio.sleep(1.0)  # on time again: the figure halves per probe, back under the bound
            admission.check()
        finally:
            admission.stop()

    asyncio.run(go())


def test_tokens_running_behind_the_clock_refuse_new_streams_while_the_loop_itself_is_on_time():
    async def go():
        clock = Clock()
        admission = Admission(Settings(admit_lag_ms=50), Stats(), clock)
        admission.check()  # nothing due: on time
        # A storm: the clock fires a bounded batch per turn, so deadlines wait past their slot while the
        # loop stays punctual. Here one deadline is already 200 ms overdue.
        clock.call_at(clock.now() - 0.2, lambda: None)
        assert clock.overdue() >= 0.2
        with pytest.raises(Problem) as refused:
            admission.check()
        assert refused.value.status == 503 and "late" in refused.value.detail
        while clock.overdue():  # the clock catches up at its next firing
            await asyncio.sleep(0)
        admission.check()
        clock.stop()

    asyncio.run(go())


def test_creates_queued_in_the_redis_store_refuse_new_streams(redis):
    """The Redis store writes each new stream before the create answers, a few at a time: in a storm,
    creates queue there while the loop and the clock stay on time. Admission sees how long the oldest
    has taken (`adding_for`): through the lab's 3g link to a real redis-server (300 ms RTT), ten creates
    in progress refuse the next one, and once they are written a create is admitted again."""
    async def go():
        async with Relay("3g", ("127.0.0.1", redis.port)) as link:
            ctx = Context(Settings(stream_store="redis", redis_url=f"redis://127.0.0.1:{link.port}/0",
                                   admit_lag_ms=50))
            await ctx.open()
            try:
                body = StreamRequest(prompt="queued", max_tokens=2, sim={"ttft_ms": 10_000})
                creates = [asyncio.create_task(ctx.create(body, False)) for _ in range(10)]
                await asyncio.sleep(0.2)
                assert ctx.store.adding_for() >= 0.15
                with pytest.raises(Problem) as refused:
                    ctx.admission.check()
                assert refused.value.status == 503 and "late" in refused.value.detail
                streams = await asyncio.gather(*creates)
                assert len(streams) == 10 and ctx.store.adding_for() == 0
                ctx.admission.check()  # nothing queued: admitted
            finally:
                await ctx.close()

    asyncio.run(go())


def test_sse_retry_jitter_spreads_each_connections_retry():
    with gateway({"GATEWAY_SSE_RETRY_MS": "1000", "GATEWAY_SSE_RETRY_JITTER": "0.5"}) as g:
        seen = set()
        for i in range(12):
            with httpx.stream("POST", g.url + "/v1/sse", json={"prompt": "j", "max_tokens": 1}, timeout=10) as r:
                first = next(r.iter_lines())
            assert first.startswith("retry: ")
            seen.add(int(first[7:]))
        assert all(1000 <= ms < 1500 for ms in seen) and len(seen) > 1, seen
