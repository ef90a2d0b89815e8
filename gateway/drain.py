"""Graceful drain on SIGTERM, before uvicorn's own shutdown.

uvicorn's shutdown first waits for open connections, and a stream's connection stays open until the
stream ends: so the drain has to start earlier, from the signal. It refuses new streams and clients
(503 problem, /healthz 503), tells attached clients to reconnect elsewhere (SSE `retry` + a
`reconnect` event, NDJSON a `reconnect` line, WebSocket close 1012: with a shared store another
replica resumes them), keeps generating in-flight streams up to `drain_timeout_s`, then ends the rest
with an in-band `shutdown` error. Only then does uvicorn shut down. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from .app import Context

__all__ = ["drain", "DrainingServer", "stop_listening"]

log = logging.getLogger("gateway")


async def drain(ctx: Context) -> None:
    store = ctx.store
    ctx.draining = True
    generating = [s for s in store.local() if s.generation is not None]
    log.info("draining: %d streams generating, up to %g s", len(generating), ctx.settings.drain_timeout_s)
    loop = asyncio.get_running_loop()
    if store.shared:
        # Other replicas read the same store: clients continue there, with no gap.
        for stream in store.local():
            stream.kick()
        # Let every connection say goodbye before uvicorn's shutdown closes it.
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


def stop_listening(server: uvicorn.Server) -> bool:
    """Close the server's listening sockets, keeping its connections: True if it could.

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


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with `drain` between the first SIGTERM/SIGINT and the shutdown."""

    def __init__(self, config: uvicorn.Config, ctx: Context) -> None:
        super().__init__(config)
        self.ctx = ctx
        self.drain_requested = False
        self.drain_task: asyncio.Task | None = None
        # A worker of `serve --workers` (gateway/workers.py): stop accepting when the drain starts, so
        # new and reconnecting clients go to the siblings on the same port. Alone, keep accepting
        # and answer 503 (a load balancer in front reads /healthz).
        self.stop_accepting = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_requested or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        # In a signal handler: only set a flag; `on_tick` starts the drain inside the loop.
        self.drain_requested = True
        self._captured_signals.append(sig)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_requested and self.drain_task is None:
            if self.stop_accepting:
                stop_listening(self)
            self.drain_task = asyncio.get_running_loop().create_task(drain(self.ctx))
        if self.drain_task is not None and self.drain_task.done() and not self.should_exit:
            if self.drain_task.exception() is not None:
                log.error("drain failed", exc_info=self.drain_task.exception())
            self.should_exit = True
        return await super().on_tick(counter)
