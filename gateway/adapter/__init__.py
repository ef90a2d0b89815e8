"""The connection adapter: how a transport writes to and hangs up on a connection, on any ASGI server.

The portable path is plain ASGI and the default: a transport awaits `send` with
each batch and reads `receive` for the disconnect; a slow consumer is cut by
cancelling the task blocked in `send`. A server whose internals are known may
offer a fast path instead: its wrapper (one module here per server, such as
`adapter/uvicorn.py`) checks, per connection, that the server objects are the
ones it was tested against and puts a `Connection` in the scope. A transport
asks `connection(scope)`; None means the portable path, and a writer that
refuses (False) means "await `send` this time". The same goes for memory: a
fast path may report the client's disconnect by a callback (`on_lost`), so an
open stream needs no task of its own reading `receive`, and may drop the
server's copy of a finished WebSocket handshake (`forget_handshake`).
"""

from __future__ import annotations

from typing import Callable, Protocol

from starlette.types import Scope

__all__ = ["Connection", "Writer", "CONNECTION", "connection"]

CONNECTION = "gateway.connection"  # scope entry, set only by a server fast path

Writer = Callable[[bytes], bool]  # writes framed bytes now, or refuses (paused, closed): then await `send`


class Connection(Protocol):
    def http_writer(self) -> Writer | None:
        """For a chunked response whose start went out: write one body chunk, or refuse."""

    def ws_writer(self) -> Writer | None:
        """For an accepted, uncompressed WebSocket: write ready-made text frames, or refuse."""

    def abort(self) -> None:
        """Drop the connection now, buffered bytes and all (a stalled reader never takes them)."""

    def on_lost(self, callback: Callable[[], None] | None) -> bool:
        """Call `callback` once when the client is gone, instead of a task reading `receive` for the
        disconnect (None: no more, as a response ends); False: not offered here, read `receive`."""

    def forget_handshake(self) -> None:
        """After the WebSocket accept: drop what the server keeps of the handshake that nothing reads again."""


def connection(scope: Scope) -> Connection | None:
    return scope.get(CONNECTION)
