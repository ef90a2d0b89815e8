"""The closed set of events every transport carries (see docs/wire-contract.md).

`seq` is the event's index in its stream: meta is 0, tokens follow, and the
terminal event (`done` or `error`) is last. A resumed client asks for every
event after a seq. Heartbeats and reconnects are about the connection, not
the stream: they carry no seq and are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

import orjson

__all__ = [
    "Meta", "Token", "Heartbeat", "Reconnect", "Error", "Done", "Event",
    "DecodeError", "to_json", "from_obj", "from_json", "token_json", "HEARTBEAT", "KINDS", "KIND",
]


class DecodeError(ValueError):
    """Bytes or objects that are not a valid event."""


@dataclass(frozen=True, slots=True)
class Meta:
    stream_id: str
    model: str
    created: float
    seq: int = 0
    type: ClassVar[str] = "meta"


@dataclass(frozen=True, slots=True)
class Token:
    seq: int
    text: str
    type: ClassVar[str] = "token"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    type: ClassVar[str] = "heartbeat"


@dataclass(frozen=True, slots=True)
class Reconnect:
    """The server is going away (draining): resume after your last seq, elsewhere, after `retry_ms`."""
    retry_ms: int = 0
    type: ClassVar[str] = "reconnect"


@dataclass(frozen=True, slots=True)
class Error:
    seq: int
    code: str
    message: str
    retryable: bool = False
    type: ClassVar[str] = "error"


@dataclass(frozen=True, slots=True)
class Done:
    seq: int
    finish_reason: str
    tokens: int
    sha256: str
    type: ClassVar[str] = "done"


Event = Union[Meta, Token, Heartbeat, Reconnect, Error, Done]
HEARTBEAT = Heartbeat()
TERMINAL = frozenset({"done", "error"})
KINDS = ("meta", "token", "error", "done")  # the kinds a stream's log holds, by their number there
KIND = {name: i for i, name in enumerate(KINDS)}

_FIELDS: dict[str, tuple[type, tuple[tuple[str, type], ...]]] = {
    "meta": (Meta, (("seq", int), ("stream_id", str), ("model", str), ("created", (int, float)))),
    "token": (Token, (("seq", int), ("text", str))),
    "heartbeat": (Heartbeat, ()),
    "reconnect": (Reconnect, (("retry_ms", int),)),
    "error": (Error, (("seq", int), ("code", str), ("message", str), ("retryable", bool))),
    "done": (Done, (("seq", int), ("finish_reason", str), ("tokens", int), ("sha256", str))),
}


# Line and paragraph separators JSON leaves raw, which line splitters (str.splitlines, JavaScript
# before ES2019) take for line ends: events carry them escaped, so an NDJSON line or SSE data line
# is one line to every reader.
_SEPARATORS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def dumps(obj: object) -> bytes:
    """Every event's JSON goes through here (one encoding, escaped the same way everywhere)."""
    out = orjson.dumps(obj)
    if b"\xe2\x80" in out or b"\xc2\x85" in out:
        for raw, escaped in _SEPARATORS:
            out = out.replace(raw, escaped)
    return out


def token_json(seq: int, text: str) -> bytes:
    """The hot path's encoder: one token as JSON, without building an object."""
    return b'{"type":"token","seq":%d,"text":%b}' % (seq, dumps(text))


def to_json(event: Event) -> bytes:
    if type(event) is Token:
        return token_json(event.seq, event.text)
    obj = {"type": event.type}
    for name, _ in _FIELDS[event.type][1]:
        obj[name] = getattr(event, name)
    return dumps(obj)


def from_obj(obj: object) -> Event:
    if not isinstance(obj, dict):
        raise DecodeError("event must be a JSON object")
    kind = obj.get("type")
    spec = _FIELDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise DecodeError(f"unknown event type {kind!r}")
    cls, fields = spec
    args = {}
    for name, typ in fields:
        if name not in obj:
            if name == "seq" and kind == "meta":
                continue
            raise DecodeError(f"{kind} event lacks {name!r}")
        value = obj[name]
        # bool is an int in Python; a seq of true is still malformed.
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise DecodeError(f"{kind}.{name} has the wrong type")
        args[name] = value
    if cls is Heartbeat:
        return HEARTBEAT  # one instance: codecs and readers test `event is HEARTBEAT`
    return cls(**args)


def from_json(data: bytes | str) -> Event:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    return from_obj(obj)
