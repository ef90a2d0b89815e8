"""Accepting connections in bursts: uvicorn's listening sockets on uvloop, without one-accept-per-iteration.

libuv accepts one connection per event-loop iteration (libuv/libuv#3696, libuv 1.45+), and uvloop
serves on libuv: under load, when an iteration lasts tens of milliseconds (tokens of many streams,
requests being parsed), new connections wait in the kernel's accept queue at that pace, unseen by the
application: a start-up storm of a few hundred streams queued for seconds there (docs/scale.md), and
admission could not refuse what it could not see.

Here each listening socket is watched with the loop's public `add_reader`; when it is readable, up to
`ACCEPT_BURST` connections are accepted in one go (a bound, so one wake-up never takes a whole iteration) and
each becomes an ordinary uvloop transport through `loop.connect_accepted_socket`, with the protocol
uvicorn asked for. (64 measured best here: 16 let the kernel queue grow again
under a 2,000-stream storm, 256 made single iterations long.) The queue is then in the event loop, where the admission probe (`ADMIT_LAG_MS`)
sees it as lateness and refuses new streams early with 503.

Admission at accept time: a connection whose request is already in (the usual case under a storm,
where a connection waits at least one iteration) is shown to `screen` (set by the server: the
connection gate's, gateway/gate.py), which may answer it at once, typically the admission's 503 for
a new stream past capacity: a few microseconds and no HTTP parser, app or task, where the same
refusal through the app costs about a new stream's worth of work and several loop iterations.

It plugs in through uvicorn's public `loop` setting (an import string naming a loop factory): the
loop is uvloop's, with `create_server(sock=...)` answered by a `Listener` here. Any other call
(host/port, TLS, Unix sockets) is uvloop's own, so is the whole path when uvicorn stops calling
`create_server` with a socket: then connections are accepted the stock way, one per iteration.
`tests/test_accept.py` holds the contract (uvicorn hands its sockets to this loop; a burst is taken
in a few iterations where stock uvloop takes one per iteration).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any, Callable

import uvloop

__all__ = ["Listener", "Loop", "accept_stats", "configure"]

log = logging.getLogger("gateway")

_burst = 64  # connections accepted per wake-up of one listening socket, at most (`configure`)
_RETRY_S = 1.0  # out of file descriptors: stop accepting for this long (as asyncio does)
_PEEK = 1024  # bytes of a new connection's request shown to the screen: its request line

# The server's screen: the first bytes of a connection's request -> a whole response to send before
# closing it, or None to serve it. Set once per process, before the server starts.
_screen: Callable[[bytes], bytes | None] | None = None


def configure(burst: int = 64, screen: Callable[[bytes], bytes | None] | None = None) -> None:
    """Set, once per process before the server starts, the burst (connections accepted per wake-up:
    `ACCEPT_BURST`) and the screen."""
    global _burst, _screen
    _burst, _screen = max(1, burst), screen


class Listener(asyncio.AbstractServer):
    """One listening socket: accepts bursts and hands each connection to the loop as a transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.Protocol],
                 sock: socket.socket, backlog: int) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._sock = sock
        self._serving = True
        self._closed = asyncio.Event()
        self.accepted = 0  # connections accepted here
        self.wakeups = 0  # times the socket was found readable (accepted / wakeups: the burst size)
        self.screened = 0  # connections answered at accept by the screen (refused)
        sock.setblocking(False)
        sock.listen(backlog)
        loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        self.wakeups += 1
        for _ in range(_burst):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept: %s; pausing accepts for %.0f s", exc, _RETRY_S)
                    self._loop.remove_reader(self._sock.fileno())
                    self._loop.call_later(_RETRY_S, self._resume)
                    return
                raise
            self.accepted += 1
            if _screen is not None and self._screened(conn, _screen):
                continue
            self._adopt(conn)

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def _screened(self, conn: socket.socket, screen: Callable[[bytes], bytes | None]) -> bool:
        """True if `screen` answered the connection (it is closed then)."""
        try:
            first = conn.recv(_PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False  # nothing in yet (or gone): served the usual way
        reply = screen(first) if first else None
        if reply is None:
            return False
        self.screened += 1
        try:
            while conn.recv(65536, socket.MSG_DONTWAIT):  # read what came, so close sends FIN, not RST
                pass
        except OSError:
            pass
        try:
            conn.send(reply, socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.close()
        return True

    def _adopt(self, conn: socket.socket) -> None:
        """Make `conn` a transport with a protocol from the factory, now (the coroutine
        `connect_accepted_socket` stepped here rather than in a task: one loop iteration sooner)."""
        coro = self._loop.connect_accepted_socket(self._factory, conn)
        try:
            waiter = coro.send(None)  # sets the transport up, then waits for connection_made
        except StopIteration:
            return
        except Exception as exc:  # the peer left before its transport was set up, or a refusal
            conn.close()
            if not isinstance(exc, OSError):
                log.error("accept: a connection could not be set up", exc_info=exc)
            return

        def finish(_: object) -> None:
            try:
                coro.send(None)
            except StopIteration:
                pass
            except Exception:  # the transport was closed by the coroutine itself; nothing to hand on
                pass

        waiter.add_done_callback(finish)

    # asyncio.AbstractServer: what uvicorn (shutdown) and gateway/drain.py (stop listening) call.
    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._serving else ()

    async def start_serving(self) -> None:
        return None  # serving since construction

    async def serve_forever(self) -> None:
        await self._closed.wait()

    def close_clients(self) -> None:  # connections belong to uvicorn, which closes them itself
        return None

    def abort_clients(self) -> None:
        return None


class Loop(uvloop.Loop):  # type: ignore[misc]
    """uvloop, with listening sockets handed in by uvicorn served by a bursting `Listener`.

    uvicorn's `loop` setting names it: `Config(loop="gateway.accept:Loop")` (a loop factory)."""

    listeners: list[Listener]

    async def create_server(self, protocol_factory: Callable[[], asyncio.Protocol], host: Any = None,
                            port: Any = None, *, sock: socket.socket | None = None, backlog: int = 100,
                            ssl: Any = None, **kwargs: Any) -> asyncio.AbstractServer:
        if sock is None or ssl is not None or kwargs or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return await super().create_server(protocol_factory, host, port, sock=sock, backlog=backlog, ssl=ssl,
                                               **kwargs)
        listener = Listener(self, protocol_factory, sock, backlog)
        if not hasattr(self, "listeners"):
            self.listeners = []
        self.listeners.append(listener)
        return listener


def accept_stats() -> tuple[int, int, int] | None:
    """(connections accepted, wake-ups, refused at accept) over the running loop's listeners, or None
    when the running loop (if any) is not this module's."""
    try:
        listeners = getattr(asyncio.get_running_loop(), "listeners", None)
    except RuntimeError:
        return None
    if listeners is None:
        return None
    return (sum(x.accepted for x in listeners), sum(x.wakeups for x in listeners),
            sum(x.screened for x in listeners))
