"""Admission: past this process's capacity, refuse a new stream at once (503 + Retry-After), never queue it.

Two bounds, each off at 0:

- `max_streams`: streams generating here at once (measured capacity per core: docs/capacity.md);
- `admit_lag_ms`: how late the event loop may run. Three measures, the highest counts: a probe asks to
  be woken every 50 ms and notes how late it was woken (the latest sample, or half the previous
  figure if higher), the shared clock says how far past its slot the oldest token deadline due
  is (`Clock.overdue`: the clock fires a bounded batch per turn, so under a storm the loop stays
  punctual while tokens fall behind), and the store says how long the oldest create still being
  written has taken (`adding_for`: the Redis store writes each new stream before it answers, a few
  at a time, so under a storm creates queue there while the loop stays punctual). Over the bound, the process is past what it can serve on time:
  every stream on it, the new one included, would see its tokens late, and every waiting connection
  waits longer. Connections are accepted in bursts (gateway/accept.py), so a storm queues here,
  where this sees it, not in the kernel's accept queue.

A refused client gets 503 with a `Retry-After` of 1-3 s, jittered so that a crowd refused together
does not come back together; it is a problem+json with `code: over_capacity`. Attaching to, resuming
and cancelling existing streams is never refused here: they cost little and losing them costs much.

Where: under uvicorn the connection gate (gateway/gate.py) asks `over()` as soon as a request head is
complete and refuses a stream-creating POST there with ready-made bytes, before the HTTP parser and
the app see it (about 30x cheaper than a refusal by the app, which matters when a storm is refused by
the hundred); `check()` in the app refuses the rest (WebSocket `start`, other servers).
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import TYPE_CHECKING

from .problems import Problem

if TYPE_CHECKING:
    from .clock import Clock
    from .metrics import Stats
    from .settings import Settings
    from .store.base import StreamStore

__all__ = ["Admission", "refusal"]

TITLE = "Over capacity"
HINT = ": try again shortly, or another replica"


def refusal(detail: str) -> bytes:
    """The whole 503 response (problem+json, jittered Retry-After) the gate writes for `detail`."""
    body = json.dumps({"type": "about:blank", "title": TITLE, "status": 503, "detail": detail + HINT,
                       "code": "over_capacity"}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
            b"Retry-After: %d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
            % (random.randint(1, 3), len(body), body))

PROBE_S = 0.05


class Admission:
    def __init__(self, settings: Settings, stats: Stats, clock: Clock | None = None,
                 store: StreamStore | None = None) -> None:
        self.max_streams = settings.max_streams
        self.max_lag = settings.admit_lag_ms / 1000
        self.stats = stats
        self.clock = clock
        self.store = store
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

    def over(self) -> str | None:
        """Why a new stream would be past capacity (counted as a refusal), or None."""
        if self.max_streams and self.stats.active_streams >= self.max_streams:
            detail = f"this process generates {self.max_streams} streams, its measured capacity"
        elif self.max_lag and (lag := max(self.lag, self.clock.overdue() if self.clock else 0.0,
                                          self.store.adding_for() if self.store else 0.0)) > self.max_lag:
            detail = f"this process is {lag * 1000:.0f} ms late serving its streams"
        else:
            return None
        self.stats.refused["capacity"] += 1
        return detail

    def check(self) -> None:
        """Raise a 503 problem if a new stream would be past capacity."""
        detail = self.over()
        if detail is not None:
            raise Problem(503, TITLE, detail + HINT, retry_after=random.randint(1, 3), code="over_capacity")
