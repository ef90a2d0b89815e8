"""Real nginx and HAProxy in front of real gateways (the lab's own configurations, lab/).

Timing is asserted with ratios against the stream's own schedule, not with
tight absolute times: the first token of a held stream arrives near the end,
the first token of a streamed one near the start.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import websockets

from gateway.client import Client, StreamResult
from gateway.codecs import ndjson
from loadtests.lab import Lab
from loadtests.probe import report_table
from gateway.sources.simulated import expected_text

from .support import require, ROOT, run

N, TTFT_MS, ITL_MS = 30, 100, 50
SIM = {"ttft_ms": TTFT_MS, "itl_ms": ITL_MS, "jitter": 0}
# The proxies cut 2 s of silence; a stall of 3.5 s crosses that. With heartbeats every 0.5 s it never shows.
READ_TIMEOUT = "2s"
STALL = {"ttft_ms": 50, "itl_ms": 20, "jitter": 0, "stall_after": 3, "stall_ms": 3500}
HEARTBEATS = {"GATEWAY_HEARTBEAT_S": "0.5"}
NO_HEARTBEATS = {"GATEWAY_HEARTBEAT_S": "3600"}



@pytest.fixture(scope="module")
def lab():
    require("nginx")
    require("haproxy")
    with Lab(port=0, read_timeout=READ_TIMEOUT, gateway_env=HEARTBEATS,
             proxies=("nginx-defaults", "nginx-accel", "nginx-tuned", "haproxy", "haproxy-tuned")) as lab:
        yield lab


@pytest.fixture(scope="module")
def silent_lab():
    """The same tuned proxies in front of a gateway that sends no heartbeats."""
    require("nginx")
    require("haproxy")
    with Lab(port=0, read_timeout=READ_TIMEOUT, gateway_env=NO_HEARTBEATS,
             proxies=("nginx-tuned", "haproxy-tuned")) as lab:
        yield lab


async def _stream(url: str, transport: str, prompt: str = "proxy", **kw) -> StreamResult:
    async with Client(url) as client:
        return await client.stream(transport, prompt, resume=False, **kw)


def _shape(r: StreamResult) -> tuple[float, int]:
    """(first token's arrival / last token's arrival, bursts of tokens arriving together)."""
    times = [t - r.started for t in r.token_arrivals]
    bursts = 1 + sum(1 for a, b in zip(times, times[1:]) if b - a > ITL_MS / 1000 / 4)
    return times[0] / times[-1], bursts


@pytest.mark.parametrize("transport", ["sse", "ndjson"])
def test_default_nginx_holds_the_stream_without_the_gateway_header(lab, transport):
    r = run(_stream(lab.urls["nginx-defaults"], transport, max_tokens=N, sim=SIM))
    assert r.text == expected_text("proxy", 0, N) and r.done is not None
    first, bursts = _shape(r)
    assert first > 0.8, f"first token at {first:.0%} of the stream: not held"
    assert bursts <= 3


@pytest.mark.parametrize("path,transport", [
    ("gateway", "sse"), ("gateway", "ndjson"), ("gateway", "ws"),
    ("nginx-accel", "sse"), ("nginx-accel", "ndjson"),
    ("nginx-tuned", "sse"), ("nginx-tuned", "ndjson"), ("nginx-tuned", "ws"),
    ("haproxy-tuned", "sse"), ("haproxy-tuned", "ndjson"), ("haproxy-tuned", "ws"),
])
def test_header_or_tuned_proxy_keeps_tokens_spaced(lab, path, transport):
    r = run(_stream(lab.urls[path], transport, max_tokens=N, sim=SIM))
    assert r.text == expected_text("proxy", 0, N) and r.done is not None
    first, bursts = _shape(r)
    assert first < 0.3, f"first token at {first:.0%} of the stream"
    assert bursts >= N / 2, f"{N} tokens in {bursts} bursts"


@pytest.mark.parametrize("transport", ["sse", "ndjson"])
def test_haproxy_defaults_merge_small_writes(lab, transport):
    """Without option http-no-delay HAProxy lets the kernel merge writes: tokens come in bursts."""
    r = run(_stream(lab.urls["haproxy"], transport, max_tokens=N, sim=SIM))
    assert r.text == expected_text("proxy", 0, N)
    _, bursts = _shape(r)
    assert bursts < N / 2, f"{N} tokens in {bursts} bursts: spaced"


def test_haproxy_defaults_leave_websocket_alone(lab):
    r = run(_stream(lab.urls["haproxy"], "ws", max_tokens=N, sim=SIM))
    assert r.text == expected_text("proxy", 0, N)
    assert _shape(r)[1] >= N / 2


@pytest.mark.parametrize("path", ["nginx-defaults", "nginx-accel"])
def test_websocket_fails_through_nginx_without_upgrade_headers(lab, path):
    with pytest.raises(websockets.InvalidStatus) as caught:
        run(_stream(lab.urls[path], "ws", max_tokens=5, sim=SIM))
    # nginx sent a plain GET (no Upgrade header): the gateway has no such HTTP route.
    assert caught.value.response.status_code == 404


def test_websocket_streams_through_nginx_with_upgrade_headers(lab):
    r = run(_stream(lab.urls["nginx-tuned"], "ws", max_tokens=N, sim=SIM))
    assert r.text == expected_text("proxy", 0, N) and r.done is not None


async def _stalls(lab: Lab) -> dict[tuple[str, str], StreamResult]:
    keys = [(p, t) for p in ("nginx-tuned", "haproxy-tuned") for t in ("sse", "ndjson", "ws")]
    results = await asyncio.gather(*(_stream(lab.urls[p], t, "stall", max_tokens=6, sim=STALL) for p, t in keys))
    return dict(zip(keys, results))


def test_stall_past_the_read_timeout_kills_a_stream_without_heartbeats(silent_lab):
    results = run(_stalls(silent_lab))
    for (path, transport), r in results.items():
        if path.startswith("haproxy") and transport == "ws":
            # After the upgrade HAProxy applies `timeout tunnel` (1h), not `timeout server`.
            assert r.done is not None, (path, transport)
            continue
        assert r.cut, f"{path} {transport}: survived a 3.5 s stall with a 2 s read timeout"
        assert [t.seq for t in r.tokens] == [1, 2, 3], (path, transport)
        assert r.heartbeats == 0


def test_heartbeats_carry_a_stream_across_the_stall(lab):
    results = run(_stalls(lab))
    for (path, transport), r in results.items():
        assert r.done is not None, f"{path} {transport} was cut"
        assert r.text == expected_text("stall", 0, 6)
        assert r.heartbeats >= 3, (path, transport, r.heartbeats)


async def _ndjson(url: str, encoding: str) -> tuple[httpx.Headers, list[float], int]:
    """Token arrival times (relative to the request) and response headers, read with the NDJSON codec."""
    decoder = ndjson.Decoder()
    times: list[float] = []
    tokens = 0
    async with httpx.AsyncClient(timeout=30) as http:
        start = time.perf_counter()
        body = {"prompt": "gzip", "max_tokens": N, "sim": SIM}
        async with http.stream("POST", url + "/v1/ndjson", json=body, headers={"accept-encoding": encoding}) as r:
            async for chunk in r.aiter_bytes():
                for event in decoder.feed(chunk):
                    if event.type == "token":
                        tokens += 1
                        times.append(time.perf_counter() - start)
            return r.headers, times, tokens


def test_gzip_on_the_proxy_holds_ndjson_unless_the_stream_is_excluded(lab):
    async def main():
        return await asyncio.gather(_ndjson(lab.urls["nginx-defaults"], "gzip"),
                                    _ndjson(lab.urls["nginx-defaults"], "identity"),
                                    _ndjson(lab.urls["nginx-tuned"], "gzip"))

    (gz_headers, gz, n1), (id_headers, plain, n2), (tuned_headers, tuned, n3) = run(main())
    assert n1 == n2 == n3 == N
    # By the spread of arrivals, which a loaded box does not shrink: streamed tokens spread over about the
    # generation (29 gaps of 50 ms), held ones arrive together at the end.
    span = (N - 1) * ITL_MS / 1000
    # application/x-ndjson is in gzip_types: compressed, and held until the end of the stream.
    assert gz_headers.get("content-encoding") == "gzip"
    assert gz[-1] - gz[0] < 0.2 * span
    # The same nginx, buffering on, but a client that takes no gzip: on time. gzip is what held it.
    assert "content-encoding" not in id_headers
    assert plain[-1] - plain[0] > 0.7 * span
    # Tuned nginx keeps gzip on for other types, but not for the streams.
    assert "content-encoding" not in tuned_headers
    assert tuned[-1] - tuned[0] > 0.7 * span


def _probe(url: str):
    return asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "probe", url, "--json", "--idle", "3", "--tokens", "20",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)


def test_probe_flags_the_buffering_path_and_passes_the_tuned_one(lab):
    async def main():
        procs = [await _probe(lab.urls["nginx-defaults"]), await _probe(lab.urls["nginx-tuned"])]
        outs = await asyncio.gather(*(asyncio.wait_for(p.communicate(), 60) for p in procs))
        return [(p.returncode, json.loads(out)) for p, (out, _) in zip(procs, outs)]

    (bad_rc, bad), (good_rc, good) = run(main())

    assert bad_rc == 1 and bad["ok"] is False
    for t in ("sse", "ndjson"):
        r = bad["transports"][t]
        assert r["reachable"] and r["error"] is None
        assert r["arrival"]["spaced"] is False and r["arrival"]["held_to_end"] is True
        assert r["arrival"]["buffer_bytes"] > 500  # at least the whole stream
        assert r["ttft_s"] / (0.2 + 19 * 0.05) > 0.7  # the first token arrives near the scheduled end
        assert r["resume"]["ok"] is True
    ws = bad["transports"]["ws"]
    assert ws["reachable"] is False and "HTTP 404" in ws["error"] and ws["ok"] is False
    table = report_table(bad)
    assert "BUNCHED: held to the end" in table and "WebSocket upgrade refused" in table
    assert "proxy_buffering off" in table and "Upgrade" in table

    assert good_rc == 0 and good["ok"] is True, report_table(good)
    for t in ("sse", "ndjson", "ws"):
        r = good["transports"][t]
        assert r["reachable"] and r["arrival"]["spaced"] and r["arrival"]["buffer_bytes"] is None
        # Not held: a held stream's first token comes after the whole generation (0.95 s here); a loaded
        # box adds a few hundred ms to any path, so the bound is the generation itself, not a share of it.
        assert r["ttft_overhead_s"] < 19 * 0.05
        assert r["idle"] == {**r["idle"], "gap_s": 3.0, "survived": True} and r["idle"]["heartbeats"] >= 2
        assert r["resume"]["ok"] is True


def test_probe_reports_an_idle_cut_with_the_path_timeout(silent_lab):
    out = subprocess.run([sys.executable, "-m", "gateway", "probe", silent_lab.urls["nginx-tuned"], "--json",
                          "--idle", "3", "--tokens", "10"], cwd=ROOT, capture_output=True, timeout=60)
    report = json.loads(out.stdout)
    assert out.returncode == 1
    for t in ("sse", "ndjson", "ws"):
        idle = report["transports"][t]["idle"]
        assert idle["survived"] is False and idle["heartbeats"] == 0
        assert 1.0 < idle["cut_after_silence_s"] < 3.0  # the proxy's 2 s read timeout


def test_the_browser_page_through_default_and_tuned_nginx(lab):
    """What a person sees: the demo page's four clients, opened through each proxy."""
    chromium = require("chromium")
    from playwright.sync_api import sync_playwright

    n, itl_ms, ttft_ms = 60, 40, 200
    scheduled_ms = ttft_ms + (n - 1) * itl_ms  # when the last token leaves the gateway
    states = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            for path in ("nginx-defaults", "nginx-tuned"):
                page = browser.new_page(viewport={"width": 1400, "height": 620})
                page.goto(lab.urls[path] + "/")
                page.fill("#max_tokens", str(n))
                page.fill("#ttft_ms", str(ttft_ms))
                page.fill("#itl_ms", str(itl_ms))
                page.click("#start")
                if os.environ.get("UPDATE_SCREENSHOT") and path == "nginx-defaults":
                    page.wait_for_timeout(scheduled_ms * 0.6)  # mid-stream
                    page.screenshot(path=str(ROOT / "docs" / "page-through-nginx-defaults.png"))
                page.wait_for_function("() => demo.settled()", timeout=60_000)
                states[path] = {s["kind"]: s for s in page.evaluate("() => demo.state()")}
                states[path]["shown"] = {
                    "path": page.locator("#path").inner_text(),
                    "flags": {k: page.locator(f'.panel[data-kind="{k}"] .flags').inner_text()
                              for k in ("sse_get", "sse_post", "ndjson", "ws")},
                    "rate": page.locator('.panel[data-kind="sse_post"] .rate').inner_text()}
                page.close()
        finally:
            browser.close()

    held, tuned = states["nginx-defaults"], states["nginx-tuned"]
    # The page explains itself: which path and HTTP version, and what the path did, per panel.
    shown, shown_tuned = held.pop("shown"), tuned.pop("shown")
    assert shown["path"] == f"path: {lab.urls['nginx-defaults']} over http/1.1"
    for kind in ("sse_get", "sse_post", "ndjson"):
        assert "held until the end" in held[kind]["flags"][0], (kind, held[kind]["flags"])
        assert "held until the end" in shown["flags"][kind]
    assert any("upgrade refused" in f for f in held["ws"]["flags"]), held["ws"]["flags"]
    assert shown["rate"] == "– (one burst)"  # not 100,000 tokens/s for an answer that came in one piece
    assert all(not s["flags"] for s in tuned.values()) and not any(shown_tuned["flags"].values())
    for kind in ("sse_get", "sse_post", "ndjson"):
        # Every HTTP client got the whole answer, but its first token only came with the last.
        assert held[kind]["tokens"] == n and held[kind]["sha"] == held[kind]["doneSha"], kind
        assert held[kind]["ttftMs"] > 0.8 * scheduled_ms, (kind, held[kind]["ttftMs"])
    # The WebSocket upgrade is refused there: the panel says so, and falls back to fetch (gateway/fallback.py).
    ws = held["ws"]
    assert ws["fallbacks"] and ws["fallbacks"][0]["from"] == "ws" and ws["transport"] != "ws"
    for kind, s in tuned.items():
        assert s["tokens"] == n and s["sha"] == s["doneSha"], kind
        assert s["ttftMs"] < 0.3 * scheduled_ms, (kind, s["ttftMs"])
