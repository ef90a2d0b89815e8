"""Real processes for tests: a gateway (uvicorn) on a free loopback port, and tool checks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.procs import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(message: str) -> None:
    """A tool the test needs is absent: fail in CI (never a silent skip), skip elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require(tool: str) -> str:
    """Path of an external program on PATH (or in /usr/sbin, /sbin)."""
    path = shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.path.exists(p)), None)
    if path is None:
        missing(f"{tool} is not installed (tests/setup.sh installs it)")
    return path


def require_module(name: str) -> None:
    """A Python module the code runs as `python -m NAME` with this interpreter (not whatever is on PATH)."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        missing(f"{name} is not importable by {sys.executable} (install the locked extras)")


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class Gateway:
    """A gateway process; `url` is its base URL."""

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        # One process unless a test asks for workers (the Redis store's default is one per core).
        full_env = {**os.environ, "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_WORKERS": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=ROOT, env=full_env,
        )
        try:
            wait_http(self.url + "/healthz", self.proc)
        except BaseException:
            stop(self.proc)
            raise

    def metrics(self) -> dict[str, float]:
        """Prometheus samples as {'name{labels}': value}."""
        out = {}
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> None:
        stop(self.proc)


@contextlib.contextmanager
def gateway(env: dict[str, str] | None = None, **kw):
    gw = Gateway(env, **kw)
    try:
        yield gw
    finally:
        gw.stop()


class RedisServer:
    """A throwaway redis-server on a free loopback port: no persistence, stoppable and restartable."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = require("redis-server")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("redis-server did not answer")

    def client(self):
        """A redis-py client, for tests that inspect the server (CLIENT LIST, keys)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None



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
