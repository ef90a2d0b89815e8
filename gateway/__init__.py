"""Stream model output over SSE, WebSocket and chunked NDJSON, the same events on each."""

__version__ = "0.1.0"
