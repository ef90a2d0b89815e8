"""Token buckets: O(1) per check, one per key or per WebSocket, no timers."""

from __future__ import annotations

__all__ = ["Bucket", "Buckets"]


class Bucket:
    """`rate` per second on average, bursts up to `burst`."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float) -> float:
        """0 if allowed (and counted), else the seconds until one more is allowed."""
        tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


class Buckets:
    """One bucket per key id; keys come from settings, so the dict stays small."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.buckets: dict[str | None, Bucket] = {}

    def take(self, key: str | None, now: float) -> float:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(self.rate, max(1.0, 2 * self.rate), now)
        return bucket.take(now)
