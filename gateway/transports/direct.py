"""The per-event write straight to the socket, where the server underneath is known.

An ASGI `send` costs a coroutine and a dozen checks per event. Under
uvicorn's httptools (HTTP/1.1 chunked body) and websockets-sansio protocols
the bytes it would write are known, so the push path writes them to the
transport itself: the same bytes, in one write for a whole batch. Anything
else (another server, a response that is not chunked, WebSocket compression)
gets no writer, and a writer refuses (False) whenever the transport is paused
or the peer gone: the caller then uses `send` as before, which waits or
raises as the server decides.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["Writer", "http_writer", "ws_writer"]

Writer = Callable[[bytes], bool]

_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"
_WS_SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl"


def http_writer(send: Callable) -> Writer | None:
    """For a chunked response whose headers went out: write a body chunk, or refuse."""
    cycle = getattr(send, "__self__", None)
    if type(cycle).__module__ != _HTTPTOOLS or getattr(cycle, "chunked_encoding", None) is not True:
        return None
    transport, flow = cycle.transport, cycle.flow

    def write(body: bytes) -> bool:
        if flow.write_paused or cycle.disconnected or cycle.response_complete:
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(body), body))  # what uvicorn writes for one body message
        return True

    return write


def ws_writer(send: Callable) -> Writer | None:
    """For an open, uncompressed WebSocket: write ready-made server frames, or refuse."""
    proto = getattr(send, "__self__", None)
    if type(proto).__module__ != _WS_SANSIO or not getattr(proto, "handshake_complete", False):
        return None
    conn = proto.conn
    if conn.extensions:  # permessage-deflate: frames must go through the library
        return None
    transport, writable = proto.transport, proto.writable

    def write(frames: bytes) -> bool:
        if not writable.is_set() or proto.disconnected or proto.close_sent or transport.is_closing():
            return False
        transport.write(frames)
        return True

    return write
