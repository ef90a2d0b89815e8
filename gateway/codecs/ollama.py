"""Ollama's native streaming (`POST /api/chat`): NDJSON lines, the last with `done: true`.

Each line is `{"model", "created_at", "message": {"role", "content"}, "done": false}`;
the last has `"done": true` and a `done_reason`; a failure is a line with
`error`. Lines are split by `ndjson.Lines`, the one NDJSON line splitter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from .ndjson import Lines

if TYPE_CHECKING:
    from ..sources.base import Sink

__all__ = ["ChatDecoder"]


class ChatDecoder:
    """Reads an Ollama `/api/chat` stream into a sink; `feed` returns True once the stream has ended."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.lines = Lines()
        self.ended = False

    def feed(self, data: bytes) -> bool:
        for line in self.lines.feed(data):
            if not self.ended:
                self._line(line)
        return self.ended

    def close(self) -> None:
        """The upstream body ended: without a `done` line the stream was cut."""
        if not self.ended:
            self._end("fail", "upstream_closed", "the upstream ended the stream before finishing", True)

    def _line(self, line: bytes) -> None:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._end("fail", "upstream_bad_data", f"the upstream sent a line that is not JSON: {line[:80]!r}")
            return
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            self._end("fail", "upstream_error", str(obj["error"]))
            return
        message = obj.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if isinstance(text, str) and text:
            self.sink.token(text)
        if obj.get("done"):
            self._end("finish", str(obj.get("done_reason") or "stop"))

    def _end(self, verb: str, *args: Any) -> None:
        self.ended = True
        getattr(self.sink, verb)(*args)
