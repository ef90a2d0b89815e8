"""The default store: streams in this process's memory, gone after their TTL."""

from __future__ import annotations

from collections import OrderedDict

from typing import Any, Callable

from ..stream import Stream

__all__ = ["MemoryStore"]

_TOMBSTONES = 100_000


def evict_oldest(streams: dict[str, Stream], nbytes: int, owner_key: Any,
                 forget: Callable[[Stream], None]) -> list[Stream]:
    """Drop ended streams nobody reads, oldest ended first (of `owner_key` unless it is None), until
    `nbytes` are freed; the dropped ones."""
    ended = sorted((s for s in streams.values() if s.ended_at is not None and not s.subs
                    and (owner_key is None or s.owner_key == owner_key)), key=lambda s: s.ended_at)
    out: list[Stream] = []
    for s in ended:
        if nbytes <= 0:
            break
        forget(s)
        out.append(s)
        nbytes -= s.log.size
    return out


class MemoryStore:
    shared = False
    ready = True

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.streams: dict[str, Stream] = {}
        self._expired: OrderedDict[str, str | None] = OrderedDict()  # id -> owner

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def add(self, stream: Stream) -> None:
        self.streams[stream.id] = stream

    async def reserve(self, stream: Stream, limit: int) -> bool:
        return True  # one process: the registry's own count is the whole count

    def release(self, stream: Stream) -> None:
        pass

    async def get(self, stream_id: str) -> Stream | None:
        return self.streams.get(stream_id)

    async def expired(self, stream_id: str, owner_key: str | None = None) -> bool:
        return stream_id in self._expired and self._expired[stream_id] == owner_key

    async def cancel(self, stream_id: str, reason: str) -> bool | None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return None
        return stream.cancel(reason)

    async def catch_up(self, stream: Stream, seq: int) -> None:
        pass  # one process holds every event: a point past the end is past it

    async def flush(self, timeout: float) -> None:
        pass

    def evict(self, nbytes: int, owner_key: Any = None) -> list[Stream]:
        return evict_oldest(self.streams, nbytes, owner_key, self._forget)

    def _forget(self, s: Stream) -> None:
        del self.streams[s.id]
        self._expired[s.id] = s.owner_key

    def sweep(self, now: float) -> None:
        ttl = self.ttl_s
        old = [s for s in self.streams.values()
               if s.ended_at is not None and not s.subs and now - s.ended_at > ttl]
        for s in old:
            del self.streams[s.id]
            self._expired[s.id] = s.owner_key
        while len(self._expired) > _TOMBSTONES:
            self._expired.popitem(last=False)

    def adding_for(self) -> float:
        return 0.0  # `add` keeps the stream here at once

    def local(self) -> list[Stream]:
        return list(self.streams.values())
