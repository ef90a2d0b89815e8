"""One shared clock for every stream: token deadlines and periodic sweeps.

A single heap of absolute deadlines behind one armed loop timer replaces a
sleeping task per stream; due entries fire in one batch, so streams stay on
schedule (no drift) and thousands of them cost one timer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from typing import Callable

__all__ = ["Clock"]

log = logging.getLogger("gateway.clock")

# Entries due within this much of now fire in the same batch.
SLACK_S = 0.001


class Clock:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._count = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._periodic: list[asyncio.Task] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        """Run `callback` at loop time `deadline`; cancel by having it do nothing."""
        heapq.heappush(self._heap, (deadline, next(self._count), callback))
        if deadline < self._armed_at:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = deadline
        self._timer = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = float("inf")
        heap = self._heap
        limit = self.loop.time() + SLACK_S
        pop = heapq.heappop
        while heap and heap[0][0] <= limit:
            callback = pop(heap)[2]
            try:
                callback()
            except Exception:  # one broken stream must not stop the clock
                log.exception("clock callback failed")
        if heap:
            self._arm(heap[0][0])

    def every(self, interval: float, callback: Callable[[float], None]) -> None:
        """Call `callback(now)` every `interval` seconds until `stop`."""

        async def run() -> None:
            loop = self.loop
            next_at = loop.time() + interval
            while True:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                now = loop.time()
                next_at = max(next_at + interval, now)
                try:
                    callback(now)
                except Exception:
                    log.exception("periodic callback failed")

        self._periodic.append(self.loop.create_task(run()))

    def stop(self) -> None:
        for task in self._periodic:
            task.cancel()
        self._periodic.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        self._armed_at = float("inf")

    def __len__(self) -> int:
        return len(self._heap)
