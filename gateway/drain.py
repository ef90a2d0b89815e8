"""Graceful drain on SIGTERM/SIGINT, before the server's own shutdown, on any server.

A server's shutdown first waits for open connections, and a stream's connection stays open until the
stream ends: so the drain has to start earlier, from the signal. `install` (called from the lifespan,
on the main thread) puts a handler in front of the server's: the first signal refuses new streams and
clients (503 problem, /healthz 503), tells attached clients to reconnect elsewhere (SSE `retry` + a
`reconnect` event, NDJSON a `reconnect` line, WebSocket close 1012: with a shared store another
replica resumes them), keeps generating in-flight streams up to `drain_timeout_s`, then ends the rest
with an in-band `shutdown` error. Only then is the signal handed to the server's handler, which shuts
down as usual. A second signal skips the wait.
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


async def drain(ctx: Context) -> None:
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
        until = loop.time() + 2.0
        while loop.time() < until and any(sub.kicked for s in store.local() for sub in s.subs):
            await asyncio.sleep(0.02)
    deadline = loop.time() + ctx.settings.drain_timeout_s
    while loop.time() < deadline and any(s.generation is not None for s in store.local()):
        await asyncio.sleep(0.05)
    for stream in store.local():
        gen = stream.generation
        if gen is not None:
            gen.cancel()
            ctx.stats.cancelled["shutdown"] += 1
            stream.fail("shutdown", "the gateway replica shut down before the stream finished", True)
    await store.flush(5.0)


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
        if task is not None:  # a second signal: stop waiting
            task.cancel()
            return
        task = loop.create_task(drain(ctx))

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
