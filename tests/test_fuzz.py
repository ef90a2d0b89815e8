"""Hostile input on a live gateway: raw WebSocket frames, fuzzed control messages; the worker lives on."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect as sync_connect

from gateway.client import Client
from gateway.codecs import ws as wsc
from gateway.sources.simulated import expected_text

from .conftest import FAST
from .support import gateway, run

SIM = {"ttft_ms": 10, "itl_ms": 5, "jitter": 0}


def alive(gw) -> None:
    assert gw.proc.poll() is None
    assert httpx.get(gw.url + "/healthz", timeout=5).json()["status"] == "ok"

    async def one():
        async with Client(gw.url) as client:
            return await client.stream("ws", "alive", max_tokens=5, sim=SIM)

    assert run(one()).text == expected_text("alive", 0, 5)


@pytest.mark.parametrize(("frame", "code"), [
    (Frame(Opcode.TEXT, b'{"type":"cancel"\xff\xfe}'), 1007),  # not UTF-8
    (Frame(Opcode.TEXT, b'{"type":"start","prompt":"' + b"x" * 8000 + b'"}'), 1009),  # over ws_max_size
    (Frame(Opcode.BINARY, b'{"type":"cancel"}'), 1003),  # binary where JSON text is expected
    (Frame(Opcode.TEXT, b"\xe2\x82", fin=False), 1007),  # a fragment cut inside a character...
])
def test_malformed_frames_get_their_close_codes(gw, frame, code):
    with sync_connect(gw.ws_url + "/v1/ws", open_timeout=5) as conn:
        data = frame.serialize(mask=True)
        if not frame.fin:  # ...and its continuation does not complete it
            data += Frame(Opcode.CONT, b"\x28").serialize(mask=True)
        conn.socket.sendall(data)
        with pytest.raises(websockets.ConnectionClosedError) as info:
            while True:
                conn.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == code
    alive(gw)


control = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["start", "cancel", "resume", "ping", ""])},
        optional={
            "stream_id": st.text(max_size=30), "after": st.integers(-3, 10**12) | st.text(max_size=5),
            "prompt": st.text(max_size=50), "max_tokens": st.integers(-5, 10**7),
            "sim": st.fixed_dictionaries({}, optional={"ttft_ms": st.floats(-1, 50), "itl_ms": st.floats(-1, 5),
                                                       "pre_error": st.integers(300, 700),
                                                       "fail_after": st.integers(-1, 3)}),
            "model": st.sampled_from(["sim", "nope", ""]), "seed": st.integers(-1, 2**64),
        },
    ),
    st.text(max_size=40),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(control, min_size=1, max_size=4))
def test_fuzzed_control_messages(gw, messages):
    """Every sequence gets events, error events or a clean close (1000/1003/1008/1009), never 1011."""
    with sync_connect(gw.ws_url + "/v1/ws", open_timeout=5) as conn:
        try:
            for message in messages:
                conn.send(message if isinstance(message, str) else json.dumps(message))
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                event = wsc.decode(conn.recv(timeout=end - time.monotonic()))
                assert event.type in ("meta", "token", "heartbeat", "error", "done")
        except TimeoutError:
            pass
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code in (1000, 1003, 1008, 1009), exc
    assert gw.proc.poll() is None


def test_fuzzing_left_the_worker_healthy(gw):
    alive(gw)
    assert gw.metrics()["gateway_connections{transport=\"ws\"}"] == 0


def test_complete_with_a_quiet_model_does_not_stall_the_worker():
    """Found by schemathesis: /v1/complete spun on a heartbeat flag and froze the event loop."""
    result = {}
    with gateway({**FAST, "GATEWAY_IDLE_TIMEOUT_S": "30"}) as quiet:  # an 8 s wait for the first token is fine
        thread = threading.Thread(target=lambda: result.update(r=httpx.post(
            quiet.url + "/v1/complete", json={"prompt": "q", "max_tokens": 3, "sim": {**SIM, "ttft_ms": 8000}},
            timeout=30)))
        thread.start()
        time.sleep(0.7)  # past the 0.3 s heartbeat, 7 s before the first token
        started = time.monotonic()
        assert httpx.get(quiet.url + "/healthz", timeout=10).status_code == 200
        answered = time.monotonic() - started
        thread.join(30)
    assert result["r"].status_code == 200 and result["r"].json()["text"] == expected_text("q", 0, 3)
    # A frozen loop answers only once the first token is due, 7 s later; a free one at once (a busy
    # machine may add a second or two).
    assert answered < 3.5
