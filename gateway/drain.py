"""Graceful drain on SIGTERM/SIGINT, before the server's own shutdown, on any server.

A server's shutdown first waits for open connections, and a stream's connection stays open until the
stream ends: so the drain has to start earlier, from the signal. `install` (called from the lifespan,
on the main thread) puts a handler in front of the server's: the first signal refuses new streams and
clients (503 problem, /healthz 503), tells attached clients to reconnect elsewhere (SSE `retry` + a
`reconnect` event, NDJSON a `reconnect` line, WebSocket close 1012: with a shared store another
replica resumes them), keeps generating in-flight streams up to `drain_timeout_s`, then ends the rest
with an in-band `shutdown` error and waits (briefly) for each connection to write it. Only then is the
signal handed to the server's handler, which shuts down as usual. A second signal skips the wait for
in-flight streams, not their terminal event; a third hands the signal on at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .service import Context

__all__ = ["drain", "install", "stop_listening"]

log = logging.getLogger("gateway")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


# After the last streams were ended: how long their connections get to write the terminal event.
GOODBYE_S = 2.0


async def drain(ctx: Context, hurry: asyncio.Event | None = None) -> None:
    """Drain this process's streams; `hurry` set (a second signal) ends the waits for streams at once."""
    hurry = hurry if hurry is not None else asyncio.Event()
    store = ctx.store
    ctx.draining = True
    if ctx.stop_listening is not None:  # a worker: its siblings take the new connections
        ctx.stop_listening()
    generating = [s for s in store.local() if s.generation is not None]
    log.info("draining: %d streams generating, up to %g s", len(generating), ctx.settings.drain_timeout_s)
    loop = asyncio.get_running_loop()
    if store.shared:
        # Other replicas read the same store: clients continue there, with no gap.
        for stream in store.local():
            stream.kick()
        # Let every connection say goodbye before the server's shutdown closes it.
        await _until(lambda: not any(sub.kicked for s in store.local() for sub in s.subs), GOODBYE_S, hurry)
    await _until(lambda: not any(s.generation is not None for s in store.local()), ctx.settings.drain_timeout_s,
                 hurry)
    for stream in store.local():
        gen = stream.generation
        if gen is not None:
            gen.cancel()
            ctx.stats.cancelled["shutdown"] += 1
            stream.fail("shutdown", "the gateway replica shut down before the stream finished", True)
    # The terminal event goes out on each connection before the server's shutdown may close it.
    await _until(lambda: not any(s.subs for s in store.local()), GOODBYE_S)
    await store.flush(5.0)


async def _until(done, timeout_s: float, hurry: asyncio.Event | None = None) -> None:
    """Poll `done()` until true, `timeout_s` passed or `hurry` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not done() and loop.time() < deadline and not (hurry is not None and hurry.is_set()):
        await asyncio.sleep(0.02)


def stop_listening(server: Any) -> bool:
    """Close a uvicorn server's listening sockets, keeping its connections: True if it could.

    uvicorn keeps its asyncio servers in `servers` (set in `startup`, closed in `shutdown`);
    `asyncio.Server.close` stops listening and leaves accepted connections alone. Without that
    attribute (another uvicorn) the worker keeps accepting and refuses with 503 while it drains.
    """
    servers = getattr(server, "servers", None)
    if not servers:
        log.warning("draining: cannot stop listening (no uvicorn `servers`); new connections get 503")
        return False
    for listener in servers:
        listener.close()
    return True


def install(ctx: Context) -> bool:
    """Drain on the first SIGTERM/SIGINT, then pass the signal on; False off the main thread (no drain)."""
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    task: asyncio.Task | None = None
    hurry = asyncio.Event()

    def hand_on(sig: int) -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
        handler = previous[sig]
        if callable(handler):
            handler(sig, None)
        else:  # the default action (or ignore), as if we had never been here
            signal.raise_signal(sig)

    def on_signal(sig: int) -> None:
        nonlocal task
        if task is not None:
            if hurry.is_set():  # a third signal: hand it on now
                task.cancel()
            hurry.set()  # a second: stop waiting for streams, still end them in band
            return
        task = loop.create_task(drain(ctx, hurry))

        def drained(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("drain failed", exc_info=t.exception())
            hand_on(sig)

        task.add_done_callback(drained)

    def handler(sig: int, frame: object) -> None:
        # In a signal handler, between two bytecodes of whatever runs: only schedule.
        loop.call_soon_threadsafe(on_signal, sig)

    if threading.current_thread() is not threading.main_thread():
        return False  # signals go to the main thread only (an app served from a thread, as some tests do)
    for sig in SIGNALS:
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return True
