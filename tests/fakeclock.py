"""A fake event loop clock for socket-free unit tests: time moves only when the test says so."""

from __future__ import annotations

import heapq
from typing import Callable


class FakeHandle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: FakeHandle) -> bool:
        return self.when < other.when


class FakeLoop:
    """The two methods `gateway.clock.Clock` uses (`time`, `call_at`), on a time the test advances."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.timers: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(when, callback)
        heapq.heappush(self.timers, handle)
        return handle

    def advance(self, seconds: float) -> None:
        """Move time on, running every timer due on the way, in order."""
        until = self.now + seconds
        while self.timers and self.timers[0].when <= until:
            handle = heapq.heappop(self.timers)
            if handle.cancelled:
                continue
            self.now = max(self.now, handle.when)
            handle.callback()
        self.now = until

    @property
    def armed(self) -> int:
        return sum(1 for h in self.timers if not h.cancelled)
