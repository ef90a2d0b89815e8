"""Streams run from the edge: while one streams, no middleware or router layer is still suspended under it.

A real uvicorn (in a thread of this process, so its objects can be inspected)
serves the real app; a one-shot SSE stream is held open before its first
token, and the live coroutines are searched for the layers that would hold
it if the stream ran inside them.
"""

from __future__ import annotations

import contextlib
import gc
import sys

import httpx

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import uvicorn_thread

# Layers that sit between the edge and the handler: each would keep a frame alive for a stream's life.
INNER = {"Router.__call__", "ExceptionMiddleware.__call__", "ServerErrorMiddleware.__call__", "Guard.__call__",
         "BodyLimit.__call__", "AsyncExitStackMiddleware.__call__"}


@contextlib.contextmanager
def _serve():
    thresholds = gc.get_threshold()
    try:
        with uvicorn_thread(create_app(Settings(log_level="warning"))) as port:
            yield port
    finally:
        gc.unfreeze()  # the app's lifespan froze and retuned this process's collector
        gc.set_threshold(*thresholds)


# Wrappers the layers put around `receive` and `send` per request: a body run with the edge's own frees them.
WRAPPERS = {"BodyLimit.__call__.<locals>.limited", "ServerErrorMiddleware.__call__.<locals>._send",
            "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender"}


def _functions() -> set[str]:
    return {obj.__qualname__ for obj in gc.get_objects() if type(obj).__name__ == "function"}


def _run_frame_scope() -> dict:
    for obj in gc.get_objects():
        if type(obj).__name__ == "coroutine" and obj.cr_code.co_qualname == "EventStream.run" and obj.cr_frame:
            return obj.cr_frame.f_locals["scope"]
    raise AssertionError("no EventStream.run running")


def _suspended() -> set[str]:
    names = set()
    for obj in gc.get_objects():
        if type(obj).__name__ == "coroutine" and obj.cr_frame is not None:
            names.add(obj.cr_code.co_qualname)
    return names


def test_a_held_stream_keeps_no_inner_layer_suspended():
    body = {"prompt": "held", "max_tokens": 3, "sim": {"ttft_ms": 60_000, "itl_ms": 10}}
    with _serve() as port, httpx.stream("POST", f"http://127.0.0.1:{port}/v1/sse", json=body, timeout=30) as r:
        assert r.status_code == 200
        # Held in a name: a generator dropped after one `next` is closed, which closes httpx's stream and the
        # connection, and the server ended the stream before the search (CI failed so, twice).
        chunks = r.iter_raw()
        first = next(chunks)  # retry and meta: the stream is open, its first token a minute away
        assert b"event: meta" in first or b"retry:" in first
        live = _suspended()
        assert "EventStream.run" in live  # the stream itself is there, run by the edge
        assert "Edge.__call__" in live
        assert not (live & INNER), live & INNER
        assert not (_functions() & WRAPPERS), _functions() & WRAPPERS
        # The scope the connection keeps: the router's entries gone, and the table they grew shrunk.
        scope = _run_frame_scope()
        assert "route" not in scope and "endpoint" not in scope
        assert sys.getsizeof(scope) == sys.getsizeof(dict(scope)), (sys.getsizeof(scope), sorted(scope))
