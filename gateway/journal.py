"""Structured logs: one JSON line per stream lifecycle event.

    {"ts": ..., "event": "created"|"attached"|"resumed"|"cut"|"ended", "stream": id, "key": key id, ...}

The key id names a key, never its secret. Prompt text appears only with
`log_prompts`; otherwise only its size. Lines go to stderr, or to `log_file`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

from .settings import Settings

if TYPE_CHECKING:
    from .models import StreamRequest
    from .stream import Stream, Subscriber

__all__ = ["Journal", "configure"]

_log = logging.getLogger("gateway.lifecycle")


def configure(settings: Settings) -> None:
    """Call at startup, after the server configured logging (dictConfig resets child loggers)."""
    if not _log.handlers:
        handler = logging.FileHandler(settings.log_file) if settings.log_file else logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _log.addHandler(handler)
        _log.propagate = False
    _log.setLevel(settings.log_level.upper())


class Journal:
    def __init__(self, settings: Settings) -> None:
        self.prompts = settings.log_prompts

    def emit(self, event: str, stream: Stream, **fields: Any) -> None:
        if _log.isEnabledFor(logging.INFO):
            record = {"ts": round(time.time(), 3), "event": event, "stream": stream.id, "key": stream.owner_key, **fields}
            _log.info(orjson.dumps(record).decode())

    def created(self, stream: Stream, request: StreamRequest) -> None:
        prompt = {"prompt": request.prompt} if self.prompts else {"prompt_bytes": len(request.prompt.encode())}
        self.emit("created", stream, model=stream.model, one_shot=stream.one_shot, max_tokens=request.max_tokens,
                  **prompt)

    def attached(self, stream: Stream, sub: Subscriber) -> None:
        self.emit("resumed" if sub.cursor > 0 else "attached", stream, transport=sub.conn.transport,
                  after=sub.cursor - 1)

    def cut(self, stream: Stream, sub: Subscriber, now: float) -> None:
        self.emit("cut", stream, transport=sub.conn.transport, reason=sub.conn.cut, last_seq=sub.cursor - 1,
                  duration_s=round(now - sub.conn.since, 3))

    def ended(self, stream: Stream, now: float) -> None:
        self.emit("ended", stream, status=stream.status, error=stream.error_code,
                  cancelled=stream.info.get("cancelled"), tokens=stream.tokens,
                  duration_s=round(now - stream.started, 3), clients=len(stream.subs))
