"""NDJSON: one JSON event per line (`application/x-ndjson`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import HEARTBEAT, DecodeError, Event, from_json, to_json

if TYPE_CHECKING:
    from ..log import EventLog

__all__ = ["MEDIA_TYPE", "HEARTBEAT_LINE", "encode", "frames", "Lines", "Decoder"]

MEDIA_TYPE = "application/x-ndjson"
HEARTBEAT_LINE = b'{"type":"heartbeat"}\n'


def encode(event: Event) -> bytes:
    if event is HEARTBEAT:
        return HEARTBEAT_LINE
    return to_json(event) + b"\n"


def frames(log: EventLog, start: int, end: int) -> bytes:
    """Log events [start, end) as NDJSON lines: the log keeps them so, one slice."""
    return log.ndjson(start, end)


class Lines:
    """Incremental line splitter for any NDJSON stream (the gateway's, or an upstream's such as Ollama).

    Feed any split of the byte stream, get whole non-blank lines. Lines end in
    LF (a CR before it is tolerated).
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        if b"\n" not in buf:
            self._buf = buf
            return []
        *lines, self._buf = buf.split(b"\n")
        return [line for line in lines if line.strip()]

    def close(self) -> None:
        """Call at end of stream: a partial last line means the stream was cut."""
        if self._buf.strip():
            raise DecodeError("stream ended inside a line")

    @property
    def pending(self) -> int:
        return len(self._buf)


class Decoder:
    """The gateway's NDJSON: each line is one event."""

    def __init__(self) -> None:
        self.lines = Lines()

    def feed(self, data: bytes) -> list[Event]:
        return [from_json(line) for line in self.lines.feed(data)]

    def close(self) -> None:
        self.lines.close()

    @property
    def pending(self) -> int:
        return self.lines.pending
