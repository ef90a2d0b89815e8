"""The one interface every model source implements.

A source pushes into a `Sink` (the stream) rather than being iterated: the
simulated model then needs no task per stream, and relays run one task each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..models import StreamRequest

__all__ = ["Sink", "Generation", "Source", "PreStreamError"]


class Sink(Protocol):
    def token(self, text: str) -> None: ...
    def fail(self, code: str, message: str, retryable: bool = False) -> None: ...
    def finish(self, finish_reason: str = "stop") -> None: ...


class Generation(Protocol):
    def cancel(self) -> None:
        """Stop generating; the source must not write into the sink afterwards."""


class Source(Protocol):
    async def start(self, request: StreamRequest, sink: Sink) -> Generation:
        """Begin generating into `sink`; return once the model has accepted the request.

        Raise `PreStreamError` to refuse it: the client then gets an HTTP status
        instead of a stream.
        """


class PreStreamError(Exception):
    """A refusal before the first byte: becomes an HTTP status with a problem body."""

    def __init__(self, status: int, detail: str, *, retry_after: float | None = None,
                 code: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self.code = code or f"http_{status}"
