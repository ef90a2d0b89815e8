"""The connection adapter's uvicorn fast path against the pinned uvicorn: bytes, backpressure, disconnect.

`gateway/adapter/uvicorn.py` relies on uvicorn's protocol objects. If a uvicorn
release changes them, these tests fail (rather than the gateway quietly taking
the portable path), and the portable path is what every other server gets
(tests marked `every_server`).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import time
import weakref

import httpx
import pytest
from websockets.sync.client import connect

from gateway.adapter import connection
from gateway.adapter.uvicorn import FastPath, Flag, Inbox
from gateway.codecs import ws as codec
from gateway.gate import Gate, gated
from tests.support import run, uvicorn_thread

# What the app saw, recorded for the test thread to assert: an assert inside the app runs on uvicorn's
# thread after the response went out, where a failure is only logged.
found: dict[str, object] = {}
CHUNK = b"x" * 65536


async def app(scope, receive, send):
    conn = connection(scope)
    if scope["type"] == "websocket":
        await receive()  # connect
        found["ws_before_accept"] = conn.ws_writer() is not None
        await send({"type": "websocket.accept"})
        proto = conn.proto
        found["ws_handshake"] = proto.request is not None and proto.response is not None
        request = weakref.ref(proto.request)  # websockets' handshake Request: its parser held it too
        queue, writable = proto.queue, proto.writable
        conn.forget_handshake()  # (what follows, writer and `send` alike, must not need them)
        gc.collect()
        found["ws_forgot"] = proto.request is None and proto.response is None and request() is None
        found["ws_scope_headers"] = scope["headers"]
        found["ws_light"] = (type(queue) is asyncio.Queue and type(proto.queue) is Inbox
                             and type(writable) is asyncio.Event and type(proto.writable) is Flag
                             and sys.getsizeof(vars(proto)) <= sys.getsizeof(dict(vars(proto))))  # compact
        if scope["path"] == "/echo":  # the socket still works as uvicorn runs it: messages, pings, close
            while (message := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message["text"].upper()})
            found["ws_echo_end"] = message
            return
        write = conn.ws_writer()
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
    path = scope["path"]
    if path == "/plain":  # a Content-Length response: not chunked, no writer
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        found["plain"] = conn.http_writer() is not None
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    write = conn.http_writer()
    found["http"] = write is not None
    if path == "/flood":  # backpressure: a reader that does not read pauses the writer
        written = 0
        while write(CHUNK):
            written += len(CHUNK)
            if written > 256 * 2**20:
                break
        found["written_before_pause"] = written
        await send({"type": "http.response.body", "body": b"end", "more_body": False})  # waits for the reader
        return
    if path in ("/lost", "/lost-flood"):  # the disconnect by callback: no task reads `receive`
        lost = asyncio.Event()
        cycle = conn.cycle
        event, writable = cycle.message_event, cycle.flow._is_writable_event
        found["on_lost"] = conn.on_lost(lost.set)
        if found["on_lost"]:  # uvicorn's Events (unused from here) swapped for lighter Flags
            found["http_light"] = (type(event) is asyncio.Event and type(cycle.message_event) is Flag
                                   and type(writable) is asyncio.Event and type(cycle.flow._is_writable_event) is Flag)
        if path == "/lost-flood":  # backpressure on the Flag: `send` parks on it until the reader reads
            written = 0
            while write(CHUNK):
                written += len(CHUNK)
            found["written_before_pause"] = written
            await send({"type": "http.response.body", "body": b"end", "more_body": False})
            conn.on_lost(None)
            return
        if found["on_lost"]:
            await asyncio.wait_for(lost.wait(), 10)
            found["lost_write"] = write(b"late")
        return
    if path == "/gone":  # disconnect: once the client left, the writer refuses
        while (await receive())["type"] != "http.disconnect":
            pass
        found["after_disconnect"] = write(b"late")
        return
    assert write(b"one,") and write(b"two,")  # (else the client's text differs)
    await send({"type": "http.response.body", "body": b"three", "more_body": False})
    found["http_late"] = write(b"late")


def seen(key: str) -> object:
    """What the app recorded under `key` (it may record it just after the client is done)."""
    deadline = time.monotonic() + 10
    while key not in found:
        assert time.monotonic() < deadline, f"the app never recorded {key!r}"
        time.sleep(0.01)
    return found.pop(key)


def _serve(**kw):
    return uvicorn_thread(FastPath(app), "/plain", lifespan="off", **kw)


@pytest.fixture(scope="module")
def server():
    with _serve() as port:
        yield port


def test_http_writer_writes_the_chunks_uvicorn_would(server):
    r = httpx.get(f"http://127.0.0.1:{server}/stream")
    assert r.status_code == 200 and r.text == "one,two,three"
    assert r.headers["transfer-encoding"] == "chunked"
    assert seen("http") is True
    assert seen("http_late") is False  # refused once the response is complete


def test_no_http_writer_without_chunked_encoding(server):
    assert httpx.get(f"http://127.0.0.1:{server}/plain").text == "ok"
    assert seen("plain") is False


def test_http_writer_refuses_under_backpressure_and_loses_nothing(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        # Not reading: the server's buffer fills and the writer must refuse.
        written = seen("written_before_pause")
        assert written < 64 * 2**20, "the writer never refused a paused transport"
        s.settimeout(20)
        data = _read_response(s)
    body = _dechunk(bytes(data).split(b"\r\n\r\n", 1)[1])
    assert body == CHUNK * (written // len(CHUNK)) + b"end"


def test_http_writer_refuses_once_the_client_left(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    assert seen("after_disconnect") is False


def test_on_lost_calls_back_when_the_client_leaves_behind_the_gate():
    """`serve` puts the connection gate in front of uvicorn's protocol: it reports the loss, so an open
    stream needs no task reading `receive` (gateway/transports/http.py)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    with _serve(http=gated(HttpToolsProtocol, Gate(10, 32768, 100, 10))) as port:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /lost HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            assert seen("on_lost") is True
        assert seen("lost_write") is False  # called back after uvicorn saw the loss


def test_lightened_events_keep_backpressure_and_keep_alive_working():
    """With `on_lost` in place, uvicorn's Events are Flags: a `send` parked on the paused flow resumes as the
    reader reads, nothing lost, and the connection serves its next request (the flow's Flag, a new cycle)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    with _serve(http=gated(HttpToolsProtocol, Gate(10, 32768, 100, 10))) as port:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /lost-flood HTTP/1.1\r\nHost: x\r\n\r\n")
            written = seen("written_before_pause")
            assert seen("on_lost") is True and seen("http_light") is True
            s.settimeout(20)
            data = _read_response(s)
            assert _dechunk(bytes(data).split(b"\r\n\r\n", 1)[1]) == CHUNK * (written // len(CHUNK)) + b"end"
            s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection, kept alive
            data = _read_response(s)
            assert _dechunk(bytes(data).split(b"\r\n\r\n", 1)[1]) == b"one,two,three"


def test_no_on_lost_without_the_gate(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"GET /lost HTTP/1.1\r\nHost: x\r\n\r\n")
        assert seen("on_lost") is False  # the transports read `receive` then


def test_ws_writer_writes_frames_the_client_reads(server):
    with connect(f"ws://127.0.0.1:{server}/ws", compression=None) as sock:
        assert sock.recv(5) == '{"n":1}'
        assert sock.recv(5) == "é" * 100
        assert sock.recv(5) == "via send"
    assert seen("ws_before_accept") is False  # not open yet
    assert seen("ws_handshake") is True and seen("ws_forgot") is True  # uvicorn's copies, dropped
    assert seen("ws_scope_headers") == []
    assert seen("ws_light") is True
    assert seen("ws") is True
    assert seen("ws_after_close") is False  # refused once the close went out


def test_forgotten_handshake_leaves_a_working_socket(server):
    """After `forget_handshake` (fresh frame parser, uvicorn's inbox and writable flag replaced), uvicorn
    still delivers messages in order, answers pings and completes the close handshake."""
    with connect(f"ws://127.0.0.1:{server}/echo", compression=None) as sock:
        sock.send("one")
        sock.send("two" * 5000)  # a frame of its own, longer than one read
        assert sock.recv(5) == "ONE"
        assert sock.recv(5) == "TWO" * 5000
        sock.ping(b"p").wait(5)
        sock.send("three")
        assert sock.recv(5) == "THREE"
    assert seen("ws_forgot") is True and seen("ws_light") is True
    assert seen("ws_echo_end") == {"type": "websocket.disconnect", "code": 1000, "reason": ""}


async def _flag_and_inbox():
    inbox, flag = Inbox(), Flag()
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    got = [await getter, await inbox.get()]
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    await asyncio.sleep(0)
    flag.set()
    return got, inbox.empty(), inbox.qsize(), await waiters[1], flag.is_set(), flag.waiters


def test_inbox_and_flag_behave_as_uvicorn_uses_queue_and_event():
    assert run(_flag_and_inbox()) == ([1, 2], True, 0, True, True, None)


def test_no_ws_writer_when_compression_is_negotiated():
    with _serve(ws_per_message_deflate=True) as port:
        with connect(f"ws://127.0.0.1:{port}/ws") as sock:  # the client offers permessage-deflate
            assert sock.recv(5) == '{"n":1}'  # written by the fallback below, through the library
    assert seen("ws_before_accept") is False
    assert seen("ws_handshake") is True and seen("ws_forgot") is True
    assert seen("ws") is False


def test_no_fast_path_off_uvicorn():
    """Any other server's `send` gets no Connection: the transports take the portable path."""
    seen = []

    async def inner(scope, receive, send):
        seen.append(connection(scope))

    async def send(message):
        pass

    run(FastPath(inner)({"type": "http", "path": "/"}, None, send))
    assert seen == [None]


def _read_response(s: socket.socket) -> bytes:
    """A chunked response's bytes, head included, up to its last chunk (the socket stays open)."""
    data = bytearray()
    while not data.endswith(b"0\r\n\r\n"):
        chunk = s.recv(1 << 20)
        assert chunk
        data += chunk
    return bytes(data)


def _dechunk(data: bytes) -> bytes:
    out, at = bytearray(), 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        at = end + 2 + size + 2
