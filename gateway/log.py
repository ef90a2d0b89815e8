"""One stream's events, encoded once (by `events`) and kept for resume.

Events live as NDJSON lines in one bytearray with an offset per event, so an
NDJSON batch is a single slice, and memory per event is its bytes plus five.
The codecs frame other formats from these same bytes as they are written
(`codecs.sse.frames`, `codecs.ws.frames`), rather than keeping a second copy.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right

from .events import KIND, KINDS

__all__ = ["EventLog", "KINDS", "KIND"]


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
        """Events [start, end) as NDJSON lines: the log's own bytes."""
        return bytes(self.lines[self.ends[start - 1] if start else 0 : self.ends[end - 1]])

    def json(self, i: int) -> bytes:
        return bytes(self.lines[self.ends[i - 1] if i else 0 : self.ends[i] - 1])

    def kind(self, i: int) -> str:
        return KINDS[self.kinds[i]]
