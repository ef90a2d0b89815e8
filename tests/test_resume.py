"""The resume machine (gateway/resume.py), socket-free, and the client bugs it fixed, against a real gateway.

The three bugs of issue 16: the Locust users raised AttributeError on a draining
server's `reconnect` event; the async client waited for ever on a WebSocket
resume error (the seq -1 error was dropped as a duplicate); and it gave up on a
503 `draining` behind a single (load-balancer) URL.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.client import Client
from gateway.events import HEARTBEAT, Done, Error, Meta, Reconnect, Token
from gateway.resume import CLOSE, DELIVER, LAST, SKIP, STOP, Again, GatewayError, Resume, StreamResult

from .support import run, uvicorn_thread


def machine(**kw) -> Resume:
    return Resume(StreamResult(), rand=lambda: 0.5, **kw)


def test_events_in_order_then_the_end():
    m = machine()
    m.opened(0.0)
    assert m.event(Meta("s1", "sim", 0.0), 0.1) is DELIVER
    assert m.event(HEARTBEAT, 0.2) is SKIP
    assert m.event(Token(1, "a"), 0.3) is DELIVER
    assert m.event(Token(1, "a"), 0.4) is SKIP  # a duplicate after a resume
    assert m.event(Done(2, "stop", 1, "x"), 0.5) is LAST
    r = m.result
    assert r.text == "a" and r.stream_id == "s1" and r.heartbeats == 1 and r.duplicates == 1


def test_a_cut_resumes_after_the_last_seq_with_the_backoff():
    m = machine()
    m.opened(0.0)
    for event in (Meta("s1", "sim", 0.0), Token(1, "a"), Token(2, "b")):
        m.event(event, 0.1)
    step = m.cut(2.0)
    assert step == Again(after=2, delay=0.15 * 0.75, elsewhere=False)  # gateway/backoff.py, attempt 1
    assert m.result.reconnects == 1 and len(m.result.cuts) == 1


def test_an_event_past_a_gap_is_never_delivered_the_stream_resumes_before_it():
    # A copy of the stream with a hole (seq 2 missing) must not end in `done` with text missing.
    m = machine()
    m.opened(0.0)
    for event in (Meta("s1", "sim", 0.0), Token(1, "a")):
        assert m.event(event, 0.1) is DELIVER
    assert m.event(Token(3, "c"), 0.2) is CLOSE  # seq 2 skipped: end this connection
    assert m.cut(0.3) == Again(after=1, delay=0.15 * 0.75, elsewhere=False)
    m.opened(0.4)
    for event in (Token(2, "b"), Token(3, "c")):
        assert m.event(event, 0.5) is DELIVER
    assert m.event(Done(4, "stop", 3, "x"), 0.6) is LAST
    r = m.result
    assert r.text == "abc" and r.done is not None and r.gaps == 1 and r.reconnects == 1


def test_a_server_that_skips_always_leaves_the_stream_cut_never_done():
    m = machine(max_resumes=2)
    m.opened(0.0)
    m.event(Meta("s1", "sim", 0.0), 0.1)
    for _ in range(3):
        assert m.event(Done(2, "stop", 1, "x"), 0.2) is CLOSE  # seq 1 never comes
        step = m.cut(0.3)
        m.opened(0.4)
    assert step is STOP and m.result.cut and m.result.done is None and m.result.gaps == 3


def test_the_client_reads_a_skipped_event_again_instead_of_reporting_done():
    """A real HTTP server whose first answer skips seq 2 (a replica with a hole in its copy): the Python
    client must not yield past the hole; it resumes after seq 1 and gets the whole text."""
    lines = [b'{"type":"meta","seq":0,"stream_id":"s1","model":"sim","created":0.0}',
             b'{"type":"token","seq":1,"text":"a"}', b'{"type":"token","seq":2,"text":"b"}',
             b'{"type":"token","seq":3,"text":"c"}', b'{"type":"done","seq":4,"finish_reason":"stop","tokens":3,'
             b'"sha256":"x"}']
    asked: list[str] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        asked.append(scope["query_string"].decode())
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        after = int(scope["query_string"].decode().partition("after=")[2] or -1)
        events = lines[after + 1:]
        if len(asked) == 2:  # the first stream request: seq 2 is missing
            events = [e for e in events if b'"seq":2,' not in e]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})
        await send({"type": "http.response.body", "body": b"\n".join(events) + b"\n"})

    async def go(port):
        async with Client(f"http://127.0.0.1:{port}") as client:
            return await client.stream("ndjson", stream_id="s1")

    with uvicorn_thread(app) as port:
        r = run(go(port))
    assert asked[1:] == ["", "after=1"]  # read again from the last seq before the hole
    assert r.text == "abc" and r.done is not None and r.gaps == 1 and r.reconnects == 1


def test_a_draining_servers_reconnect_event_ends_the_connection_and_resumes_after_its_delay():
    # The Locust users passed this event to StreamResult.take: AttributeError (it has no seq).
    m = machine()
    m.opened(0.0)
    m.event(Meta("s1", "sim", 0.0), 0.1)
    m.event(Token(1, "a"), 0.2)
    assert m.event(Reconnect(retry_ms=250), 0.3) is CLOSE
    assert m.cut(0.4) == Again(after=1, delay=0.25, elsewhere=False)
    assert m.result.reconnect_requests == 1


def test_a_connection_error_on_a_resume_raises_at_once():
    # The async client dropped this (seq -1 <= last seq: "a duplicate") and waited for ever.
    m = machine()
    m.opened(0.0)
    m.event(Meta("s1", "sim", 0.0), 0.1)
    m.event(Token(1, "a"), 0.2)
    with pytest.raises(GatewayError) as info:
        m.event(Error(-1, "not_found", "no stream"), 0.3)
    assert info.value.status == 0
    with pytest.raises(GatewayError) as info:
        m.event(Error(-1, "draining", "going away"), 0.3)
    assert info.value.status == 503  # worth another try: `refused` decides


def test_503_draining_behind_one_url_is_tried_again_after_retry_after():
    # The async client gave up when it had a single base URL (a load balancer).
    m = machine(urls=1, max_resumes=2)
    m.opened(0.0)
    draining = GatewayError(503, {"code": "draining"}, retry_after=1.0)
    assert m.refused(draining) == Again(after=-1, delay=1.0, elsewhere=False)
    assert m.refused(draining) == Again(after=-1, delay=1.0, elsewhere=False)
    with pytest.raises(GatewayError):
        m.refused(draining)  # max_resumes reached
    with pytest.raises(GatewayError):
        machine().refused(GatewayError(404, {"code": "not_found"}))


def test_several_urls_rotate_and_shorten_the_wait():
    m = machine(urls=3)
    m.opened(0.0)
    m.event(Meta("s1", "sim", 0.0), 0.1)
    step = m.refused(GatewayError(503, {}, retry_after=1.0))
    assert step.elsewhere and step.delay == pytest.approx(0.05) and m.url == 1
    step = m.cut(1.0)
    assert m.url == 2 and step.delay <= 0.1


def test_an_eventsource_waits_its_retry_and_stops_on_a_refusal():
    m = machine(eventsource=True)
    m.retry_s = 0.2
    m.opened(0.0)
    m.event(Meta("s1", "sim", 0.0), 0.1)
    assert m.cut(1.0).delay == 0.2
    with pytest.raises(GatewayError):
        m.refused(GatewayError(503, {}, retry_after=1.0))  # EventSource fails for good on a non-200


def test_no_resume_without_a_stream_id_or_past_the_limit():
    m = machine()
    m.opened(0.0)
    assert m.cut(1.0) is STOP  # nothing arrived: no id to resume
    m = machine(max_resumes=1)
    m.opened(0.0)
    m.event(Meta("s1", "sim", 0.0), 0.1)
    assert isinstance(m.cut(1.0), Again)
    assert m.cut(2.0) is STOP


def test_websocket_resume_of_an_unknown_stream_raises_instead_of_hanging(gw):
    async def go():
        async with Client(gw.url) as client:
            with pytest.raises(GatewayError) as info:
                await asyncio.wait_for(client.stream("ws", stream_id="no-such-stream", after=3), 15)
            return info.value

    exc = run(go())
    assert exc.problem["code"] == "not_found"
