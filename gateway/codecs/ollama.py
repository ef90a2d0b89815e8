"""Ollama's native streaming (`POST /api/chat`): NDJSON lines, the last with `done: true`.

Each line is `{"model", "created_at", "message": {"role", "content"}, "done": false}`;
the last has `"done": true` and a `done_reason`; a failure is a line with
`error`. Lines are split by `ndjson.Lines`, the one NDJSON line splitter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ndjson import Lines
from .upstream import UpstreamDecoder

if TYPE_CHECKING:
    from ..sources.base import Sink

__all__ = ["ChatDecoder"]


class ChatDecoder(UpstreamDecoder):
    """Reads an Ollama `/api/chat` stream into a sink; without a `done` line the stream was cut."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.lines = Lines()

    def feed(self, data: bytes) -> bool:
        for line in self.lines.feed(data):
            if not self.ended:
                self._line(line)
        return self.ended

    def _line(self, line: bytes) -> None:
        obj = self._object(line)
        if obj is None:
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
