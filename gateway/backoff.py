"""One reconnect schedule for every client that reconnects by itself.

The Python client (gateway/client.py), the Locust users (loadtests/streaming.py) and the demo page's
fetch and WebSocket panels (gateway/static/app.js, the same numbers) wait this long before attempt n:
exponential from BASE_S, capped at CAP_S, half of it random ("equal jitter", so that clients cut at
the same moment do not come back at the same moment). An EventSource waits what the server's
`retry:` says instead, as browsers do.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["BASE_S", "CAP_S", "delay"]

BASE_S = 0.15
CAP_S = 2.0


def delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect attempt `attempt` (1, 2, ...)."""
    full = min(CAP_S, BASE_S * 2 ** (max(1, attempt) - 1))
    return full / 2 + rand() * full / 2
