"""NDJSON: one JSON event per line (`application/x-ndjson`)."""

from __future__ import annotations

from ..events import HEARTBEAT, DecodeError, Event, from_json, to_json

__all__ = ["MEDIA_TYPE", "HEARTBEAT_LINE", "encode", "Decoder"]

MEDIA_TYPE = "application/x-ndjson"
HEARTBEAT_LINE = b'{"type":"heartbeat"}\n'


def encode(event: Event) -> bytes:
    if event is HEARTBEAT:
        return HEARTBEAT_LINE
    return to_json(event) + b"\n"


class Decoder:
    """Incremental decoder: feed any split of the byte stream, get whole events.

    Lines end in LF (a CR before it is tolerated). Blank lines are skipped.
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf + data if self._buf else data
        if b"\n" not in buf:
            self._buf = buf
            return []
        *lines, self._buf = buf.split(b"\n")
        return [from_json(line) for line in lines if line.strip()]

    def close(self) -> None:
        """Call at end of stream: a partial last line means the stream was cut."""
        if self._buf.strip():
            raise DecodeError("stream ended inside a line")

    @property
    def pending(self) -> int:
        return len(self._buf)
