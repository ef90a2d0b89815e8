"""Test-side helpers: tool checks that fail in CI (`require`), and the processes of loadtests/procs.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading

import pytest

from loadtests import procs
from loadtests.procs import ROOT, GatewayProcess, free_port, stop, wait_http  # noqa: F401 (tests import them from here)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(message: str) -> None:
    """A tool the test needs is absent: fail in CI (never a silent skip), skip elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require(tool: str) -> str:
    """Path of an external program on PATH (or in /usr/sbin, /sbin)."""
    path = procs.find_tool(tool)
    if path is None:
        missing(f"{tool} is not installed (tests/setup.sh installs it)")
    return path


def require_module(name: str) -> None:
    """A Python module the code runs as `python -m NAME` with this interpreter (not whatever is on PATH)."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        missing(f"{name} is not importable by {sys.executable} (install the locked extras)")


def run(coro, timeout: float = 120.0):
    """asyncio.run with a bound: a server that never ends a stream fails the test (TimeoutError) instead
    of leaving it waiting in a read."""
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


Gateway = GatewayProcess  # a gateway process for a test; `url` is its base URL
SERVERS = ("uvicorn", "hypercorn", "granian")  # `gateway serve --server`; uvicorn is the default


@contextlib.contextmanager
def gateway(env: dict[str, str] | None = None, server: str = "uvicorn", args: tuple[str, ...] = (), **kw):
    """A gateway process on `server` for the block."""
    gw = Gateway(env, args=(*args, "--server", server), **kw)
    try:
        yield gw
    finally:
        gw.stop()


class RedisServer(procs.RedisServer):
    """redis-server for a test: missing, it fails in CI and skips elsewhere (`require`)."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port, binary=require("redis-server"))


@contextlib.contextmanager
def uvicorn_thread(app, ready_path: str = "/healthz", **config):
    """A real uvicorn serving `app` in a thread of this process (so tests can inspect its objects),
    configured as `gateway serve` configures it; yields the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                                           ws="websockets-sansio", log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_http(f"http://127.0.0.1:{port}{ready_path}", None)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
