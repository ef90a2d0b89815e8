"""The socket edge: each transport only frames bytes that the log already encoded."""

from .http import DropConnection, EventStream
from .ws import WSSession

__all__ = ["DropConnection", "EventStream", "WSSession"]
