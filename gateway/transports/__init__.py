"""The socket edge: each transport only frames bytes that the log already encoded."""

from .http import DropConnection, EventStream, HttpDeps
from .ws import WSDeps, WSSession

__all__ = ["DropConnection", "EventStream", "HttpDeps", "WSDeps", "WSSession"]
