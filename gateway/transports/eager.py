"""Run an ASGI `send` inside a plain callback, finishing it in a task only if it blocks.

A server's `send` awaits only under backpressure (uvicorn: a full write
buffer), so driving its coroutine by hand writes the bytes right away with no
task switch. If it does block, the caller parks it and its task awaits
`finish`, which resumes it exactly where it stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Coroutine

__all__ = ["Parked", "send_now", "finish"]

Parked = tuple[Coroutine[Any, Any, None], Any]


def send_now(send: Callable[[dict], Awaitable[None]], message: dict) -> Parked | None:
    """Send `message`; None when done, else the blocked send (hand it to `finish`)."""
    coro = send(message)
    try:
        fut = coro.send(None)
    except StopIteration:
        return None
    if fut is not None:
        fut._asyncio_future_blocking = False  # as a Task does with what it is handed, so it can be awaited
    return coro, fut


async def finish(parked: Parked) -> None:
    """Resume a blocked send until it completes (its exceptions surface here)."""
    coro, fut = parked
    try:
        while True:
            if fut is None:
                await asyncio.sleep(0)  # a bare yield
            else:
                # The send yielded `fut` to us, not to a task, so nothing cleared its blocking flag;
                # left set, the C Future refuses this await ("await wasn't used with future").
                fut._asyncio_future_blocking = False
                try:
                    await fut
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():
                        raise
                except Exception:
                    pass  # the future failed: the coroutine sees it when resumed
            fut = coro.send(None)
    except StopIteration:
        pass
    finally:
        coro.close()
