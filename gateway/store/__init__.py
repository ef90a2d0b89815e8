"""Where streams live between their clients: in memory, or in Redis for several replicas."""

from .base import StreamStore
from .memory import MemoryStore

__all__ = ["StreamStore", "MemoryStore"]
