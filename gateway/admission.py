"""Admission: past this process's capacity, refuse a new stream at once (503 + Retry-After), never queue it.

Two bounds, each off at 0:

- `max_streams`: streams generating here at once (measured capacity per core: docs/capacity.md);
- `admit_lag_ms`: how late the event loop may run. A probe asks to be woken every 50 ms and notes how
  late it was woken; while that lateness (the latest sample, or half the previous figure if higher)
  is over the bound, the loop is past what it can serve on time: every stream on it, the new one
  included, would see its tokens late, and every waiting connection waits longer to be accepted.

A refused client gets 503 with a `Retry-After` of 1-3 s, jittered so that a crowd refused together
does not come back together; it is a problem+json with `code: over_capacity`. Attaching to, resuming
and cancelling existing streams is never refused here: they cost little and losing them costs much.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from .problems import Problem

if TYPE_CHECKING:
    from .metrics import Stats
    from .settings import Settings

__all__ = ["Admission"]

PROBE_S = 0.05


class Admission:
    def __init__(self, settings: Settings, stats: Stats) -> None:
        self.max_streams = settings.max_streams
        self.max_lag = settings.admit_lag_ms / 1000
        self.stats = stats
        self.lag = 0.0  # seconds the loop was late lately
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        if self.max_lag:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + PROBE_S
            self._handle = loop.call_at(self._due, self._probe)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.lag = max(now - self._due, self.lag / 2)
        self._due = now + PROBE_S
        self._handle = loop.call_at(self._due, self._probe)

    def check(self) -> None:
        """Raise a 503 problem if a new stream would be past capacity."""
        if self.max_streams and self.stats.active_streams >= self.max_streams:
            detail = f"this process generates {self.max_streams} streams, its measured capacity"
        elif self.max_lag and self.lag > self.max_lag:
            detail = f"this process is {self.lag * 1000:.0f} ms late serving its streams"
        else:
            return
        self.stats.refused["capacity"] += 1
        raise Problem(503, "Over capacity", detail + ": try again shortly, or another replica",
                      retry_after=random.randint(1, 3), code="over_capacity")
