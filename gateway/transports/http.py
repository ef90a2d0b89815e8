"""SSE and NDJSON over one long chunked HTTP response, written through raw ASGI `send`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..codecs import ndjson, sse
from ..events import Reconnect
from ..guard import ABORT, defer
from ..stream import RUNNING
from .direct import Writer, http_writer
from .eager import Parked, finish, send_now

if TYPE_CHECKING:
    from ..app import Context
    from ..log import EventLog
    from ..stream import Stream, Subscriber

__all__ = ["EventStream", "DropConnection", "streaming_headers"]


class DropConnection(Exception):
    """Fault injection: cut the connection with no terminal event (the server logs nothing)."""


def streaming_headers(media_type: str, accel_off: bool, stream_id: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", media_type.encode() + b"; charset=utf-8"),
        # no-transform also asks intermediaries not to compress (and so buffer) the body.
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-stream-id", stream_id.encode()),
    ]
    if accel_off:
        headers.append((b"x-accel-buffering", b"no"))
    return headers


class EventStream(Response):
    """An ASGI response that streams one subscriber's view of a stream."""

    def __init__(self, ctx: Context, stream: Stream, sub: Subscriber, fmt: str, status: int = 200) -> None:
        self.ctx = ctx
        self.stream = stream
        self.sub = sub
        self.fmt = fmt
        self.status_code = status
        self.client_left = False
        self.background = None
        self.send: Send | None = None
        self.parked: Parked | None = None  # a push whose send blocked: the task finishes it
        self.failed: BaseException | None = None
        self.write: Writer | None = None  # the push path's write without `send` (direct.py)
        self.stats = ctx.stats[fmt]
        self.batch = ctx.settings.max_batch_bytes
        self.media_type = ndjson.MEDIA_TYPE if fmt == "ndjson" else sse.MEDIA_TYPE
        self.heartbeat = ndjson.HEARTBEAT_LINE if fmt == "ndjson" else sse.HEARTBEAT_FRAME

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not defer(scope, lambda: self.run(scope, receive, send)):
            await self.run(scope, receive, send)

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx, stream, sub, stats = self.ctx, self.stream, self.sub, self.stats
        headers = streaming_headers(self.media_type, ctx.settings.x_accel_buffering, stream.id)
        stats.connections += 1
        sub.abort = scope.get(ABORT)
        watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
            if self.fmt == "sse":
                # `retry` first, so the headers and this go out before the first token.
                await send({"type": "http.response.body", "body": sse.retry(ctx.settings.sse_retry_ms),
                            "more_body": True})
            self.send = scope.get("gateway.send", send)
            self.write = http_writer(self.send)
            await self._pump(self.send, stats)
        finally:
            watcher.cancel()
            stats.connections -= 1
            stream.detach(sub, ctx.clock.now(), self.client_left)

    def frames(self, log: EventLog, start: int, end: int) -> bytes:
        """Log events [start, end) as body bytes (a subclass may map them to another format)."""
        return log.sse_frames(start, end) if self.fmt == "sse" else log.ndjson(start, end)

    def reconnect(self) -> bytes:
        """The last bytes before the server closes to drain: where to resume (a subclass may send none)."""
        codec = sse if self.fmt == "sse" else ndjson
        return codec.encode(Reconnect(self.ctx.settings.sse_retry_ms))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.client_left = True
        self.sub.gone = True
        self.sub.wake()

    async def _pump(self, send: Send, stats) -> None:
        stream, sub, log = self.stream, self.sub, self.stream.log
        frames = self.frames
        heartbeat = self.heartbeat
        wait = stream.wait
        clock = asyncio.get_running_loop().time
        batch = self.ctx.settings.max_batch_bytes
        while True:
            sub.push = self._push
            await wait(sub)
            sub.push = None
            if self.parked is not None:
                parked, self.parked = self.parked, None
                await finish(parked)
                sub.sending = 0.0
            if self.failed is not None:
                raise self.failed
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
                if sub.drop_at is not None and end >= sub.drop_at:
                    end, drop = sub.drop_at, True
                body = frames(log, cursor, end)
                stats.events += end - cursor
                sub.cursor = end
                terminal = not stream.running and end == len(log)
            else:
                body = heartbeat
            sub.beat = False
            stats.bytes += len(body)
            sub.sending = clock()  # the sweep cuts a write that stays blocked (slow consumer)
            await send({"type": "http.response.body", "body": body, "more_body": True})
            if terminal and not drop:  # a separate send: it waits for the client to take the rest
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            sub.sending = 0.0
            if drop:
                stats.drops += 1
                raise DropConnection(stream.id)
            if terminal:
                return

    def _push(self, sub: Subscriber) -> bool:
        """Write the new events from the batch flush; False hands anything unusual to the task."""
        stream = self.stream
        if sub.gone or sub.beat or sub.drop_at is not None or stream.status is not RUNNING:
            return False
        log = stream.log
        cursor, end = sub.cursor, len(log.ends)
        if cursor >= end:
            return True
        last = end
        end = log.batch_end(cursor, end, self.batch)
        body = self.frames(log, cursor, end)
        sub.cursor = end
        stats = self.stats
        stats.events += end - cursor
        stats.bytes += len(body)
        write = self.write
        if write is not None and write(body):
            return end == last  # a capped batch: the task writes the rest
        try:
            self.parked = send_now(self.send, {"type": "http.response.body", "body": body, "more_body": True})
        except Exception as exc:
            self.failed = exc
            return False
        if self.parked is not None:
            sub.sending = self.ctx.clock.now()  # blocked: the task finishes it, the sweep watches it
            return False
        return end == last
