"""The push path under backpressure: a reader that stops reading still gets every token, once, in order.

Idle connections are written straight from the clock's flush; once a client
stops reading, the server's send blocks and the connection's task takes over.
These tests make that happen on purpose and check nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest
from websockets.asyncio.client import connect

from gateway.codecs import ndjson, sse, ws
from gateway.events import Done, Token
from gateway.sources.simulated import expected_text

from .support import gateway, run

# Many tokens, fast (~7 MB in about a second): the kernel's buffers (a few MB) and then the
# server's write buffer fill while nobody reads.
N = 100_000
REQUEST = {"prompt": "backpressure", "seed": 3, "max_tokens": N, "sim": {"ttft_ms": 0, "itl_ms": 0.01, "jitter": 0}}


@pytest.fixture(scope="module")
def gw():
    with gateway({"GATEWAY_MAX_TOKENS_LIMIT": str(N)}) as g:
        yield g


def _small_socket(gw) -> socket.socket:
    """A client socket with a tiny receive buffer, so the server's writes back up quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", gw.port))
    sock.setblocking(False)
    return sock


def _dechunk(data: bytes) -> bytes:
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    body = bytearray()
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return bytes(body)
        body += rest[:n]
        rest = rest[n + 2:]


def _check(events):
    tokens = [e for e in events if type(e) is Token]
    assert [t.seq for t in tokens] == list(range(1, N + 1))
    assert "".join(t.text for t in tokens) == expected_text("backpressure", 3, N)
    assert type(events[-1]) is Done


@pytest.mark.parametrize("fmt", ["sse", "ndjson"])
def test_http_reader_that_pauses(gw, fmt):
    async def go():
        reader, writer = await asyncio.open_connection(sock=_small_socket(gw))
        body = orjson.dumps(REQUEST)
        writer.write(b"POST /v1/%b HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (fmt.encode(), len(body), body))
        await asyncio.sleep(1.5)  # read nothing while the stream runs
        data = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        return data

    decoder = sse.Decoder() if fmt == "sse" else ndjson.Decoder()
    _check(decoder.feed(_dechunk(run(go()))))


def test_websocket_reader_that_pauses(gw):
    async def go():
        events = []
        # A small queue: the client stops reading the socket once 4 messages wait.
        async with connect(gw.ws_url + "/v1/ws", sock=_small_socket(gw), compression=None, max_queue=4,
                           ping_interval=None) as sock:
            await sock.send(ws.start(**REQUEST))
            await asyncio.sleep(1.5)
            async for message in sock:
                events.append(ws.decode(message))
                if type(events[-1]) is Done:
                    break
        return events

    _check(run(go()))
