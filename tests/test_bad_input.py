"""Bad input gets a clear answer and loses nothing: statuses, problem bodies, close codes."""

from __future__ import annotations

import time

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from gateway.client import Client
from gateway.codecs import ws as wsc
from gateway.events import Error

from .support import run

PROBLEM = "application/problem+json"
SIM = {"ttft_ms": 10, "itl_ms": 5}
pytestmark = pytest.mark.every_server


def post(gw, path, **kw):
    return httpx.post(gw.url + path, timeout=10, **kw)


@pytest.mark.parametrize("path", ["/v1/streams", "/v1/sse", "/v1/ndjson", "/v1/complete"])
@pytest.mark.parametrize(("body", "status"), [
    (b"{not json", 422),
    (b'{"prompt": "x", "colour": "red"}', 422),
    (b'{"max_tokens": 0}', 422),
    (b'{"max_tokens": 999999}', 422),
    (b'{"sim": {"jitter": 2}}', 422),
    (b'{"sim": {"bogus": 1}}', 422),
    (b'{"prompt": "' + b"x" * 2000 + b'"}', 413),
    (b'{"sim": {"pre_error": 503}}', 503),
])
def test_pre_stream_errors_are_problems(gw, path, body, status):
    r = post(gw, path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.headers["content-type"] == PROBLEM
    problem = r.json()
    assert problem["status"] == status and problem["title"]


def test_rate_limited_upstream_gives_retry_after(gw):
    r = post(gw, "/v1/sse", json={"sim": {"pre_error": 429}})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_body_over_the_limit_is_413(gw):
    r = post(gw, "/v1/streams", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM


def test_chunked_body_over_the_limit_is_413(gw):
    def chunks():  # no Content-Length: the limit applies as the body arrives
        for _ in range(300):
            yield b" " * 4096

    r = post(gw, "/v1/sse", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM


def test_unknown_model_is_404(gw):
    assert post(gw, "/v1/sse", json={"model": "nope"}).status_code == 404


@pytest.mark.parametrize("path", ["/sse", "/ndjson", ""])
def test_unknown_stream_is_404(gw, path):
    r = httpx.get(f"{gw.url}/v1/streams/doesnotexist{path}")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert httpx.delete(f"{gw.url}/v1/streams/doesnotexist").status_code == 404


def test_malformed_resume_points_are_400(gw):
    sid = post(gw, "/v1/streams", json={"max_tokens": 5, "sim": SIM}).json()["id"]
    for headers, params, kind in [({"Last-Event-ID": "abc"}, {}, "sse"), ({}, {"last_event_id": "1.5"}, "sse"),
                                  ({}, {"after": "x"}, "ndjson"), ({}, {"after": "-7"}, "ndjson")]:
        r = httpx.get(f"{gw.url}/v1/streams/{sid}/{kind}", headers=headers, params=params)
        assert r.status_code == 400 and r.headers["content-type"] == PROBLEM


def test_resume_past_the_end_is_409_and_expired_is_410(gw):
    sid = post(gw, "/v1/streams", json={"max_tokens": 3, "sim": SIM}).json()["id"]
    time.sleep(0.3)  # ended: meta, 3 tokens, done = seq 0..4
    assert httpx.get(f"{gw.url}/v1/streams/{sid}/ndjson", params={"after": 9}).status_code == 409
    assert httpx.get(f"{gw.url}/v1/streams/{sid}/ndjson", params={"after": 4}).status_code == 409
    r = httpx.get(f"{gw.url}/v1/streams/{sid}/ndjson", params={"after": 3})
    assert r.status_code == 200 and r.text.count("\n") == 1  # only the done event
    time.sleep(2.5)  # past the 1.5 s TTL
    r = httpx.get(f"{gw.url}/v1/streams/{sid}/sse")
    assert r.status_code == 410 and r.json()["title"] == "Stream expired"


async def _ws_refusal(gw, message):
    async with connect(gw.ws_url + "/v1/ws", max_size=2**24) as sock:
        await sock.send(message)
        first = await sock.recv()
        with pytest.raises(websockets.ConnectionClosed) as info:
            await sock.recv()
        return wsc.decode(first), info.value.rcvd.code


@pytest.mark.parametrize(("message", "code"), [
    ("not json", 1003),
    (b"\x00\x01binary", 1003),
    ('{"type": "dance"}', 1008),
    ('{"type": "start", "max_tokens": -1}', 1008),
    ('{"type": "start", "prompt": "' + "x" * 2000 + '"}', 1009),
])
def test_ws_bad_control_messages(gw, message, code):
    event, close = run(_ws_refusal(gw, message))
    assert isinstance(event, Error) and event.seq == -1
    assert close == code


def test_ws_frame_over_the_limit_is_1009(gw):
    async def go():
        async with connect(gw.ws_url + "/v1/ws", max_size=2**24) as sock:
            await sock.send('{"type":"start","prompt":"' + "x" * 10_000 + '"}')
            with pytest.raises(websockets.ConnectionClosed) as info:
                # uvicorn and hypercorn close at their frame limit; granian has none, so the app
                # refuses the message itself: a `too_big` error event, then the same close.
                event = wsc.decode(await sock.recv())
                assert type(event) is Error and event.code == "too_big"
                await sock.recv()
            return info.value.rcvd.code

    assert run(go()) == 1009


def test_ws_attach_unknown_stream_is_refused_with_404(gw):
    async def go():
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(gw.ws_url + "/v1/streams/nope/ws"):
                pass
        return info.value.response.status_code

    assert run(go()) == 404


def test_ws_pre_error_keeps_the_socket_and_a_new_start_works(gw):
    async def go():
        async with connect(gw.ws_url + "/v1/ws") as sock:
            await sock.send(wsc.start(sim={"pre_error": 429}))
            refused = wsc.decode(await sock.recv())
            await sock.send(wsc.start(max_tokens=3, sim=SIM))
            events = [wsc.decode(await sock.recv()) for _ in range(5)]
            await sock.send(wsc.start(max_tokens=500, sim={"ttft_ms": 10, "itl_ms": 10}))
            await sock.recv()
            await sock.send(wsc.start(max_tokens=3))
            busy = None
            while busy is None:
                e = wsc.decode(await sock.recv())
                if isinstance(e, Error):
                    busy = e
            await sock.send(wsc.cancel())
            while True:
                e = wsc.decode(await sock.recv())
                if isinstance(e, Error) and e.seq >= 0:
                    cancelled = e
                    break
            await sock.send(wsc.start(max_tokens=2, sim=SIM))
            again = [wsc.decode(await sock.recv()) for _ in range(4)]
            return refused, events, busy, cancelled, again

    refused, events, busy, cancelled, again = run(go())
    assert refused.code == "http_429" and refused.retryable
    assert [e.type for e in events] == ["meta", "token", "token", "token", "done"]
    assert busy.code == "busy" and cancelled.code == "cancelled"
    assert [e.type for e in again] == ["meta", "token", "token", "done"]


def test_the_worker_lives_on(gw):
    async def go():
        async with Client(gw.url) as client:
            return await client.stream("sse", max_tokens=5, sim=SIM)

    assert run(go()).done is not None
    assert gw.proc.poll() is None
    assert httpx.get(gw.url + "/healthz").json()["status"] == "ok"
