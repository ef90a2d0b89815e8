"""Issue 18 against a real gateway process: attach-token scope, the connection edge (slow and huge
headers, idle connections, the accept cap), bad input that must not cost the connection, and the
low-severity limits."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from gateway.codecs import ws as wsc
from loadtests.procs import free_port, stop

from .support import ROOT, run, wait_http

KEY = "secret-edge-0123456789"
OTHER = "secret-other-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SLOW = {"ttft_ms": 10, "itl_ms": 50, "jitter": 0}


class Proc:
    """A gateway process whose stderr (its log) the test reads."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log = log
        full = {**os.environ, "GATEWAY_LOG_LEVEL": "info", **env}
        self._err = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(self.port)],
                                     cwd=ROOT, env=full, stderr=self._err)
        try:
            wait_http(self.url + "/healthz", self.proc)
        except BaseException:
            self.stop()
            raise

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.proc)
        self._err.close()


@contextmanager
def proc(tmp_path: Path, **env: str):
    p = Proc(env, tmp_path / f"gw-{time.monotonic_ns()}.log")
    try:
        yield p
    finally:
        p.stop()


KEYS_ON = {"GATEWAY_API_KEYS": f"edge={KEY},other={OTHER}", "GATEWAY_ATTACH_TOKEN_TTL_S": "2"}


def test_an_attach_token_socket_reaches_only_its_stream_and_is_never_logged(tmp_path):
    with proc(tmp_path, **KEYS_ON) as gw:
        own = httpx.post(gw.url + "/v1/streams", json={"max_tokens": 400, "sim": SLOW}, headers=AUTH).json()
        other = httpx.post(gw.url + "/v1/streams", json={"max_tokens": 400, "sim": SLOW}, headers=AUTH).json()
        token = own["token"]

        async def go():
            async with connect(gw.ws_url + own["ws"]) as sock:
                first = wsc.decode(await sock.recv())
                replies = []
                for message in (wsc.cancel(), wsc.start(max_tokens=3), wsc.resume(other["id"])):
                    await sock.send(message)
                    while True:  # skip the cancelled stream's events
                        event = wsc.decode(await sock.recv())
                        if event.type == "error" and event.seq == -1 or event.type == "error" and \
                                event.code == "cancelled":
                            break
                    replies.append(event)
                await asyncio.sleep(2.2)  # the token's time is up: its own stream is refused too
                await sock.send(wsc.resume(own["id"], 5))
                replies.append(wsc.decode(await sock.recv()))
                return first, replies

        first, replies = run(go())
        assert first.type == "meta" and first.stream_id == own["id"]
        assert replies[0].code == "cancelled"  # its own stream: yes
        assert [r.code for r in replies[1:]] == ["unauthorized"] * 3
        assert "expired" in replies[3].message
        # The other stream is untouched and no stream was started with the token.
        status = httpx.get(f"{gw.url}/v1/streams/{other['id']}", headers=AUTH).json()
        assert status["status"] == "running" and status["clients"] == 0
        time.sleep(0.3)
        log = gw.text()
        assert "WebSocket /v1/streams/" in log, log[-2000:]  # uvicorn logged the socket...
        assert token not in log and token.split(".")[1] not in log  # ...without the token
        assert "token=<redacted>" in log


def test_shared_store_with_keys_refuses_to_start_without_a_shared_token_secret():
    env = {**os.environ, "GATEWAY_STREAM_STORE": "redis", "GATEWAY_API_KEYS": f"edge={KEY}",
           "GATEWAY_TOKEN_SECRET": "", "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    r = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", str(free_port())], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "GATEWAY_TOKEN_SECRET is required" in r.stderr and "Traceback" not in r.stderr
    assert "GATEWAY_TOKEN_SECRET" in (ROOT / "compose.yaml").read_text()
