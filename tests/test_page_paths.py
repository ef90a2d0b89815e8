"""The page in real Chromium on hard paths: the WebSocket panel falls back through a strict proxy and a
WebSocket-cutting one; fetch and WebSocket panels notice a silent (half-open) connection and resume."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time

import pytest

from loadtests.lab import Lab

from .support import ROOT, require, wait_http

pytestmark = pytest.mark.timeout(180)



@pytest.fixture(scope="module")
def lab():
    require("nginx")
    require("haproxy")
    with Lab(port=0, read_timeout="10s", gateway_env={"GATEWAY_HEARTBEAT_S": "0.5"},
             proxies=("nginx-strict", "haproxy-ws-cut")) as lab:
        yield lab


def _start(page, url: str, max_tokens: int, itl_ms: int, query: str = "") -> None:
    page.goto(f"{url}/{query}")
    page.fill("#max_tokens", str(max_tokens))
    page.fill("#ttft_ms", "100")
    page.fill("#itl_ms", str(itl_ms))
    page.click("#start")


def _state(page) -> dict[str, dict]:
    return {s["kind"]: s for s in page.evaluate("demo.state()")}


@pytest.mark.parametrize("path", ["nginx-strict", "haproxy-ws-cut"])
def test_websocket_panel_falls_back_to_fetch_sse_and_ends_with_the_same_text(lab, browser, path):
    page = browser.new_page()
    try:
        _start(page, lab.urls[path], 60, 20)
        page.wait_for_function("() => demo.settled()", timeout=60_000)
        state = _state(page)
    finally:
        page.close()
    ws = state["ws"]
    assert ws["transport"] == "sse_post", ws
    assert [(f["from"], f["to"]) for f in ws["fallbacks"]] == [("ws", "sse_post")]
    assert ws["fallbacks"][0]["ms"] < 5000
    assert ws["outcome"]["status"] == "done" and (ws["gaps"], ws["duplicates"]) == (0, 0)
    assert ws["sha"] == ws["doneSha"] == hashlib.sha256(ws["text"].encode()).hexdigest()
    assert all(s["text"] == ws["text"] for s in state.values())
    assert all(not s["fallbacks"] for k, s in state.items() if k != "ws")


def test_fetch_and_websocket_panels_notice_a_silent_connection_and_resume(lab, browser):
    """A relay (lab/links.py) goes silent mid-stream, no FIN or RST: the panels with a read timeout (2 s here)
    cut and resume within it; EventSource has none and its heartbeats are comments it hides, so it waits."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "lab.links", "good-4g", "--listen", "127.0.0.1:0", "--upstream",
         lab.urls["gateway"].split("//")[1]], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = relay.stdout.readline().split(" on ")[1].split(" ")[0]
        wait_http(url + "/healthz", relay)
        page = browser.new_page()
        try:
            _start(page, url, 400, 50, "?read_timeout_s=2")
            page.wait_for_function("() => demo.state().every((p) => p.tokens > 5)", timeout=30_000)
            before = _state(page)
            relay.send_signal(signal.SIGUSR1)  # every open connection goes silent
            broke = time.monotonic()
            page.wait_for_function(
                "() => demo.state().filter((p) => p.kind !== 'sse_get').every((p) => p.reconnects > 0)",
                timeout=15_000)
            noticed = time.monotonic() - broke
            page.wait_for_function("() => demo.state().filter((p) => p.kind !== 'sse_get')"
                                   ".every((p) => p.ended)", timeout=60_000)
            after = _state(page)
            page.click("#cancel")
        finally:
            page.close()
    finally:
        relay.terminate()
        relay.wait(10)
    assert 1.5 < noticed < 10, noticed  # the 2 s read timeout, not the 45 s default nor never
    for kind in ("sse_post", "ndjson", "ws"):
        s = after[kind]
        assert s["outcome"]["status"] == "done" and s["sha"] == s["doneSha"], (kind, s["outcome"])
        assert s["reconnects"] >= 1 and (s["gaps"], s["duplicates"]) == (0, 0)
        assert any("no byte for 2 s" in c for c in s["cuts"]), s["cuts"]
    # EventSource: still on its silent connection, nothing noticed.
    assert after["sse_get"]["reconnects"] == before["sse_get"]["reconnects"]
    assert not after["sse_get"]["ended"]
