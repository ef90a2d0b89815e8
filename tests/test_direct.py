"""The hot path's direct writers against a real uvicorn: found where they should be, same bytes on the wire.

`gateway/transports/direct.py` relies on uvicorn's protocol objects; if a
uvicorn release changes them, these tests fail instead of the gateway quietly
falling back to the slower ASGI send.
"""

from __future__ import annotations

import time

import httpx
import pytest
from websockets.sync.client import connect

from gateway.codecs import ws as codec
from gateway.transports.direct import http_writer, ws_writer
from tests.support import uvicorn_thread

# What the app saw, recorded for the test thread to assert: an assert inside the app runs on uvicorn's
# thread after the response went out, where a failure is only logged.
found: dict[str, bool] = {}


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # connect
        found["ws_before_accept"] = ws_writer(send) is not None
        await send({"type": "websocket.accept"})
        write = ws_writer(send)
        found["ws"] = write is not None
        if write is None:
            await send({"type": "websocket.send", "text": '{"n":1}'})
            await send({"type": "websocket.close", "code": 1000})
            return
        assert write(codec.text_frame(b'{"n":1}') + codec.text_frame("é".encode() * 100))
        await send({"type": "websocket.send", "text": "via send"})
        await send({"type": "websocket.close", "code": 1000})
        found["ws_after_close"] = write(codec.text_frame(b"after close"))
        return
    if scope["path"] == "/plain":  # a Content-Length response: not chunked, no writer
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        found["plain"] = http_writer(send) is not None
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    write = http_writer(send)
    found["http"] = write is not None
    assert write(b"one,") and write(b"two,")
    await send({"type": "http.response.body", "body": b"three", "more_body": False})
    found["http_late"] = write(b"late")


def seen(key: str) -> bool:
    """What the app recorded under `key` (it may record it just after the client is done)."""
    deadline = time.monotonic() + 10
    while key not in found:
        assert time.monotonic() < deadline, f"the app never recorded {key!r}"
        time.sleep(0.01)
    return found.pop(key)


def _serve(**kw):
    return uvicorn_thread(app, "/plain", lifespan="off", **kw)


@pytest.fixture(scope="module")
def server():
    with _serve() as port:
        yield port


def test_http_writer_writes_chunks_uvicorn_would(server):
    r = httpx.get(f"http://127.0.0.1:{server}/stream")
    assert r.status_code == 200 and r.text == "one,two,three"
    assert r.headers["transfer-encoding"] == "chunked"
    assert seen("http") is True
    assert seen("http_late") is False  # refused once the response is complete


def test_no_http_writer_without_chunked_encoding(server):
    assert httpx.get(f"http://127.0.0.1:{server}/plain").text == "ok"
    assert seen("plain") is False


def test_ws_writer_writes_frames_the_client_reads(server):
    with connect(f"ws://127.0.0.1:{server}/ws", compression=None) as sock:
        assert sock.recv(5) == '{"n":1}'
        assert sock.recv(5) == "é" * 100
        assert sock.recv(5) == "via send"
    assert seen("ws_before_accept") is False  # no writer before the handshake
    assert seen("ws") is True
    assert seen("ws_after_close") is False  # refused once the close went out


def test_no_ws_writer_when_compression_is_negotiated():
    with _serve(ws_per_message_deflate=True) as port:
        with connect(f"ws://127.0.0.1:{port}/ws") as sock:  # the client offers permessage-deflate
            assert sock.recv(5) == '{"n":1}'  # written by the fallback below, through the library
    assert seen("ws_before_accept") is False
    assert seen("ws") is False
