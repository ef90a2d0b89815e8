"""One shared clock for every stream: token deadlines and periodic sweeps.

Absolute deadlines in 1 ms slots behind one armed loop timer replace a
sleeping task per stream; a due slot fires as one batch, so streams stay on
schedule (no drift) and thousands of them cost one timer. Adding to a slot
is a list append: the heap orders only the distinct slots (a few hundred),
not every pending token.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Callable

__all__ = ["Clock", "SLOT_S"]

log = logging.getLogger("gateway.clock")

# Deadlines are grouped into slots this long; a slot fires once its start is due.
SLOT_S = 0.001
# Callbacks one firing runs at most before the loop gets a turn (I/O, other tasks).
FIRE_BUDGET = 2_000


class Clock:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._slots: dict[int, list[Callable[[], None]]] = {}
        self._keys: list[int] = []  # heap of the slots in use
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")  # the slot key the timer is set for
        self._periodic: list[asyncio.Task] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        """Run `callback` at loop time `deadline` (within its 1 ms slot); cancel by having it do nothing."""
        key = int(deadline * 1000)
        slot = self._slots.get(key)
        if slot is not None:
            slot.append(callback)
            return
        self._slots[key] = [callback]
        heapq.heappush(self._keys, key)
        if key < self._armed_at:
            self._arm(key)

    def _arm(self, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = key
        self._timer = self.loop.call_at(key * SLOT_S, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = float("inf")
        keys, slots = self._keys, self._slots
        now = int(self.loop.time() * 1000)
        pop = heapq.heappop
        ran = 0
        while keys and keys[0] <= now and ran < FIRE_BUDGET:
            # Callbacks may add to this very slot (a zero gap): they start a new list, found next turn.
            batch = slots.pop(pop(keys))
            ran += len(batch)
            for callback in batch:
                try:
                    callback()
                except Exception:  # one broken stream must not stop the clock
                    log.exception("clock callback failed")
        # Past the budget (streams generating with no gap), the rest waits for the loop's next turn:
        # sockets are served between bursts, so no paced stream waits behind a fast one's whole answer.
        if keys:
            self._arm(keys[0])

    def overdue(self) -> float:
        """Seconds the oldest deadline due is past its slot (0 when on time): how far behind the streams'
        tokens run. Past FIRE_BUDGET a firing leaves due slots for the next turn, so the loop itself
        stays punctual while this grows: admission reads it (gateway/admission.py)."""
        keys = self._keys
        if not keys:
            return 0.0
        return max(0.0, self.loop.time() - keys[0] * SLOT_S)

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
        self._slots.clear()
        self._keys.clear()
        self._armed_at = float("inf")

    def __len__(self) -> int:
        return sum(map(len, self._slots.values()))
