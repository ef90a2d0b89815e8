"""Model sources: the simulated model, and relays of real upstreams beside it."""

from .base import Generation, PreStreamError, Sink, Source

__all__ = ["Generation", "PreStreamError", "Sink", "Source"]
