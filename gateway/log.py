"""One stream's events, encoded once (by `events`) and kept for resume.

The recent events (the tail) live as NDJSON lines in one bytearray with an
offset per event, so an NDJSON batch is a single slice. The codecs frame other
formats from these same bytes as they are written (`codecs.sse.frames`,
`codecs.ws.frames`), rather than keeping a second copy.

Older events are sealed: their lines, compressed as one block (raw deflate with
a preset dictionary of the token line's own bytes; ~6.5 bytes per token instead
of ~46), are what is kept. A reader behind the tail (a resume, a replay) reads a
sealed block decompressed once (a few blocks stay decompressed, shared by all
logs). The stream decides when to seal (`Stream.settle`): only events every
attached reader has passed, so live readers always frame from the tail.

Indices are a stream's seqs throughout; `first` is the first event in the tail
(`lines[0]`), and `ends[k]` the end (past the newline) of event `first + k` in
`lines`. `kinds` holds every event's kind.
"""

from __future__ import annotations

import zlib
from array import array
from bisect import bisect_right

from .events import KIND, KINDS

__all__ = ["EventLog", "KINDS", "KIND", "BLOCK", "BLOCK_OVERHEAD"]

BLOCK = 32  # events per sealed block while a stream runs (at its end, the rest is one block)
BLOCK_OVERHEAD = 48  # a sealed block's bytes object header, list slot and bound
# Token lines' common bytes: deflate refers back into it, so even the first line of a block compresses.
_ZDICT = b'{"type":"token","seq":{"type":"token","seq":1","text":" the"}\n{"type":"token","seq":1'
_WBITS = -12  # raw deflate (no header), 4 KB window: a block is ~3 KB of lines
_LEVEL = 1  # the CPU is per event, amortized; higher levels save ~5% of a small block

_cache: dict[int, tuple[bytes, bytes, array]] = {}  # id(block) -> (block, its lines, their ends)
_CACHED = 8


def _compress(lines: bytes) -> bytes:
    c = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, 8, zlib.Z_DEFAULT_STRATEGY, _ZDICT)
    return c.compress(lines) + c.flush()


def _open(block: bytes) -> tuple[bytes, array]:
    """A sealed block's lines and their ends (cached: a replay reads one block many times)."""
    hit = _cache.get(id(block))
    if hit is not None and hit[0] is block:
        return hit[1], hit[2]
    d = zlib.decompressobj(_WBITS, _ZDICT)
    data = d.decompress(block) + d.flush()
    ends = array("I")
    at = data.find(b"\n") + 1
    while at:
        ends.append(at)
        at = data.find(b"\n", at) + 1
    if len(_cache) >= _CACHED:
        del _cache[next(iter(_cache))]
    _cache[id(block)] = (block, data, ends)  # (holding `block` keeps its id unique while cached)
    return data, ends


class EventLog:
    __slots__ = ("lines", "ends", "kinds", "first", "at", "blocks", "bounds", "sealed")

    def __init__(self) -> None:
        self.lines = bytearray()  # the tail's NDJSON lines
        self.ends = array("I")  # per tail event: its end in `lines`
        self.kinds = bytearray()  # per event (all of them): its kind's number
        self.first = 0  # the first event in the tail
        self.at = 0  # NDJSON bytes sealed (the offset `lines` starts at, in all the stream's lines)
        self.blocks: list[bytes] = []  # sealed blocks, compressed
        self.bounds = array("I")  # per block: the event it ends before
        self.sealed = 0  # bytes the blocks hold (with BLOCK_OVERHEAD each)

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def size(self) -> int:
        """Bytes this log holds: the tail's lines and four per tail event, a kind per event, the sealed blocks."""
        return len(self.lines) + 4 * len(self.ends) + len(self.kinds) + self.sealed

    @property
    def nbytes(self) -> int:
        """NDJSON bytes of all events so far, sealed or not (it only grows)."""
        return self.at + len(self.lines)

    def append(self, kind: int, json: bytes) -> None:
        lines = self.lines
        lines += json
        lines += b"\n"
        self.ends.append(len(lines))
        self.kinds.append(kind)

    def seal(self, upto: int, block: int = BLOCK) -> int:
        """Seal the tail's events before `upto` in blocks of `block` events (0: all in one); how many sealed."""
        n = 0
        while True:
            count = upto - self.first if block == 0 else block
            if count <= 0 or self.first + count > upto:
                return n
            ends = self.ends
            cut = ends[count - 1]
            blob = _compress(bytes(self.lines[:cut]))
            self.blocks.append(blob)
            self.first += count
            self.bounds.append(self.first)
            self.at += cut
            self.sealed += len(blob) + BLOCK_OVERHEAD
            self.lines = self.lines[cut:]  # a new buffer: the sealed lines' memory goes
            self.ends = array("I", [e - cut for e in ends[count:]])
            n += count

    def view(self, start: int, end: int) -> tuple[bytes | bytearray, array, int]:
        """The lines of events [start, end) and their ends: (buffer, ends, k), event `start` ending at ends[k]."""
        first = self.first
        if start >= first:
            return self.lines, self.ends, start - first
        bounds = self.bounds
        b = bisect_right(bounds, start)
        base = bounds[b - 1] if b else 0
        data, ends = _open(self.blocks[b])
        if end <= bounds[b]:
            return data, ends, start - base
        # Across blocks (a caller that did not cut its batch at `batch_end`): join them.
        parts, all_ends = [data], array("I", ends)
        at = len(data)
        for i in range(b + 1, len(self.blocks)):
            if bounds[i - 1] >= end:
                break
            data, ends = _open(self.blocks[i])
            parts.append(data)
            all_ends.extend(e + at for e in ends)
            at += len(data)
        if end > first:
            parts.append(bytes(self.lines[: self.ends[end - first - 1]]))
            all_ends.extend(e + at for e in self.ends[: end - first])
        return b"".join(parts), all_ends, start - base

    def batch_end(self, start: int, end: int, limit: int) -> int:
        """Where a batch from `start` stops to hold about `limit` bytes at most (one event at least).

        A batch from a sealed block stops at the block's end."""
        k = start - self.first
        if k >= 0:
            ends = self.ends
        else:
            end = min(end, self.bounds[bisect_right(self.bounds, start)])
            _, ends, k = self.view(start, end)
        base = ends[k - 1] if k else 0
        last = k + end - start
        if ends[last - 1] - base <= limit:
            return end
        return max(start + 1, start + bisect_right(ends, base + limit, k, last) - k)

    def ndjson(self, start: int, end: int) -> bytes:
        """Events [start, end) as NDJSON lines: the log's own bytes."""
        k = start - self.first
        if k >= 0:
            lines, ends = self.lines, self.ends
        else:
            lines, ends, k = self.view(start, end)
        return bytes(lines[ends[k - 1] if k else 0 : ends[k + end - start - 1]])

    def json(self, i: int) -> bytes:
        k = i - self.first
        if k >= 0:
            lines, ends = self.lines, self.ends
        else:
            lines, ends, k = self.view(i, i + 1)
        return bytes(lines[ends[k - 1] if k else 0 : ends[k] - 1])

    def text_bytes(self, start: int, end: int) -> int:
        """The JSON bytes of events [start, end) (their lines less the newlines)."""
        k = start - self.first
        if k >= 0:
            ends = self.ends
        else:
            _, ends, k = self.view(start, end)
        return ends[k + end - start - 1] - (ends[k - 1] if k else 0) - (end - start)

    def kind(self, i: int) -> str:
        return KINDS[self.kinds[i]]
