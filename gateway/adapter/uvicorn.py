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

from typing import Any, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from . import CONNECTION, Writer

__all__ = ["FastPath", "probe"]

_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"
_WS_SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl"
_HTTP_ATTRS = ("transport", "flow", "disconnected", "response_complete", "chunked_encoding")
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
        if callback is not None and self.cycle.disconnected:  # gone before the callback was in place
            hook(None)
            callback()
        return True

    def forget_handshake(self) -> None:
        return None


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
        if proto.handshake_complete:
            proto.request = proto.response = None


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
