"""The service below the web layer: create, find, own and cancel streams, with this replica's limits.

One `Context` per app holds the shared clock, the stats, the store and the
registry; the routers, transports and the edge call it, and it raises
`Problem`s that the web layer turns into responses. Nothing here imports the
web framework.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .admission import Admission
from .auth import Auth
from .clock import Clock
from .limits import Buckets
from .metrics import Stats
from .models import StreamRequest
from .problems import Problem
from .registry import Registry
from .settings import Settings
from .store import make_store
from .stream import Stream

__all__ = ["Context"]


class Context:
    """Everything a request handler needs, built once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = Clock()
        self.stats = Stats()
        self.store = make_store(settings, self.clock, self.stats)
        self.registry = Registry(settings, self.clock, self.stats, self.store)
        self.auth = Auth(settings)
        self.rates = Buckets(settings.rate_per_key) if settings.rate_per_key else None
        self.admission = Admission(settings, self.stats, self.clock, self.store)
        self.draining = False  # SIGTERM came: no new streams or clients here (gateway/drain.py)
        # A worker of `serve --workers`: closes its listening sockets when the drain starts, so new and
        # reconnecting clients go to its siblings on the same port (set by gateway/cli.py).
        self.stop_listening: Callable[[], object] | None = None

    async def open(self) -> None:
        """Start what runs for the service's life: the store, the registry's sweep, admission."""
        await self.store.open()
        self.registry.start()
        self.admission.start()

    async def close(self) -> None:
        """End this process's streams with `cancelled (shutdown)` and stop what `open` started."""
        for stream in self.store.local():
            stream.cancel("shutdown")
        self.clock.stop()
        self.admission.stop()
        await self.store.close()
        await self.registry.aclose()

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise Problem(503, "Draining", "this replica is shutting down: use another one",
                          retry_after=1, code="draining")

    def check_request(self, request: StreamRequest) -> None:
        self.refuse_if_draining()
        s = self.settings
        if "max_tokens" not in request.model_fields_set:  # the default, never over this server's limit
            request.max_tokens = min(request.max_tokens, s.max_tokens_limit)
        if len(request.prompt.encode()) > s.max_prompt_bytes:
            raise Problem(413, "Prompt too large", f"the prompt is over {s.max_prompt_bytes} bytes")
        if request.max_tokens > s.max_tokens_limit:
            raise Problem(422, "Invalid request", f"max_tokens is over the limit of {s.max_tokens_limit}")

    async def owned(self, stream_id: str, key: str | None) -> Stream:
        """The stream if `key` owns it; another key's stream is not found (404, no existence oracle)."""
        stream = await self.store.get(stream_id)
        if stream is None or stream.owner_key != key:
            if stream is None and await self.store.expired(stream_id, key):
                raise Problem(410, "Stream expired", "the stream ended and its events are gone", code="expired")
            raise Problem(404, "Stream not found", f"no stream {stream_id[:64]!r}", code="not_found")
        return stream

    async def find(self, stream_id: str, after: int, key: str | None) -> Stream:
        """The stream to attach to, with the resume point checked; raises Problem."""
        self.refuse_if_draining()
        stream = await self.owned(stream_id, key)
        limit = self.settings.clients_per_stream
        if limit and len(stream.subs) >= limit:
            self.stats.refused["clients"] += 1
            raise Problem(429, "Too many clients", f"this stream has {limit} clients already",
                          retry_after=1, code="too_many_clients")
        last = stream.last_seq
        if after > last and stream.running and self.store.shared:
            # The client may have read up to `after` on another replica: this copy can lag behind.
            await self.store.catch_up(stream, after)
            last = stream.last_seq
        if after > last or (after == last and not stream.running):
            raise Problem(409, "Nothing to resume",
                          f"resume point {after} is past the stream's last event {last}"
                          + ("" if stream.running else " (the stream has ended)"), code="past_end")
        return stream

    async def create(self, request: StreamRequest, one_shot: bool, key: str | None = None) -> Stream:
        self.check_request(request)
        self.admission.check()
        return await self.registry.create(request, one_shot=one_shot, owner_key=key)

    async def run_to_end(self, stream: Stream, request: Any) -> None:
        """Wait, unstreamed, until `stream` ends or the client of `request` (its ASGI `receive`) leaves,
        which cancels a one-shot stream."""
        sub = stream.attach(-1, "complete", self.clock.now())
        left = asyncio.get_running_loop().create_task(_disconnected(request))
        left.add_done_callback(lambda _: (setattr(sub, "gone", True), sub.wake()))
        try:
            while stream.running and not sub.gone:
                sub.cursor = len(stream.log)
                sub.beat = False  # no heartbeats here; left set, wait() would return at once, forever
                await stream.wait(sub)
        finally:
            left.cancel()
            stream.detach(sub, self.clock.now(), client_left=sub.gone)


async def _disconnected(request: Any) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
