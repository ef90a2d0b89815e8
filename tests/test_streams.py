"""Every transport against a real gateway process: same tokens, incremental, faults, resume."""

from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
import pytest

from gateway.client import TRANSPORTS, Client
from gateway.events import Error, Token
from gateway.sources.simulated import expected_text

from . import wire
from .conftest import FAST
from .support import gateway, run

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.every_server]
FAST_SIM = {"ttft_ms": 30, "itl_ms": 5, "jitter": 0.2}



async def _stream(gw, transport, **kw):
    async with Client(gw.url) as client:
        return await client.stream(transport, **kw)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_same_tokens_and_sha_on_every_transport(gw, transport):
    r = run(_stream(gw, transport, prompt="compare", max_tokens=80, seed=11, sim=FAST_SIM))
    text = expected_text("compare", 11, 80)
    assert r.text == text
    assert [t.seq for t in r.tokens] == list(range(1, 81))
    assert r.done is not None and r.done.tokens == 80
    assert r.done.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert r.reconnects == r.gaps == r.duplicates == 0


def test_seed_and_prompt_change_the_text():
    # Six sections to start from: with the seed (or the prompt) ignored, each set would hold one text.
    assert len({expected_text("a", s, 200) for s in range(20)}) >= 4
    assert len({expected_text(p, 0, 200) for p in "abcdefghijklmnopqrst"}) >= 4
    text = expected_text("markdown", 0, 2000)
    for mark in ("## ", "```", "- ", "](http", "**"):
        assert mark in text
    # The recorded values (tests/golden/simulated.json) pin the texts themselves: tests/test_golden.py.


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tokens_arrive_incrementally(gw, transport):
    r = run(_stream(gw, transport, prompt="pace", max_tokens=60, seed=1,
                    sim={"ttft_ms": 50, "itl_ms": 20, "jitter": 0}))
    arrivals = r.token_arrivals
    assert len(arrivals) == 60
    spread = arrivals[-1] - arrivals[0]  # ~59 * 20 ms if each token is sent when made
    assert spread > 0.6
    assert arrivals[0] - r.started < spread / 2  # the first token long before the last
    distinct = len({round(t, 3) for t in arrivals})
    assert distinct > 40  # not bunched into a few reads


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_in_band_error_keeps_partial_text(gw, transport):
    r = run(_stream(gw, transport, prompt="fail", max_tokens=50, seed=2, sim={**FAST_SIM, "fail_after": 12}))
    assert isinstance(r.error, Error)
    assert r.error.code == "model_error" and r.error.seq == 13
    assert r.text == expected_text("fail", 2, 50)[: len(r.text)]
    assert len(r.tokens) == 12


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_drop_is_a_cut_then_resumes_exactly(gw, transport):
    sim = {**FAST_SIM, "drop_after": 17}
    body = {"prompt": "drop", "max_tokens": 40, "seed": 5, "sim": sim}
    cut = run(wire.read(gw.url, transport, body=body))
    assert cut.ended == "closed" and cut.terminal is None and len(cut.tokens) == 17
    sid = cut.meta["stream_id"]
    rest = run(wire.read(gw.url, transport, stream_id=sid, after=cut.seqs[-1]))
    assert rest.ended == "terminal"
    wire.assert_exact(cut.events + rest.events, 0, 41)  # meta, 40 tokens, done: each once
    text = wire.text_of(cut.events + rest.events)
    assert text == expected_text("drop", 5, 40)
    assert rest.terminal["sha256"] == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("transport", ["sse", "ndjson", "ws"])
def test_a_resume_from_inside_the_sealed_blocks_of_an_ended_stream_is_exact(gw, transport):
    """An ended stream nobody reads keeps its events as compressed blocks (gateway/log.py): a resume
    from inside one, or across several, gets the same events, byte for byte once decoded, as the first read."""
    info = httpx.post(gw.url + "/v1/streams", json={"prompt": "sealed", "max_tokens": 300, "seed": 3,
                                                    "sim": {"ttft_ms": 0, "itl_ms": 0, "jitter": 0}}).json()
    whole = run(wire.read(gw.url, "ndjson", stream_id=info["id"]))
    assert whole.ended == "terminal" and whole.seqs == list(range(302))
    assert wire.text_of(whole.events) == expected_text("sealed", 3, 300)
    for after in (10, 63, 64, 200, 290):
        again = run(wire.read(gw.url, transport, stream_id=info["id"], after=after))
        assert again.ended == "terminal"
        assert [e for e in again.events if "seq" in e] == [e for e in whole.events if "seq" in e][after + 1:], after


def test_client_resumes_a_drop_by_itself(gw):
    r = run(_stream(gw, "ndjson", prompt="drop", max_tokens=40, seed=5, sim={**FAST_SIM, "drop_after": 17}))
    assert r.reconnects == 1 and r.gaps == 0 and r.duplicates == 0
    assert r.text == expected_text("drop", 5, 40)


def test_drop_fires_once_per_stream(gw):
    """A client that lost the last chunk before the cut resumes from before N and is not cut again."""
    info = httpx.post(gw.url + "/v1/streams", json={"prompt": "once", "max_tokens": 30, "seed": 1,
                                                    "sim": {**FAST_SIM, "drop_after": 10}}).json()
    first = run(wire.read(gw.url, "ndjson", stream_id=info["id"]))
    again = run(wire.read(gw.url, "ndjson", stream_id=info["id"], after=8))
    assert first.ended == "closed" and first.seqs == list(range(11))
    assert again.ended == "terminal"
    wire.assert_exact(again.events, 9, 31)


@pytest.mark.parametrize(("first", "second"), [("sse", "ws"), ("ws", "ndjson"), ("ndjson", "sse")])
def test_resume_on_another_transport(gw, first, second):
    info = httpx.post(gw.url + "/v1/streams", json={"prompt": "switch", "max_tokens": 40, "seed": 8,
                                                    "sim": FAST_SIM}).json()

    async def go():
        head = await wire.read(gw.url, first, stream_id=info["id"], until=lambda e: e.get("seq") == 15)
        tail = await wire.read(gw.url, second, stream_id=info["id"], after=15)
        return head, tail

    head, tail = run(go())
    assert head.ended == "stopped" and tail.ended == "terminal"
    wire.assert_exact(head.events + tail.events, 0, 41)  # nothing resent, nothing skipped
    assert wire.text_of(head.events + tail.events) == expected_text("switch", 8, 40)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_heartbeat_during_a_stall(gw, transport):
    sim = {"ttft_ms": 10, "itl_ms": 5, "stall_after": 3, "stall_ms": 1200}
    r = run(_stream(gw, transport, prompt="stall", max_tokens=6, seed=1, sim=sim))
    assert r.done is not None
    assert r.heartbeats >= 2  # heartbeat_s is 0.3 in these tests


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_heartbeat_before_the_first_token(gw, transport):
    r = run(_stream(gw, transport, prompt="slow", max_tokens=2, sim={"ttft_ms": 1000, "itl_ms": 1}))
    assert r.done is not None and r.heartbeats >= 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_idle_timeout_ends_with_upstream_timeout(gw, transport):
    sim = {"ttft_ms": 10, "itl_ms": 5, "stall_after": 4, "stall_ms": 60_000}
    r = run(_stream(gw, transport, prompt="idle", max_tokens=10, seed=1, sim=sim))
    assert r.error is not None and r.error.code == "upstream_timeout" and r.error.retryable
    assert len(r.tokens) == 4


def _cancelled(gw, reason):
    return gw.metrics().get(f'gateway_streams_cancelled_total{{reason="{reason}"}}', 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_shot_is_cancelled_after_the_grace_when_the_client_leaves(gw, transport):
    # A lost connection is not a cancel: the generation goes on for the grace (1 s here), so the
    # client could resume (tests/test_disconnect.py), then stops with `detached`.
    before = _cancelled(gw, "detached")

    async def go():
        async with Client(gw.url) as client:
            async for event, _ in client.events(transport, prompt="leave", max_tokens=500,
                                                sim={"ttft_ms": 10, "itl_ms": 20}):
                if type(event) is Token and event.seq == 3:
                    return event.seq

    run(go())
    deadline = time.monotonic() + 5
    while _cancelled(gw, "detached") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cancelled(gw, "detached") == before + 1


def test_attached_stream_survives_a_disconnect_within_grace_then_is_cancelled(gw):
    async def go():
        async with Client(gw.url) as client:
            info = await client.create("grace", max_tokens=2000, sim={"ttft_ms": 10, "itl_ms": 20})
            head = await wire.read(gw.url, "sse", stream_id=info["id"], until=lambda e: e["type"] == "token")
            await asyncio.sleep(0.3)  # within the 1 s grace: still generating
            status = (await client.http.get(f"/v1/streams/{info['id']}")).json()
            tail = await wire.read(gw.url, "ndjson", stream_id=info["id"], after=1,
                                   until=lambda e: e.get("seq") == 4)
            await asyncio.sleep(2.0)  # past the grace with nobody attached
            final = (await client.http.get(f"/v1/streams/{info['id']}")).json()
            return head, status, tail, final

    head, status, tail, final = run(go())
    assert head.seqs == [0, 1]
    assert status["status"] == "running" and status["tokens"] > 1
    assert tail.seqs == [2, 3, 4]
    assert final["status"] == "error" and final["error"] == "cancelled"


def test_delete_cancels_attached_clients(gw):
    async def go():
        async with Client(gw.url) as client:
            info = await client.create("delete", max_tokens=2000, sim={"ttft_ms": 10, "itl_ms": 10})
            readers = [asyncio.create_task(client.stream(t, stream_id=info["id"])) for t in TRANSPORTS]
            await asyncio.sleep(0.3)
            status = await client.cancel(info["id"])
            again = await client.cancel(info["id"])
            return status, again, await asyncio.gather(*readers)

    status, again, results = run(go())
    assert status == 204 and again == 409
    for r in results:
        assert r.error is not None and r.error.code == "cancelled"
        assert len(r.tokens) > 3


def test_delete_before_first_token(gw):
    async def go():
        async with Client(gw.url) as client:
            info = await client.create("early", max_tokens=10, sim={"ttft_ms": 5000})
            assert await client.cancel(info["id"]) == 204
            return await client.stream("sse", stream_id=info["id"])

    r = run(go())
    assert r.tokens == [] and r.error.code == "cancelled"


def test_many_clients_on_one_stream_each_get_every_event(gw):
    async def go():
        async with Client(gw.url) as client:
            info = await client.create("fanout", max_tokens=50, seed=4, sim=FAST_SIM)
            return await asyncio.gather(*(client.stream(TRANSPORTS[i % 3], stream_id=info["id"]) for i in range(12)))

    results = run(go())
    expected = expected_text("fanout", 4, 50)
    assert all(r.text == expected and r.done is not None for r in results)


def test_complete_returns_the_same_text(gw):
    async def go():
        async with Client(gw.url) as client:
            return await client.complete("whole", max_tokens=30, seed=3, sim=FAST_SIM)

    body = run(go())
    assert body["text"] == expected_text("whole", 3, 30) and body["tokens"] == 30
    assert body["sha256"] == hashlib.sha256(body["text"].encode()).hexdigest()


def test_complete_failure_is_a_problem_with_partial_text(gw):
    r = httpx.post(gw.url + "/v1/complete", json={"prompt": "x", "max_tokens": 30, "sim": {**FAST_SIM, "fail_after": 5}})
    assert r.status_code == 502 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["partial_text"] == expected_text("x", 0, 30)[: len(r.json()["partial_text"])]


@pytest.mark.parametrize("path", ["/v1/sse", "/v1/ndjson"])
def test_streaming_headers(gw, path):
    with httpx.stream("POST", gw.url + path, json={"max_tokens": 2, "sim": FAST_SIM},
                      headers={"Accept-Encoding": "gzip"}) as r:
        assert r.status_code == 200
        assert "no-cache" in r.headers["cache-control"]
        assert r.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in r.headers
        body = r.read()
    assert (body.startswith(b"retry: 1000\n\n") if path == "/v1/sse" else body.startswith(b'{"type":"meta"'))


def test_metrics_count_streams_and_ttft(gw):
    run(_stream(gw, "sse", max_tokens=3, sim=FAST_SIM))
    m = gw.metrics()
    assert m['gateway_events_sent_total{transport="sse_post"}'] >= 5
    assert m["gateway_ttft_seconds_count"] >= 1
    assert "gateway_active_streams" in m and 'gateway_connections{transport="ws"}' in m


def test_per_message_deflate_on_the_real_gateway(gw, server):
    """With GATEWAY_WS_PER_MESSAGE_DEFLATE uvicorn negotiates permessage-deflate (the direct frame writer
    steps aside for the library) and the stream arrives exact; by default it declines the client's offer.
    (Hypercorn and granian negotiate as they see fit: the stream must arrive exact either way.)"""
    body = {"prompt": "deflate", "max_tokens": 300, "seed": 2, "sim": FAST_SIM}
    offered = run(wire.read(gw.url, "ws", body=body, compression="deflate"))
    wire.assert_exact(offered.events, 0, 301)
    assert offered.text == expected_text("deflate", 2, 300)
    if server != "uvicorn":
        return
    assert "sec-websocket-extensions" not in offered.headers  # the default declines
    with gateway({**FAST, "GATEWAY_WS_PER_MESSAGE_DEFLATE": "true"}, server="uvicorn") as deflating:
        r = run(wire.read(deflating.url, "ws", body=body, compression="deflate"))
    assert "permessage-deflate" in r.headers.get("sec-websocket-extensions", "")
    wire.assert_exact(r.events, 0, 301)
    assert r.text == offered.text
