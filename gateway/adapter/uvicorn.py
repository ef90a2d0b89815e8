"""uvicorn's fast path: write pre-framed bytes straight to the connection's transport.

An ASGI `send` costs a coroutine and a dozen checks per event. Under
uvicorn's httptools (HTTP/1.1 chunked body) and websockets-sansio protocols
the bytes it would write are known, so a writer puts them on the transport
itself: the same bytes, in one write for a whole batch. `FastPath` wraps the
app when `gateway serve --server uvicorn` runs it; per connection it checks
that `send` belongs to a protocol object with the attributes used here (the
pinned uvicorn, see tests/test_adapter.py), and offers nothing otherwise: the
transports then use the portable ASGI path. A writer refuses (False)
whenever the transport is paused or the peer gone, and the caller awaits
`send`, which waits or raises as the server decides.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from . import CONNECTION, Writer

__all__ = ["FastPath", "probe", "Inbox", "Flag"]

_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"
_WS_SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl"
_HTTP_ATTRS = ("transport", "flow", "disconnected", "response_complete", "chunked_encoding", "message_event")
_SERVER_PARSE = ServerProtocol.parse.__code__
_WS_ATTRS = ("transport", "writable", "disconnected", "close_sent", "handshake_complete", "conn", "request", "response")


class _Http:
    __slots__ = ("cycle",)

    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle

    def http_writer(self) -> Writer | None:
        cycle = self.cycle
        if cycle.chunked_encoding is not True:
            return None
        transport, flow = cycle.transport, cycle.flow

        def write(body: bytes) -> bool:
            if flow.write_paused or cycle.disconnected or cycle.response_complete:
                return False
            transport.write(b"%x\r\n%b\r\n" % (len(body), body))  # what uvicorn writes for one body message
            return True

        return write

    def ws_writer(self) -> Writer | None:
        return None

    def abort(self) -> None:
        self.cycle.transport.abort()

    def on_lost(self, callback: Callable[[], None] | None) -> bool:
        # The gateway's connection gate (gateway/gate.py) sits between the transport and uvicorn's
        # protocol and hears the loss first-hand; without it (uvicorn run some other way), no callback.
        hook = getattr(self.cycle.transport, "on_lost", None)
        if hook is None:
            return False
        hook(callback)
        if callback is not None:
            _lighten(self.cycle)
            if self.cycle.disconnected:  # gone before the callback was in place
                hook(None)
                callback()
        return True

    def forget_handshake(self) -> None:
        return None


def _lighten(cycle: Any) -> None:
    """uvicorn's `asyncio.Event`s for an HTTP response (the request's `message_event`, the connection's
    writable event in its flow control: ~0.75 KB each, a 64-slot deque of waiters) swapped for `Flag`s,
    which do the same calls. Only when nothing waits on the old one: the caller reads `receive` no more
    (its client's loss comes by callback) and no other task reads it; the flow's is set (no `send` parked)."""
    event = cycle.message_event
    if type(event) is asyncio.Event and not getattr(event, "_waiters", True):
        flag = Flag()
        if event.is_set():
            flag.set()
        cycle.message_event = flag
    flow = cycle.flow
    writable = getattr(flow, "_is_writable_event", None)
    if type(writable) is asyncio.Event and writable.is_set():  # (the flow lives as long as the connection)
        flag = Flag()
        flag.set()
        flow._is_writable_event = flag


class _WebSocket:
    __slots__ = ("proto",)

    def __init__(self, proto: Any) -> None:
        self.proto = proto

    def http_writer(self) -> Writer | None:
        return None

    def ws_writer(self) -> Writer | None:
        proto = self.proto
        if not proto.handshake_complete or proto.conn.extensions:  # permessage-deflate: the library frames
            return None
        transport, writable = proto.transport, proto.writable

        def write(frames: bytes) -> bool:
            if not writable.is_set() or proto.disconnected or proto.close_sent or transport.is_closing():
                return False
            transport.write(frames)
            return True

        return write

    def abort(self) -> None:
        self.proto.transport.abort()

    def on_lost(self, callback: Callable[[], None] | None) -> bool:
        return False  # a WebSocket session reads its socket anyway (control messages): it sees the close

    def forget_handshake(self) -> None:
        # uvicorn keeps the handshake's request and response (websockets' objects with their headers,
        # ~3.5 KB) for the connection's life; past the accept it never reads them again.
        proto = self.proto
        if not proto.handshake_complete or proto.disconnected:
            return
        proto.request = proto.response = None
        # The scope's copy of the request headers: read by the app's routing and guard before the
        # accept, by uvicorn only before it (its access log); the scope lives as long as the socket.
        scope = getattr(proto, "scope", None)
        if isinstance(scope, dict) and scope.get("type") == "websocket":
            scope["headers"] = []
        _fresh_parser(proto.conn)
        # uvicorn's inbox (an asyncio.Queue: three deques and an Event, ~3 KB with one 64-slot block
        # each) and its `writable` Event (~0.8 KB): the same calls, on lighter objects. Swapped only when
        # nothing waits on the old ones: the inbox empty (the caller is the one task reading `receive`),
        # the transport writable (no `send` parked on the Event).
        queue, writable = proto.queue, proto.writable
        if type(queue) is asyncio.Queue and queue.empty():
            proto.queue = Inbox()
        if type(writable) is asyncio.Event and writable.is_set():
            flag = Flag()
            flag.set()
            proto.writable = flag
        # Its ~37 attributes outgrew the instance's shared-key table into a dict of 1.6 KB; a copy with
        # the same entries is sized for them (0.8 KB). (No attribute is added past the accept.)
        proto.__dict__ = dict(vars(proto))


def _fresh_parser(conn: Any) -> None:
    """websockets' server keeps the handshake `Request` (headers and all) in its parser generator's frame
    for the connection's life; past the handshake that generator only parses frames. With nothing
    buffered, a new frame parser (websockets' own `Protocol.parse`, as it swaps in `discard()` on a
    close) takes its place. Anything else (another websockets, bytes half read): left as it is."""
    parser = getattr(conn, "parser", None)
    reader = getattr(conn, "reader", None)
    if (type(conn) is not ServerProtocol or conn.state is not State.OPEN or reader is None
            or getattr(parser, "gi_code", None) is not _SERVER_PARSE or reader.buffer or reader.eof
            or conn.events or conn.parser_exc is not None):
        return
    fresh = Protocol.parse(conn)
    next(fresh)  # to its first wait for bytes, as websockets starts a parser
    conn.parser = fresh
    parser.close()


class Inbox:
    """What uvicorn's WebSocket protocol uses of its `asyncio.Queue`, for one reader: put_nowait, get,
    empty, qsize."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: deque | None = None  # (a deque only while messages wait: its block is 0.6 KB)
        self.waiter: asyncio.Future | None = None

    def put_nowait(self, item: Any) -> None:
        if self.items is None:
            self.items = deque()
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self.items:
            self.waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        items = self.items
        item = items.popleft()
        if not items:
            self.items = None
        return item

    def empty(self) -> bool:
        return not self.items

    def qsize(self) -> int:
        return len(self.items) if self.items else 0


class Flag:
    """What uvicorn's WebSocket protocol uses of its `writable` `asyncio.Event`: set, clear, is_set, wait."""

    __slots__ = ("value", "waiters")

    def __init__(self) -> None:
        self.value = False
        self.waiters: list[asyncio.Future] | None = None

    def is_set(self) -> bool:
        return self.value

    def set(self) -> None:
        if self.value:
            return
        self.value = True
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        self.value = False

    async def wait(self) -> bool:
        if self.value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self.waiters is not None and waiter in self.waiters:
                self.waiters.remove(waiter)


def probe(scope: Scope, send: Send) -> _Http | _WebSocket | None:
    """The fast path for this connection, if `send` is a method of a uvicorn protocol known here."""
    owner = getattr(send, "__self__", None)
    module = type(owner).__module__
    if scope["type"] == "http" and module == _HTTPTOOLS and all(hasattr(owner, a) for a in _HTTP_ATTRS):
        return _Http(owner)
    if scope["type"] == "websocket" and module == _WS_SANSIO and all(hasattr(owner, a) for a in _WS_ATTRS):
        return _WebSocket(owner)
    return None


class FastPath:
    """Outermost ASGI wrapper: offers the fast path in the scope when the server is the known uvicorn."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = probe(scope, send) if scope["type"] != "lifespan" else None
        if conn is None:
            return await self.app(scope, receive, send)
        scope[CONNECTION] = conn
        try:
            await self.app(scope, receive, send)
        finally:
            # The connection holds uvicorn's request cycle, which holds this scope: left here, the
            # cycle and all it holds (transport, buffers) would wait for a full GC.
            del scope[CONNECTION]
