"""Where streams live between their clients: in memory, or in Redis for several replicas."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import StoreUnavailable, StreamStore
from .memory import MemoryStore

if TYPE_CHECKING:
    from ..clock import Clock
    from ..metrics import Stats
    from ..settings import Settings

__all__ = ["StreamStore", "StoreUnavailable", "MemoryStore", "make_store"]


def make_store(settings: Settings, clock: Clock, stats: Stats) -> StreamStore:
    """The store `stream_store` names (STREAM_STORE=memory|redis|redis-cluster)."""
    if settings.stream_store == "redis-cluster":
        from .cluster import ClusterStore

        return ClusterStore(settings, clock, stats)
    if settings.stream_store == "redis":
        from .redis import RedisStore

        return RedisStore(settings, clock, stats)
    return MemoryStore(settings.ttl_s)
