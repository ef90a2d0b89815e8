"""The connection gate: what happens before a request reaches the HTTP parser.

uvicorn (httptools) has no header timeout and no header size limit, and counts
connections only once a request's headers are complete: a client that sends
half a request line, or ten megabytes of header, holds a socket (and memory)
forever, unseen. The gate wraps the server's HTTP protocol (uvicorn's public
`http=` option takes a protocol class) and, per connection, watches only the
bytes in front of each request's body:

- a request head must be complete within `header_timeout_s` (from accept for
  the first request, from its first byte for the next ones; an idle keep-alive
  connection is the server's `timeout_keep_alive`), else 408 and close;
- a head over `max_header_bytes` gets 431 and close, so memory stays bounded;
- connections are counted from accept. Over `max_connections` plus
  `max_pending_connections`, the oldest connection still sending its head is
  closed to make room (a real client sends its head at once; a slow one is
  the one to go), and with none of those the new connection gets 503;
- past the process's capacity (gateway/admission.py), a request that would create a stream (a POST to
  one of `creates`) gets the admission's 503 as soon as its head is complete, before the parser and
  the app: cheap enough to refuse a storm by the hundred.

Once a connection upgrades (WebSocket), the gate only passes bytes through.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

__all__ = ["Gate", "gated"]

_HEAD, _BODY, _CHUNKED, _IDLE, _PASS = range(5)
_END = b"\r\n\r\n"
_MAX_CHUNK_LINE = 4096


def _reply(status: str, detail: str) -> bytes:
    body = b'{"type":"about:blank","title":"%s","status":%s,"detail":"%s"}' % (
        status[4:].encode(), status[:3].encode(), detail.encode())
    return (b"HTTP/1.1 %s\r\nContent-Type: application/problem+json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status.encode(), len(body), body))


class Gate:
    """The limits and counts of one server, shared by its connections."""

    def __init__(self, header_timeout_s: float, max_header_bytes: int, max_connections: int,
                 max_pending: int, refused: Any = None, over: Callable[[], str | None] | None = None,
                 refusal: Callable[[str], bytes] | None = None, creates: frozenset[bytes] = frozenset()) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self.max_open = (max_connections + max_pending) if max_connections else 0
        self.max_pending = max_pending
        self.open = 0
        self.pending: dict[_Gated, None] = {}  # connections sending a head, oldest first
        self.refused = refused if refused is not None else {}
        self._timeouts = self._too_large = self._evicted = 0
        # Admission: `over()` says why a new stream would be past capacity (or None), `refusal` makes
        # the response; `creates` are the request targets (b"/v1/sse" ...) a POST to which creates one.
        self.over = over if creates and refusal else None
        self.refusal = refusal
        self.creates = creates
        self.too_large_reply = _reply("431 Request Header Fields Too Large",
                                      f"request headers over {max_header_bytes} bytes")

    def count(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1

    def admit(self) -> bool:
        """Count a new connection; False when it must be refused. Makes room by closing the
        oldest connections still sending their heads."""
        self.open += 1
        while self.pending and ((self.max_open and self.open > self.max_open)
                                or (self.max_pending and len(self.pending) >= self.max_pending)):
            self.count("slow_headers")
            next(iter(self.pending)).drop()
        if self.max_open and self.open > self.max_open:
            self.open -= 1
            self.count("connections")
            return False
        return True


    def screen(self, first: bytes) -> bytes | None:
        """For gateway/accept.py: the refusal for a connection whose first bytes are a stream-creating
        POST while the process is past capacity, else None (the connection is served)."""
        over = self.over
        if over is None or not first.startswith(b"POST ") or first.find(b" ", 5) < 0:
            return None
        if _target(first) not in self.creates:
            return None
        detail = over()
        if detail is None:
            return None
        return self.refusal(detail)  # type: ignore[misc]


def _target(head: bytes) -> bytes:
    """The request target's path (no query) from a head's request line."""
    end = head.find(b" ", 5)
    path = head[5:end] if end > 0 else b""
    q = path.find(b"?")
    return path[:q] if q >= 0 else path


def gated(protocol_class: Callable[..., asyncio.Protocol], gate: Gate) -> Callable[..., asyncio.Protocol]:
    """A protocol factory for the server: `protocol_class`'s connections, behind `gate`."""

    def factory(*args: Any, **kwargs: Any) -> asyncio.Protocol:
        return _Gated(protocol_class(*args, **kwargs), gate)

    return factory


_NOBODY = asyncio.Protocol()


class _Transport:
    """The transport as the inner protocol sees it: the same, except that an upgrade
    (`set_protocol`) swaps the protocol the gate forwards to, so the gate stays in place."""

    # The names uvicorn's protocols and the adapter look up: slots, not a dict per connection (~0.4 KB).
    __slots__ = ("_transport", "_conn", "write", "close", "is_closing", "get_extra_info", "abort", "pause_reading",
                 "resume_reading", "get_write_buffer_size", "set_write_buffer_limits", "__weakref__")

    def __init__(self, transport: asyncio.Transport, conn: _Gated) -> None:
        self._transport = transport
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._transport, name)
        try:
            setattr(self, name, value)  # once per name: later lookups are plain attribute reads
        except AttributeError:  # a name without a slot: looked up on the transport each time
            pass
        return value

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._conn.upgrade(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._conn.inner

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` once when the connection is lost, after the inner protocol heard of it (None:
        no more). What a stream that would otherwise need a task reading `receive` to see its client go
        registers (gateway/adapter)."""
        self._conn.lost = callback


class _Gated(asyncio.Protocol):
    __slots__ = ("inner", "gate", "transport", "state", "head", "left", "timer", "closed", "counted", "lost")

    def __init__(self, inner: asyncio.Protocol, gate: Gate) -> None:
        self.inner = inner
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.state = _HEAD
        self.head = bytearray()  # the head so far (bounded by max_header_bytes)
        self.left = 0  # body bytes still to pass, or the chunk parser's state
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False  # refused: nothing more reaches the inner protocol
        self.counted = False  # in the gate's count of open connections
        self.lost: Callable[[], None] | None = None  # called once the connection is lost (`_Transport.on_lost`)

    # -- the transport's calls --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self.gate.admit():
            self.closed = True
            self.inner = _NOBODY  # it never saw this connection
            transport.write(_reply("503 Service Unavailable", "too many connections"))
            transport.close()
            return
        self.counted = True
        self._pending()
        self.inner.connection_made(_Transport(transport, self))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.state is _PASS:
            self.inner.data_received(data)
            return
        if not self._watch(data):
            return
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.closed:
            return None
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        self._settled()
        self.inner.connection_lost(exc)
        lost, self.lost = self.lost, None
        if lost is not None:
            lost()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- the gate -----------------------------------------------------------------

    def upgrade(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner = protocol
        self.state = _PASS
        self._settled()

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.gate.open -= 1

    def drop(self) -> None:
        """Close a connection that has not sent its head, to make room (counted out now: the
        transport reports the loss later)."""
        self._settled()
        self._uncount()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _pending(self) -> None:
        self.gate.pending[self] = None
        if self.gate.header_timeout_s:
            self.timer = asyncio.get_running_loop().call_later(self.gate.header_timeout_s, self._timed_out)

    def _settled(self) -> None:
        self.gate.pending.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        self.gate.count("header_timeout")
        self._refuse(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def _refuse(self, reply: bytes) -> None:
        self._settled()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(reply)
            transport.close()

    def _watch(self, data: bytes) -> bool:
        """Follow request boundaries through `data`; False when the connection was refused."""
        view = memoryview(data)
        while view:
            state = self.state
            if state is _IDLE:  # the next request's first byte
                self.state = _HEAD
                self._pending()
                continue
            if state is _HEAD:
                head = self.head
                start = max(0, len(head) - 3)
                head += view
                end = head.find(_END, start)
                limit = self.gate.max_header_bytes
                if end < 0:
                    if len(head) > limit:
                        return self._too_large()
                    return True
                if end + 4 > limit:
                    return self._too_large()
                rest = len(head) - (end + 4)
                view = view[len(view) - rest:]
                if not self._head_done(bytes(head[:end + 4])):
                    return False
                continue
            if state is _BODY:
                n = min(self.left, len(view))
                self.left -= n
                view = view[n:]
                if not self.left:
                    self.state = _IDLE
                continue
            if state is _CHUNKED:
                view = self._chunks(view)
                continue
            return True  # _PASS
        return True

    def _too_large(self) -> bool:
        self.gate.count("header_too_large")
        self.head = bytearray()
        self._refuse(self.gate.too_large_reply)
        self.closed = True  # nothing more reaches the parser
        return False

    def _head_done(self, head: bytes) -> bool:
        """Note where the request's body ends; False when the request was refused here."""
        self._settled()
        self.head = bytearray()
        over = self.gate.over
        if over is not None and head.startswith(b"POST ") and _target(head) in self.gate.creates:
            detail = over()
            if detail is not None:
                self._refuse(self.gate.refusal(detail))  # type: ignore[misc]
                self.closed = True  # nothing more reaches the parser
                return False
        lower = head.lower()
        if b"\nupgrade:" in lower:
            self.state = _PASS  # (the server upgrades, or answers and closes)
            return True
        if b"\ntransfer-encoding:" in lower and b"chunked" in lower.split(b"\ntransfer-encoding:", 1)[1].split(b"\n", 1)[0]:
            self.state, self.left = _CHUNKED, -1
            self.head = bytearray()  # the chunk-size line being read
            return True
        length = 0
        at = lower.find(b"\ncontent-length:")
        if at >= 0:
            value = lower[at + 16:lower.find(b"\n", at + 1)].strip()
            length = int(value) if value.isdigit() else 0  # (the parser refuses a bad one)
        self.state, self.left = (_BODY, length) if length else (_IDLE, 0)
        return True

    def _chunks(self, view: memoryview) -> memoryview:
        """Skip a chunked body: `left` is -1 while reading a size line, -2 in the trailer, else
        the chunk bytes (and CRLF) still to skip."""
        while view:
            if self.left >= 0:
                n = min(self.left, len(view))
                self.left -= n
                view = view[n:]
                if self.left == 0:
                    self.left = -1
                continue
            line = self.head
            nl = bytes(view).find(b"\n")
            if nl < 0:
                line += view
                if len(line) > _MAX_CHUNK_LINE:
                    self.state = _PASS  # malformed: the parser refuses it
                return view[len(view):]
            line += view[:nl + 1]
            view = view[nl + 1:]
            text = bytes(line).strip()
            self.head = bytearray()
            if self.left == -2:  # trailer lines until an empty one
                if not text:
                    self.state = _IDLE
                    return view
                continue
            size_text = text.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                self.state = _PASS
                return view
            self.left = -2 if size == 0 else size + 2
        return view
