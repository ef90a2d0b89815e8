"""What the decoders of model servers' streams share: JSON payloads in, sink calls out, one ending."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ..sources.base import Sink

__all__ = ["UpstreamDecoder"]


class UpstreamDecoder:
    """Feed bytes with `feed` (True once the stream has ended), call `close` at the end of the body."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.ended = False

    def feed(self, data: bytes) -> bool:
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Bytes held back waiting for a line's (or block's) end."""
        parser = getattr(self, "parser", None) or getattr(self, "lines", None)
        return parser.pending if parser is not None else 0

    def close(self) -> None:
        """The upstream body ended: unless the stream said it was finished, it was cut."""
        if not self.ended:
            self._end("fail", "upstream_closed", "the upstream ended the stream before finishing", True)

    def _object(self, data: bytes | str) -> dict | None:
        """One payload as a JSON object; anything else fails the stream (or, if JSON, is skipped)."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._end("fail", "upstream_bad_data", f"the upstream sent a payload that is not JSON: {data[:80]!r}")
            return None
        return obj if isinstance(obj, dict) else None

    def _end(self, verb: str, *args: Any) -> None:
        self.ended = True
        getattr(self.sink, verb)(*args)
