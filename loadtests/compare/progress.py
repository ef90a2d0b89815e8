"""A one-line progress bar with time left, from each step's estimated duration."""

from __future__ import annotations

import sys
import threading
import time

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Steps with estimates; time left is re-scaled by how long finished steps really took."""

    def __init__(self, estimates: list[tuple[str, float]], stream=None, width: int = 28) -> None:
        self.estimates = estimates
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = width
        self.index = -1
        self.started = time.monotonic()
        self.step_started = self.started
        self.spent_done = 0.0  # real seconds of finished steps
        self.estimated_done = 0.0  # their estimates
        self._last_draw = 0.0
        self._done = threading.Event()
        if self.tty:
            # Redraw while long steps (baseline, memory) run without calling back.
            threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self._done.wait(0.5):
            if self.index >= 0:
                self.draw()

    def step(self, label: str | None = None) -> None:
        now = time.monotonic()
        if self.index >= 0:
            self.spent_done += now - self.step_started
            self.estimated_done += self.estimates[self.index][1]
        self.index += 1
        self.step_started = now
        if label is not None and self.index < len(self.estimates):
            self.estimates[self.index] = (label, self.estimates[self.index][1])
        self.draw(force=True)

    def left(self) -> float:
        pace = self.spent_done / self.estimated_done if self.estimated_done > 5 else 1.0
        pace = min(max(pace, 0.5), 3.0)
        current = self.estimates[self.index][1] if 0 <= self.index < len(self.estimates) else 0.0
        in_step = time.monotonic() - self.step_started
        rest = sum(e for _, e in self.estimates[self.index + 1:])
        return pace * (rest + max(current - in_step, 0.0))

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self.tty or now - self._last_draw < 0.25):
            return
        self._last_draw = now
        total = sum(e for _, e in self.estimates)
        i = min(self.index, len(self.estimates) - 1)
        done_est = sum(e for _, e in self.estimates[:i]) + min(now - self.step_started, self.estimates[i][1])
        share = min(done_est / total, 1.0) if total else 1.0
        filled = int(share * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        label = self.estimates[i][0]
        line = (f"[{bar}] {share:4.0%}  {i + 1}/{len(self.estimates)} {label:<34.34}"
                f" {_clock(now - self.started)} elapsed, ~{_clock(self.left())} left")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, message: str) -> None:
        self._done.set()
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"{message} ({_clock(time.monotonic() - self.started)})\n")
        self.stream.flush()
