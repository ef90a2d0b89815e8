"""One stream's events, encoded once and kept for resume.

Events live as NDJSON lines in one bytearray with an offset per event, so a
batch for any client is a single slice, and memory per event is its bytes
plus four. SSE frames are built only once a client reads SSE.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right

from .codecs.sse import frame

__all__ = ["EventLog", "KINDS"]

KINDS = ("meta", "token", "error", "done")
KIND = {name: i for i, name in enumerate(KINDS)}


class EventLog:
    __slots__ = ("lines", "ends", "kinds", "sse", "sse_ends")

    def __init__(self) -> None:
        self.lines = bytearray()
        self.ends = array("I")
        self.kinds = bytearray()
        self.sse: bytearray | None = None
        self.sse_ends: array | None = None

    def __len__(self) -> int:
        return len(self.ends)

    def append(self, kind: int, json: bytes) -> None:
        seq = len(self.ends)
        lines = self.lines
        lines += json
        lines += b"\n"
        self.ends.append(len(lines))
        self.kinds.append(kind)
        if self.sse is not None:
            self.sse += frame(seq, KINDS[kind], json)
            self.sse_ends.append(len(self.sse))

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
        """Events [start, end) as SSE blocks."""
        if self.sse is None:
            self._build_sse()
        ends = self.sse_ends
        return bytes(self.sse[ends[start - 1] if start else 0 : ends[end - 1]])

    def json(self, i: int) -> bytes:
        return bytes(self.lines[self.ends[i - 1] if i else 0 : self.ends[i] - 1])

    def texts(self, start: int, end: int) -> list[str]:
        """Events [start, end) as JSON strings, one per WebSocket frame."""
        return [line.decode() for line in self.ndjson(start, end)[:-1].split(b"\n")]

    def kind(self, i: int) -> str:
        return KINDS[self.kinds[i]]

    def _build_sse(self) -> None:
        self.sse = bytearray()
        self.sse_ends = array("I")
        for i in range(len(self.ends)):
            self.sse += frame(i, KINDS[self.kinds[i]], self.json(i))
            self.sse_ends.append(len(self.sse))
