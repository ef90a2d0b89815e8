"""Server-Sent Events (`text/event-stream`), per the WHATWG HTML spec.

Two layers: `Parser` turns bytes into raw SSE messages (any SSE stream, such
as an OpenAI-compatible upstream), and `Decoder` maps the gateway's messages
to events. `frame` and `encode` are the server side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..events import HEARTBEAT, KINDS, Event, Reconnect, from_json, to_json

if TYPE_CHECKING:
    from ..log import EventLog

__all__ = [
    "MEDIA_TYPE", "HEARTBEAT_FRAME", "frame", "frames", "encode", "retry",
    "Message", "Comment", "Parser", "Decoder",
]

MEDIA_TYPE = "text/event-stream"
HEARTBEAT_FRAME = b": hb\n\n"


_FRAME = b"id: %d\nevent: %b\ndata: %b\n\n"
_NAMES = tuple(name.encode() for name in KINDS)


def frame(seq: int, kind: str, json: bytes) -> bytes:
    """One event as an SSE block; JSON never holds a raw newline, so one data line."""
    return _FRAME % (seq, kind.encode(), json)


def frames(log: EventLog, start: int, end: int) -> bytes:
    """Log events [start, end) as SSE blocks (what `frame` gives), from the log's bytes."""
    kinds, k = log.kinds, start - log.first
    if k >= 0:
        lines, ends = log.lines, log.ends
    else:  # a sealed block (a resume from far back)
        lines, ends, k = log.view(start, end)
    at = ends[k - 1] if k else 0
    if end - start == 1:
        return _FRAME % (start, _NAMES[kinds[start]], lines[at : ends[k] - 1])
    out = []
    for i in range(start, end):
        e = ends[k]
        k += 1
        out.append(_FRAME % (i, _NAMES[kinds[i]], lines[at : e - 1]))
        at = e
    return b"".join(out)


def encode(event: Event) -> bytes:
    if event is HEARTBEAT:
        return HEARTBEAT_FRAME
    if type(event) is Reconnect:
        # `retry` sets EventSource's reconnect delay; the event (no id, so Last-Event-ID
        # stays put) tells fetch clients why the server is about to close.
        return b"retry: %d\nevent: reconnect\ndata: %b\n\n" % (event.retry_ms, to_json(event))
    return frame(event.seq, event.type, to_json(event))


def retry(ms: int) -> bytes:
    return b"retry: %d\n\n" % ms


@dataclass(frozen=True, slots=True)
class Message:
    data: str
    event: str = "message"
    id: str | None = None  # the last event id in force when dispatched


@dataclass(frozen=True, slots=True)
class Comment:
    text: str


class Parser:
    """Incremental SSE parser: feed bytes, get `Message`s and `Comment`s.

    Lines may end in CRLF, LF or CR, split anywhere across feeds. `retry` and
    `last_event_id` hold the latest values the stream set.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._first = True
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[Message | Comment]:
        buf = self._buf + data if self._buf else data
        out: list[Message | Comment] = []
        start = 0
        n = len(buf)
        while start < n:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf >= 0 else n)
            if cr >= 0:
                if cr + 1 == n:
                    break  # a CR at the end may be the first half of CRLF
                end, nxt = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            elif lf >= 0:
                end, nxt = lf, lf + 1
            else:
                break
            self._line(buf[start:end].decode("utf-8", "replace"), out)
            start = nxt
        self._buf = buf[start:]
        return out

    def _line(self, line: str, out: list[Message | Comment]) -> None:
        if self._first:
            self._first = False
            if line.startswith("\ufeff"):
                line = line[1:]
        if not line:
            if self._data:
                out.append(Message("\n".join(self._data), self._event or "message", self.last_event_id))
            self._data.clear()
            self._event = ""
            return
        if line[0] == ":":
            out.append(Comment(line[1:].lstrip(" ")))
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)

    @property
    def pending(self) -> int:
        """Bytes held back: a partial line, or a block not yet ended by a blank line."""
        return len(self._buf) + sum(map(len, self._data))


class Decoder:
    """The gateway's SSE: each message's data is one event as JSON; comments are heartbeats."""

    def __init__(self) -> None:
        self.parser = Parser()

    def feed(self, data: bytes) -> list[Event]:
        return [
            HEARTBEAT if type(item) is Comment else from_json(item.data)
            for item in self.parser.feed(data)
        ]

    @property
    def last_event_id(self) -> str | None:
        return self.parser.last_event_id

    @property
    def retry(self) -> int | None:
        return self.parser.retry
