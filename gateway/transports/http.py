"""SSE and NDJSON over one long chunked HTTP response, written through ASGI `send`."""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..adapter import Writer, connection
from ..codecs import ndjson, sse
from ..events import Reconnect
from ..guard import defer
from ..stream import RUNNING

if TYPE_CHECKING:
    from ..clock import Clock
    from ..log import EventLog
    from ..metrics import Stats
    from ..stream import Stream, Subscriber

__all__ = ["EventStream", "HttpDeps", "DropConnection", "streaming_headers", "WORKER_HEADER"]


class DropConnection(Exception):
    """Cut the connection with no terminal event (fault injection, a slow consumer): the server logs nothing."""


# Which process served the response (`serve --workers`: which worker).
WORKER_HEADER = (b"x-gateway-worker", str(os.getpid()).encode())


@dataclass(frozen=True, slots=True)
class HttpDeps:
    """What an HTTP event stream uses, built once per app (create_app): no service, no settings object."""

    stats: Stats  # indexed by the subscriber's transport, once per connection
    clock: Clock
    max_batch_bytes: int
    accel_off: bool  # send `X-Accel-Buffering: no`
    retry_base_ms: int  # sse_retry_ms
    retry_jitter: float  # sse_retry_jitter

    def retry_ms(self) -> int:
        """The reconnection delay for one connection: `sse_retry_ms`, plus up to `sse_retry_jitter` of it at
        random, so the clients of a replica that drains or dies do not all come back in the same instant."""
        base, jitter = self.retry_base_ms, self.retry_jitter
        return base + int(random.random() * jitter * base) if jitter else base


def streaming_headers(media_type: str, accel_off: bool, stream_id: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", media_type.encode() + b"; charset=utf-8"),
        # no-transform also asks intermediaries not to compress (and so buffer) the body.
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-stream-id", stream_id.encode()),
        WORKER_HEADER,
    ]
    if accel_off:
        headers.append((b"x-accel-buffering", b"no"))
    return headers


class EventStream(Response):
    """An ASGI response that streams one subscriber's view of a stream."""

    def __init__(self, deps: HttpDeps, stream: Stream, sub: Subscriber, fmt: str, status: int = 200) -> None:
        # Not `Response.__init__`: its body and headers (`content-length: 0`) are not this response's, and
        # would be kept for the stream's life; the start is built in `__call__`.
        self.status_code = status
        self.background = None
        self.deps = deps
        self.stream = stream
        self.sub = sub
        self.fmt = fmt
        self.client_left = False
        self.task: asyncio.Task | None = None
        self.write: Writer | None = None  # the fast path's write without `send` (gateway/adapter)
        self.stats = deps.stats[sub.conn.transport]
        self.batch = deps.max_batch_bytes
        self.media_type = ndjson.MEDIA_TYPE if fmt == "ndjson" else sse.MEDIA_TYPE
        self.heartbeat = ndjson.HEARTBEAT_LINE if fmt == "ndjson" else sse.HEARTBEAT_FRAME

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The start goes out through every layer (CORS adds its headers to it). The body, which they pass
        # through unchanged, runs once they have returned (guard.defer), with the server's own `receive`
        # and `send`: the layers' wrappers of those are freed with them.
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": streaming_headers(self.media_type, self.deps.accel_off, self.stream.id)})
        except BaseException:
            self.stream.detach(self.sub, self.deps.clock.now(), self.client_left)
            raise
        if not defer(scope, self.run):
            await self.run(scope, receive, send)

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The body: everything after the start, to the end of the stream or the connection. One coroutine
        frame for the stream's life (an open stream's memory counts per connection)."""
        deps, stream, sub, stats = self.deps, self.stream, self.sub, self.stats
        stats.connections += 1
        conn = connection(scope)
        self.task = asyncio.current_task()
        sub.conn.abort = conn.abort if conn is not None else self._abort
        # The client's disconnect: a callback from the server fast path, else a task reading `receive`.
        watcher = None
        if conn is None or not conn.on_lost(self._lost):
            watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        try:
            if self.fmt == "sse":
                # `retry` first, so the headers and this go out before the first token.
                await send({"type": "http.response.body", "body": sse.retry(deps.retry_ms()),
                            "more_body": True})
            if conn is not None:
                self.write = conn.http_writer()
            log = stream.log
            frames = self.frames
            heartbeat = self.heartbeat
            parked = stream.parked
            clock = asyncio.get_running_loop().time
            batch = self.batch
            state = sub.conn
            # Fault injection (a drop at a seq) stays off the push path: such a reader is written by the task.
            drop_at = state.drop_at
            push = self._push if self.write is not None and drop_at is None else None
            while True:
                sub.push = push
                waiter = parked(sub)
                if waiter is not None:  # (awaited here: no coroutine of its own while the stream is idle)
                    try:
                        await waiter
                    finally:
                        sub.waiter = waiter = None
                sub.push = None
                if sub.gone:
                    if sub.kicked and not self.client_left:
                        await send({"type": "http.response.body", "body": self.reconnect(), "more_body": False})
                    elif self.client_left and stream.running:
                        stats.disconnects += 1
                    return
                cursor, end = sub.cursor, len(log)
                drop = terminal = False
                if cursor < end:
                    end = log.batch_end(cursor, end, batch)
                    if drop_at is not None and end >= drop_at:
                        end, drop = drop_at, True
                    body = frames(log, cursor, end)
                    stats.events += end - cursor
                    sub.cursor = end
                    terminal = not stream.running and end == len(log)
                else:
                    body = heartbeat
                sub.beat = False
                stats.bytes += len(body)
                state.sending = clock()  # the sweep cuts a write that stays blocked (slow consumer)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                body = None  # (not held while parked: it may be a whole batch)
                if terminal and not drop:  # a separate send: it waits for the client to take the rest
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                state.sending = 0.0
                if drop:
                    stats.drops += 1
                    raise DropConnection(stream.id)
                if terminal:
                    return
        except asyncio.CancelledError:
            if sub.conn.cut is None or self.client_left:
                raise
            self.task.uncancel()  # our own cancel (`_abort`): the connection ends here
            raise DropConnection(stream.id) from None
        finally:
            if watcher is not None:
                watcher.cancel()
            else:
                conn.on_lost(None)  # (a kept-alive connection serves the next request)
            stats.connections -= 1
            stream.detach(sub, deps.clock.now(), self.client_left)

    def _abort(self) -> None:
        """The portable cut of a slow consumer: cancel the task blocked in `send`."""
        if self.task is not None:
            self.task.cancel()

    def frames(self, log: EventLog, start: int, end: int) -> bytes:
        """Log events [start, end) as body bytes (a subclass may map them to another format)."""
        return sse.frames(log, start, end) if self.fmt == "sse" else ndjson.frames(log, start, end)

    def reconnect(self) -> bytes:
        """The last bytes before the server closes to drain: where to resume (a subclass may send none)."""
        codec = sse if self.fmt == "sse" else ndjson
        return codec.encode(Reconnect(self.deps.retry_ms()))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._lost()

    def _lost(self) -> None:
        self.client_left = True
        self.sub.gone = True
        self.sub.wake()

    def _push(self, sub: Subscriber) -> bool:
        """Write the new events from the batch flush; False hands anything else to the task."""
        stream = self.stream
        if sub.gone or sub.beat or stream.status is not RUNNING:
            return False
        log = stream.log
        cursor, end = sub.cursor, len(log.kinds)
        if cursor >= end:
            return True
        last = end
        end = log.batch_end(cursor, end, self.batch)
        body = self.frames(log, cursor, end)
        if not self.write(body):
            return False  # paused or closing: the task awaits `send`, which waits or raises
        sub.cursor = end
        stats = self.stats
        stats.events += end - cursor
        stats.bytes += len(body)
        return end == last  # a capped batch: the task writes the rest
