"""WebSocket: one JSON text frame per event; JSON control messages from the client.

Frames themselves belong to the WebSocket library; this codec maps message
payloads to events and control messages, and validates what clients send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import orjson

from ..events import HEARTBEAT, Event, from_json, to_json

if TYPE_CHECKING:
    from ..log import EventLog

__all__ = [
    "HEARTBEAT_TEXT", "encode", "decode",
    "Start", "Cancel", "Resume", "Control", "ControlError",
    "start", "cancel", "resume", "parse_control",
    "CLOSE_NORMAL", "CLOSE_GOING_AWAY", "CLOSE_UNSUPPORTED", "CLOSE_INVALID",
    "CLOSE_POLICY", "CLOSE_TOO_BIG", "CLOSE_INTERNAL", "CLOSE_RESTART", "CLOSE_TRY_AGAIN",
    "text_frame", "frames", "texts",
]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013

HEARTBEAT_TEXT = '{"type":"heartbeat"}'


def encode(event: Event) -> str:
    if event is HEARTBEAT:
        return HEARTBEAT_TEXT
    return to_json(event).decode()


def text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed text frame (RFC 6455 5.2) as a server sends it: the bytes the
    WebSocket library would write, for the hot path that writes events without it."""
    n = len(payload)
    if n < 126:
        return b"\x81%c%b" % (n, payload)
    if n < 65536:
        return b"\x81\x7e%b%b" % (n.to_bytes(2, "big"), payload)
    return b"\x81\x7f%b%b" % (n.to_bytes(8, "big"), payload)


def frames(log: EventLog, start: int, end: int) -> bytes:
    """Log events [start, end) as server text frames, one per event, in one piece."""
    k = start - log.first
    if k >= 0:
        lines, ends = log.lines, log.ends
    else:  # a sealed block (a resume from far back)
        lines, ends, k = log.view(start, end)
    at = ends[k - 1] if k else 0
    out = []
    for e in ends[k : k + end - start]:
        out.append(text_frame(lines[at : e - 1]))
        at = e
    return out[0] if len(out) == 1 else b"".join(out)


def texts(log: EventLog, start: int, end: int) -> list[str]:
    """Log events [start, end) as message payloads, one per event (for the library to frame)."""
    return [line.decode() for line in log.ndjson(start, end)[:-1].split(b"\n")]


def decode(message: str | bytes) -> Event:
    return from_json(message)


@dataclass(frozen=True, slots=True)
class Start:
    """Start a new stream; `request` holds the same fields as POST /v1/streams."""
    request: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cancel:
    pass


@dataclass(frozen=True, slots=True)
class Resume:
    stream_id: str
    after: int = -1


Control = Union[Start, Cancel, Resume]


class ControlError(ValueError):
    """A control message the server refuses; `close_code` says how to close."""

    def __init__(self, message: str, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.close_code = close_code


def start(**request: Any) -> str:
    return orjson.dumps({"type": "start", **request}).decode()


def cancel() -> str:
    return '{"type":"cancel"}'


def resume(stream_id: str, after: int = -1) -> str:
    return orjson.dumps({"type": "resume", "stream_id": stream_id, "after": after}).decode()


def parse_control(message: str | bytes) -> Control:
    if isinstance(message, bytes):
        raise ControlError("control messages are JSON text frames", 1003)
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        raise ControlError("control message is not JSON", 1003) from None
    if not isinstance(obj, dict):
        raise ControlError("control message must be a JSON object")
    kind = obj.pop("type", None)
    if kind == "start":
        return Start(obj)
    if kind == "cancel":
        if obj:
            raise ControlError(f"cancel takes no fields, got {sorted(obj)}")
        return Cancel()
    if kind == "resume":
        stream_id, after = obj.pop("stream_id", None), obj.pop("after", -1)
        if obj:
            raise ControlError(f"unknown resume fields {sorted(obj)}")
        if not isinstance(stream_id, str) or not stream_id:
            raise ControlError("resume needs a stream_id string")
        if not isinstance(after, int) or isinstance(after, bool) or after < -1:
            raise ControlError("resume.after must be an integer >= -1")
        return Resume(stream_id, after)
    raise ControlError(f"unknown control message type {kind!r}")
