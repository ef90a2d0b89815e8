"""One stream's events, encoded once and kept for resume.

Events live as NDJSON lines in one bytearray with an offset per event, so an
NDJSON batch is a single slice, and memory per event is its bytes plus five.
SSE frames wrap those same bytes as they are written (a format string per
event), rather than keeping a second, larger copy of every stream.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right

from .codecs.ws import text_frame

__all__ = ["EventLog", "KINDS"]

KINDS = ("meta", "token", "error", "done")
KIND = {name: i for i, name in enumerate(KINDS)}
_NAMES = tuple(name.encode() for name in KINDS)
_SSE = b"id: %d\nevent: %b\ndata: %b\n\n"


class EventLog:
    __slots__ = ("lines", "ends", "kinds")

    def __init__(self) -> None:
        self.lines = bytearray()
        self.ends = array("I")
        self.kinds = bytearray()

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def size(self) -> int:
        """Bytes this log holds (its lines and five per event)."""
        return len(self.lines) + 5 * len(self.ends)

    def append(self, kind: int, json: bytes) -> None:
        lines = self.lines
        lines += json
        lines += b"\n"
        self.ends.append(len(lines))
        self.kinds.append(kind)

    def batch_end(self, start: int, end: int, limit: int) -> int:
        """Where a batch from `start` stops to hold about `limit` bytes at most (one event at least)."""
        ends = self.ends
        base = ends[start - 1] if start else 0
        if ends[end - 1] - base <= limit:
            return end
        return max(start + 1, bisect_right(ends, base + limit, start, end))

    def ndjson(self, start: int, end: int) -> bytes:
        """Events [start, end) as NDJSON lines."""
        return bytes(self.lines[self.ends[start - 1] if start else 0 : self.ends[end - 1]])

    def sse_frames(self, start: int, end: int) -> bytes:
        """Events [start, end) as SSE blocks (the same bytes as `codecs.sse.frame`)."""
        lines, ends, kinds = self.lines, self.ends, self.kinds
        at = ends[start - 1] if start else 0
        if end - start == 1:
            return _SSE % (start, _NAMES[kinds[start]], lines[at : ends[start] - 1])
        out = []
        for i in range(start, end):
            e = ends[i]
            out.append(_SSE % (i, _NAMES[kinds[i]], lines[at : e - 1]))
            at = e
        return b"".join(out)

    def ws_frames(self, start: int, end: int) -> bytes:
        """Events [start, end) as WebSocket text frames, one per event, in one piece."""
        lines, ends = self.lines, self.ends
        at = ends[start - 1] if start else 0
        out = []
        for i in range(start, end):
            e = ends[i]
            out.append(text_frame(lines[at : e - 1]))
            at = e
        return out[0] if len(out) == 1 else b"".join(out)

    def json(self, i: int) -> bytes:
        return bytes(self.lines[self.ends[i - 1] if i else 0 : self.ends[i] - 1])

    def texts(self, start: int, end: int) -> list[str]:
        """Events [start, end) as JSON strings, one per WebSocket frame."""
        return [line.decode() for line in self.ndjson(start, end)[:-1].split(b"\n")]

    def kind(self, i: int) -> str:
        return KINDS[self.kinds[i]]
