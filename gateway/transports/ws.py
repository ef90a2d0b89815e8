"""WebSocket: events as JSON text frames; the client steers with control messages.

One session per socket. The socket's own task reads control messages; a pump
task writes the current stream's events. `start` runs a new stream (after a
cancel too), `resume` attaches to an existing one, `cancel` ends it.

With the server fast path (gateway/adapter), the pump task ends once it has
caught up: the stream's batched flush then writes new events itself (`push`),
and anything else (a heartbeat, the end, backpressure, a drain) starts a pump
again. An open socket then holds no task of its own besides the reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..adapter import Writer, connection
from ..codecs import ws as codec
from ..events import Reconnect
from ..names import Transport
from ..auth import check_expiry
from ..guard import ATTACH, KEY
from ..limits import Bucket
from ..models import StreamRequest
from ..problems import Problem
from ..sources.base import PreStreamError
from ..stream import RUNNING
from .http import DropConnection

if TYPE_CHECKING:
    from collections import Counter

    from ..clock import Clock
    from ..limits import Buckets
    from ..metrics import TransportStats
    from ..stream import Stream, Subscriber

__all__ = ["WSSession", "WSDeps", "error_text"]

_REQUEST_CACHES = ("_headers", "_query_params", "_cookies", "_url")  # Starlette's HTTPConnection, read once


@dataclass(frozen=True, slots=True)
class WSDeps:
    """What a WebSocket session uses, built once per app (create_app): the service's two stream calls,
    not the service; the settings values it reads, not the settings."""

    create: Callable[[StreamRequest, bool, str | None], Awaitable[Stream]]  # a one-shot stream for `start`
    find: Callable[[str, int, str | None], Awaitable[Stream]]  # the stream for `resume`, checked
    stats: TransportStats  # the WebSocket's own
    refused: Counter[str]
    clock: Clock
    rates: Buckets | None  # requests per key (None: off); a `start` is one
    max_batch_bytes: int
    max_message_bytes: int  # ws_max_message_bytes
    messages_per_s: float  # ws_messages_per_s (0: off)
    retry_ms: int  # sse_retry_ms, in the `reconnect` frame of a drain


def error_text(code: str, message: str, retryable: bool = False, seq: int = -1) -> str:
    """An error about the connection rather than a stream: seq -1."""
    from ..events import Error

    return codec.encode(Error(seq, code, message, retryable))


class WSSession:
    __slots__ = ("deps", "ws", "stats", "batch", "stream", "sub", "pump", "task", "dropped", "kicked", "conn",
                 "write", "key", "attach_only", "bucket", "first")

    def __init__(self, deps: WSDeps, websocket: WebSocket, stream: Stream | None = None, after: int = -1) -> None:
        """`stream`: attach to it first (reading after `after`), as `run` starts."""
        self.deps = deps
        self.first = (stream, after) if stream is not None else None
        self.ws = websocket
        self.stats = deps.stats
        self.batch = deps.max_batch_bytes
        self.stream: Stream | None = None
        self.sub: Subscriber | None = None
        self.pump: asyncio.Task | None = None
        self.task: asyncio.Task | None = None
        self.dropped = False
        self.kicked = False
        self.conn = connection(websocket.scope)
        self.write: Writer | None = None  # the fast path's write without `send` (gateway/adapter), once open
        self.key = websocket.scope.get(KEY)
        # Let in by an attach token: that one stream, while the token lasts; no new streams.
        self.attach_only: tuple[str, float] | None = websocket.scope.get(ATTACH)
        rate = deps.messages_per_s
        self.bucket = Bucket(rate, 2 * rate, deps.clock.now()) if rate else None

    async def run(self, *edge: object) -> None:
        """Serve the socket until the client leaves. Deferred (`guard.defer`), it gets the edge's scope,
        receive and send: its WebSocket is then made again over these, so that the layers' per-request
        wrappers of receive and send (and the endpoint's WebSocket, with what it cached) are not kept
        for the socket's life; and the bound method itself is what the edge keeps, no closure."""
        if edge:
            scope, receive, send = edge
            ws = self.ws = WebSocket(scope, receive, send)  # type: ignore[arg-type]
            ws.client_state = ws.application_state = WebSocketState.CONNECTED  # (accepted by the endpoint)
        self.task = asyncio.current_task()
        self.stats.connections += 1
        client_left = True
        try:
            if self.first is not None:
                (stream, after), self.first = self.first, None
                self._attach(stream, after)
            # The control messages, read here rather than in a coroutine of their own (a frame per socket).
            receive, limit, deps = self.ws.receive, self.deps.max_message_bytes, self.deps
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if self.bucket is not None and self.bucket.take(deps.clock.now()):
                    deps.refused["ws_rate"] += 1
                    client_left = await self._refuse("rate_limited", "too many control messages", codec.CLOSE_POLICY)
                    break
                text = msg.get("text")
                if text is None:
                    client_left = await self._refuse("bad_message", "control messages are JSON text frames",
                                                     codec.CLOSE_UNSUPPORTED)
                    break
                if len(text) > limit:
                    client_left = await self._refuse("too_big", f"control message over {limit} bytes",
                                                     codec.CLOSE_TOO_BIG)
                    break
                if not await self._control(text):
                    client_left = False
                    break
        except asyncio.CancelledError:
            if self.dropped:
                client_left = False
                self.task.uncancel()  # our own cancel (a drop, or `_abort`): the connection ends here
                raise DropConnection() from None
            raise
        finally:
            self.stats.connections -= 1
            self._stop(client_left)

    async def _control(self, text: str) -> bool:
        """Act on one control message; False when the server closed the socket."""
        try:
            control = codec.parse_control(text)
        except codec.ControlError as exc:
            return await self._refuse("bad_message", str(exc), exc.close_code)
        if isinstance(control, codec.Cancel):
            if self.stream is not None and self.stream.running:
                self.stream.cancel("client_cancel")
            else:
                await self.ws.send_text(error_text("no_stream", "no stream is running on this socket"))
        elif self._busy():
            await self.ws.send_text(error_text("busy", "a stream is running: cancel it first"))
        elif (refusal := self._token_refusal(control)) is not None:
            await self.ws.send_text(error_text("unauthorized", refusal))
        elif isinstance(control, codec.Start):
            return await self._start(control.request)
        else:
            await self._resume(control)
        return True

    def _token_refusal(self, control: codec.Start | codec.Resume) -> str | None:
        """Why an attach-token socket may not do this (None: it may)."""
        if self.attach_only is None:
            return None
        stream_id, expires = self.attach_only
        if isinstance(control, codec.Start):
            return "an attach token reads its stream only: start streams with the API key"
        if control.stream_id != stream_id:
            return "an attach token reads its own stream only"
        try:
            check_expiry(expires)
        except Problem as exc:
            return exc.detail
        return None

    def _busy(self) -> bool:
        sub = self.sub
        return sub is not None and not sub.gone

    async def _start(self, fields: dict) -> bool:
        deps = self.deps
        rates = deps.rates
        if rates is not None and rates.take(self.key, deps.clock.now()):  # a start is a request, like a POST
            deps.refused["rate"] += 1
            await self.ws.send_text(error_text("rate_limited", f"over {rates.rate:g} requests per second for this key",
                                               True))
            return True
        try:
            request = StreamRequest.model_validate(fields)
            stream = await deps.create(request, True, self.key)
        except ValidationError as exc:
            msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            await self._refuse("invalid_request", msg, codec.CLOSE_POLICY)
            return False
        except Problem as exc:
            if exc.status == 429:  # a limit of the key, not a fault of this socket: it stays usable
                await self.ws.send_text(error_text(exc.extra["code"], exc.detail, True))
                return True
            close = {413: codec.CLOSE_TOO_BIG, 503: codec.CLOSE_TRY_AGAIN}.get(exc.status, codec.CLOSE_POLICY)
            if exc.extra.get("code") == "draining":
                close = codec.CLOSE_RESTART
            await self._refuse(f"http_{exc.status}", exc.detail or exc.title, close)
            return False
        except PreStreamError as exc:
            # The model refused this one request; the socket stays usable.
            await self.ws.send_text(error_text(exc.code, exc.detail, exc.status in (429, 503)))
            return True
        except LookupError as exc:
            await self.ws.send_text(error_text("model_not_found", f"unknown model {exc}"))
            return True
        self._attach(stream, -1)
        return True

    async def _resume(self, control: codec.Resume) -> None:
        try:
            stream = await self.deps.find(control.stream_id, control.after, self.key)
        except Problem as exc:
            await self.ws.send_text(error_text(exc.extra.get("code", f"http_{exc.status}"), exc.detail))
            return
        self._attach(stream, control.after)

    def _attach(self, stream: Stream, after: int) -> None:
        self._stop(False)
        if self.write is None and self.conn is not None:
            self.conn.forget_handshake()  # (first: the writer then holds what replaced the handshake's objects)
            self.write = self.conn.ws_writer()
            # FastAPI read the headers and query through this WebSocket, which caches them (~0.9 KB
            # for the socket's life); read again, they come from the scope.
            for name in _REQUEST_CACHES:
                vars(self.ws).pop(name, None)
        self.stream = stream
        self.sub = stream.attach(after, Transport.WS, self.deps.clock.now())
        self.sub.conn.abort = self.conn.abort if self.conn is not None else self._abort
        if after >= 0:
            self.stats.resumes += 1
        self._start_pump()

    def _start_pump(self) -> None:
        """A pump for the current reader: it writes what is due, and ends once caught up if `push` may
        write from there (else it stays, parked in `Stream.wait`)."""
        self.pump = asyncio.get_running_loop().create_task(self._pump(self.stream, self.sub))

    def _stop(self, client_left: bool) -> None:
        client_left = client_left and not self.kicked
        if self.pump is not None:
            self.pump.cancel()
            self.pump = None
        if self.sub is not None:
            self.sub.start = None  # (the detach below wakes it: no pump for it any more)
            if client_left and self.stream.running:
                self.stats.disconnects += 1
            self.stream.detach(self.sub, self.deps.clock.now(), client_left)
            self.sub = None
            self.stream = None

    def _abort(self) -> None:
        """The portable cut of a slow consumer: end the socket's task; its pump is blocked in `send`."""
        if self.task is not None:
            self.dropped = True
            self.task.cancel()

    async def _pump(self, stream: Stream, sub: Subscriber) -> None:
        log, stats, send = stream.log, self.stats, self.ws.send
        clock = asyncio.get_running_loop().time
        batch = self.batch
        state = sub.conn
        # Fault injection (a drop at a seq) stays off the push path: such a reader is written by the pump.
        drop_at = state.drop_at
        push = self._push if self.write is not None and drop_at is None else None
        try:
            while True:
                sub.push = push
                if push is not None and sub.cursor >= len(log) and not (sub.beat or sub.gone) and stream.running:
                    # Caught up: `push` writes the next events from the flush; anything else starts a pump.
                    sub.start = self._start_pump
                    return
                await stream.wait(sub)
                sub.push = None
                if sub.gone:
                    if sub.kicked:
                        await self._reconnect(stream, sub)
                    return
                cursor, end = sub.cursor, len(log)
                if cursor < end:
                    end = log.batch_end(cursor, end, batch)
                    drop = drop_at is not None and end >= drop_at
                    if drop:
                        end = drop_at
                    texts = codec.texts(log, cursor, end)
                    sub.cursor = end
                    terminal = not stream.running and end == len(log)
                else:
                    texts, drop, terminal = [codec.HEARTBEAT_TEXT], False, False
                sub.beat = False
                state.sending = clock()  # the sweep cuts a write that stays blocked (slow consumer)
                for text in texts:
                    await send({"type": "websocket.send", "text": text})
                    stats.bytes += len(text)
                state.sending = 0.0
                stats.events += len(texts) if cursor < end else 0
                if drop:
                    stats.drops += 1
                    self.dropped = True
                    self.task.cancel()
                    return
                if terminal:
                    stream.detach(sub, self.deps.clock.now(), False)
                    if self.sub is sub:
                        self.sub = None
                        self.stream = None
                    return
        except (OSError, WebSocketDisconnect):
            # The client is gone; the reader sees the disconnect and cleans up.
            return
        finally:
            if self.pump is asyncio.current_task():  # an ended task, kept till the next start: ~0.7 KB
                self.pump = None

    async def _reconnect(self, stream: Stream, sub: Subscriber) -> None:
        """The server is draining: a `reconnect` frame, close 1012, then detach (the drain waits for it)."""
        self.kicked = True  # the disconnect that follows is our close, not the client leaving
        await self.ws.send_text(codec.encode(Reconnect(self.deps.retry_ms)))
        await self.ws.close(codec.CLOSE_RESTART, "server draining: reconnect")
        stream.detach(sub, self.deps.clock.now(), False)
        if self.sub is sub:
            self.sub = None
            self.stream = None

    def _push(self, sub: Subscriber) -> bool:
        """Write the new events from the batch flush; False hands anything else to the pump."""
        stream = self.stream
        if sub is not self.sub or sub.gone or sub.beat or stream.status is not RUNNING:
            return False
        log = stream.log
        cursor, end = sub.cursor, len(log.kinds)
        if cursor >= end:
            return True
        last = end
        end = log.batch_end(cursor, end, self.batch)
        if not self.write(codec.frames(log, cursor, end)):
            return False  # paused or closing: the pump awaits `send`, which waits or raises
        sub.cursor = end
        stats = self.stats
        stats.events += end - cursor
        stats.bytes += log.text_bytes(cursor, end)
        return end == last  # a capped batch: the pump sends the rest

    async def _refuse(self, code: str, message: str, close_code: int) -> bool:
        """Tell the client why and close the socket; False (the server closed it)."""
        await self.ws.send_text(error_text(code, message))
        await self.ws.close(close_code, message[:120])
        return False
