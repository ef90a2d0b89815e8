"""The disconnect policy: a lost connection is not a cancel, on one-shots too (GATEWAY_DISCONNECT).

Each test closes the client's socket abruptly (SO_LINGER 0: a reset, no goodbye) in the middle of a
one-shot stream (POST /v1/sse, POST /v1/ndjson, WebSocket `start`), as a phone losing signal or a
killed tab does, then resumes by stream id and seq.
"""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest
from websockets.sync.client import connect as ws_connect

from gateway.client import Client
from gateway.codecs import ndjson, sse
from gateway.events import Error, Token
from gateway.sources.simulated import expected_text

from .conftest import FAST
from . import wire
from .support import gateway, run

ONE_SHOTS = ("sse", "ndjson", "ws")
SIM = {"ttft_ms": 10, "itl_ms": 20, "jitter": 0}
N = 120  # tokens per stream: ~2 s after the cut, so the resume comes before the end
CUT_AT = 10  # the client reads up to this token seq, then its socket dies


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_then_drop(port: int, transport: str, prompt: str, max_tokens: int = N) -> tuple[str, list[Token]]:
    """Start a one-shot, read tokens up to seq CUT_AT, reset the socket: (stream id, tokens read)."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "seed": 3, "sim": SIM}
    tokens: list[Token] = []
    stream_id = None
    if transport == "ws":
        conn = ws_connect(f"ws://127.0.0.1:{port}/v1/ws", compression=None)
        conn.send(json.dumps({"type": "start", **body}))
        while not tokens or tokens[-1].seq < CUT_AT:
            event = json.loads(conn.recv(timeout=10))
            if event["type"] == "meta":
                stream_id = event["stream_id"]
            elif event["type"] == "token":
                tokens.append(Token(event["seq"], event["text"]))
        _reset(conn.socket)
        return stream_id, tokens
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (transport.encode(), len(payload), payload))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    head, rest = head.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    stream_id = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                     if line.lower().startswith(b"x-stream-id:"))
    decoder = sse.Decoder() if transport == "sse" else ndjson.Decoder()
    chunked = _Dechunk()
    data = rest
    while not tokens or tokens[-1].seq < CUT_AT:
        for event in decoder.feed(chunked.feed(data)):
            if type(event) is Token:
                tokens.append(event)
        if tokens and tokens[-1].seq >= CUT_AT:
            break
        data = sock.recv(4096)
        assert data, "the server closed first"
    _reset(sock)
    return stream_id, tokens


class _Dechunk:
    """HTTP/1.1 chunked transfer coding, just enough for a test."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = b""
        while True:
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                return out
            size = int(line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return out
            out += rest[:size]
            self.buf = rest[size + 2:]


def cancelled(gw, reason: str) -> float:
    return gw.metrics().get(f'gateway_streams_cancelled_total{{reason="{reason}"}}', 0.0)


def settle(gw, timeout_s: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while (m := gw.metrics())["gateway_active_streams"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return m


@pytest.mark.parametrize("resume_on", ONE_SHOTS)
@pytest.mark.parametrize("transport", ONE_SHOTS)
def test_a_dropped_one_shot_resumes_with_the_exact_rest(gw, transport, resume_on):
    before = settle(gw)
    stream_id, head = read_then_drop(gw.port, transport, f"drop-{transport}")
    time.sleep(0.3)  # the generation goes on meanwhile (grace 1 s here)

    tail = run(wire.read(gw.url, resume_on, stream_id=stream_id, after=CUT_AT))  # raw: nothing filtered
    assert [t.seq for t in head][-1] == CUT_AT
    wire.assert_exact(tail.events, CUT_AT + 1, N + 1)  # the exact rest and `done`: no resent, no skipped event
    assert "".join(t.text for t in head[:CUT_AT]) + tail.text == expected_text(f"drop-{transport}", 3, N)
    assert tail.terminal["type"] == "done"
    after = settle(gw)
    assert cancelled(gw, "client_gone") == before.get('gateway_streams_cancelled_total{reason="client_gone"}', 0)
    # A reader came back: nothing was generated for nobody.
    assert after["gateway_wasted_tokens_total"] == before["gateway_wasted_tokens_total"]


def test_a_dropped_one_shot_nobody_resumes_ends_after_the_grace_and_counts_its_waste(gw):
    before = settle(gw)
    stream_id, head = read_then_drop(gw.port, "sse", "abandoned", max_tokens=1000)
    left = time.monotonic()
    status = None
    while time.monotonic() - left < 5:
        status = run(_status(gw, stream_id))
        if status["status"] != "running":
            break
        time.sleep(0.05)
    took = time.monotonic() - left
    assert status["status"] == "error" and status["error"] == "cancelled"
    assert 0.8 < took < 3.0  # the grace is 1 s here, swept every 0.25 s
    after = settle(gw)
    assert after['gateway_streams_cancelled_total{reason="detached"}'] > before.get(
        'gateway_streams_cancelled_total{reason="detached"}', 0)
    # What came after the reader left: ~1 s at 20 ms a token (wide margins for a noisy machine).
    wasted = after["gateway_wasted_tokens_total"] - before["gateway_wasted_tokens_total"]
    assert 20 <= wasted <= status["tokens"] - CUT_AT


async def _status(gw, stream_id: str) -> dict:
    async with Client(gw.url) as client:
        return (await client.http.get(f"{gw.url}/v1/streams/{stream_id}")).json()


@pytest.mark.parametrize("how", ["delete", "abort"])
def test_an_explicit_cancel_stops_a_one_shot_at_once(gw, how):
    async def go():
        async with Client(gw.url) as client:
            seen = []
            async for event, _ in client.events("ndjson", prompt="stop", max_tokens=3000, sim=SIM):
                seen.append(event)
                if type(event) is Token and event.seq == 3:
                    url = f"{gw.url}/v1/streams/{seen[0].stream_id}"
                    r = await (client.http.delete(url) if how == "delete" else client.http.post(url + "/cancel"))
                    assert r.status_code == 204
            return seen

    events = run(go())
    assert type(events[-1]) is Error and events[-1].code == "cancelled"
    assert len(events) < 50  # it stopped, not ran to 3,000


@pytest.fixture(scope="module")
def gw_cancel():
    with gateway({**FAST, "GATEWAY_DISCONNECT": "cancel"}) as g:
        yield g


@pytest.mark.parametrize("transport", ONE_SHOTS)
def test_the_cancel_policy_stops_a_one_shot_when_its_socket_goes(gw_cancel, transport):
    before = cancelled(gw_cancel, "client_gone")
    stream_id, _ = read_then_drop(gw_cancel.port, transport, "policy")
    deadline = time.monotonic() + 5
    while cancelled(gw_cancel, "client_gone") == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cancelled(gw_cancel, "client_gone") == before + 1
    status = run(_status(gw_cancel, stream_id))
    assert status["status"] == "error" and status["error"] == "cancelled" and status["tokens"] < N
