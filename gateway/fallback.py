"""Transport fallback for clients, sans-I/O: WebSocket -> SSE over fetch -> NDJSON.

Corporate proxies refuse WebSocket upgrades (403, or a plain response where 101
was expected), and TLS-inspecting ones let the upgrade through and then kill the
connection. A client that cannot stream one way moves down the order, resuming
the same stream (by id, after the last seq) on the next transport:

    policy = Fallback(("ws", "sse_post", "ndjson"))
    ... connect with policy.transport ...
    policy.refused()          # the path refused the transport: True if there is another to try
    policy.ended(progressed, lasted_s)  # a connection ended without a terminal event: True: move on

A connection that ends having delivered no token, or within `short_s` of
opening, is barren; `barren_limit` in a row on one transport means the path
kills that transport, where one drop can be bad luck. (A proxy that cuts each
WebSocket 10 ms after the upgrade still lets a resume deliver the tokens that
queued meanwhile: progress, but in pieces and each after a backoff.) The Python client, the Locust
users and the page (static/app.js, the same rules) share this policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .names import FALLBACK

__all__ = ["Fallback", "ORDER"]

ORDER: tuple[str, ...] = tuple(FALLBACK)


@dataclass
class Fallback:
    order: tuple[str, ...] = ORDER
    barren_limit: int = 2
    short_s: float = 1.0
    index: int = 0
    barren: int = 0  # connections in a row on this transport that delivered nothing
    switches: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, transport: str | Sequence[str]) -> Fallback:
        """"auto": the whole order; one name: that transport only (never falls back); a sequence: that order."""
        if transport == "auto":
            return cls()
        return cls((transport,) if isinstance(transport, str) else tuple(transport))

    @property
    def transport(self) -> str:
        return self.order[self.index]

    def refused(self) -> bool:
        """The path would not carry this transport at all; True: try `transport` (the next one) now."""
        return self._next()

    def ended(self, progressed: bool, lasted_s: float = float("inf")) -> bool:
        """A connection ended without a terminal event; True: move on to `transport` (the next one)."""
        if progressed and lasted_s >= self.short_s:
            self.barren = 0
            return False
        self.barren += 1
        return self.barren >= self.barren_limit and self._next()

    def _next(self) -> bool:
        if self.index + 1 >= len(self.order):
            return False
        self.switches.append((self.order[self.index], self.order[self.index + 1]))
        self.index += 1
        self.barren = 0
        return True
