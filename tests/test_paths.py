"""The lab's network paths with real nginx, HAProxy and hypercorn: HTTP/2 with TLS, gzip on the streams,
an idle timeout shorter than the time to first token, a proxy that refuses WebSocket and one that cuts it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest
import websockets

from gateway.client import Client, StreamResult
from gateway.sources.simulated import expected_text
from loadtests.lab import Lab, self_signed
from loadtests.procs import free_port, stop

from .support import require, require_module, ROOT, run, wait_http

pytestmark = pytest.mark.timeout(120)

N, SIM = 30, {"ttft_ms": 100, "itl_ms": 50, "jitter": 0}
IDLE = "2s"  # the paths' idle (read) timeout
SLOW_START = {"ttft_ms": 3500, "itl_ms": 30, "jitter": 0}  # a first token later than the idle timeout
PATHS = ("nginx-h2", "nginx-tls", "nginx-gzip", "nginx-strict", "haproxy-idle", "haproxy-ws-cut")
# Headers HTTP/2 forbids (RFC 9113 8.2.2) and a length a stream cannot know.
FORBIDDEN = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "content-length"}



@pytest.fixture(scope="module")
def lab():
    require("nginx")
    require("haproxy")
    require("openssl")
    with Lab(port=0, read_timeout=IDLE, gateway_env={"GATEWAY_HEARTBEAT_S": "0.5"}, proxies=PATHS) as lab:
        yield lab


@pytest.fixture(scope="module")
def silent_lab():
    """The idle load balancer in front of a gateway that sends no heartbeats."""
    require("haproxy")
    with Lab(port=0, read_timeout=IDLE, gateway_env={"GATEWAY_HEARTBEAT_S": "3600"},
             proxies=("haproxy-idle",)) as lab:
        yield lab


def _client(url: str, http2: bool = False) -> Client:
    http = httpx.AsyncClient(http2=http2, verify=False, timeout=httpx.Timeout(10.0, read=30.0))
    return Client(url, http=http)


async def _stream(url: str, transport: str, prompt: str = "path", http2: bool = False, resume: bool = False,
                  **kw) -> StreamResult:
    async with _client(url, http2) as client:
        return await client.stream(transport, prompt, resume=resume, **kw)


def _bursts(r: StreamResult) -> int:
    times = r.token_arrivals
    return 1 + sum(1 for a, b in zip(times, times[1:]) if b - a > SIM["itl_ms"] / 1000 / 4)


async def _head(url: str, path: str, http2: bool, **kw) -> httpx.Response:
    """The response head of a stream request (the body is read to the end and dropped)."""
    async with httpx.AsyncClient(http2=http2, verify=False) as http:
        async with http.stream("POST", url + path, **kw) as response:
            async for _ in response.aiter_raw():
                pass
            return response


# -- HTTP/2 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["sse", "ndjson"])
def test_streams_arrive_token_by_token_over_http2_through_nginx(lab, transport):
    url = lab.urls["nginx-h2"]
    head = run(_head(url, f"/v1/{transport}", True, json={"prompt": "h2", "max_tokens": 3, "sim": SIM}))
    assert head.http_version == "HTTP/2"
    assert not FORBIDDEN & set(head.headers), head.headers
    r = run(_stream(url, transport, http2=True, max_tokens=N, sim=SIM))
    assert r.text == expected_text("path", 0, N) and r.done is not None
    assert _bursts(r) >= N / 2


def test_tls_path_without_http2_speaks_http11(lab):
    head = run(_head(lab.urls["nginx-tls"], "/v1/sse", True, json={"prompt": "h1", "max_tokens": 2, "sim": SIM}))
    assert head.http_version == "HTTP/1.1"  # the client offered h2; this path did not take it


async def _asgi_heads() -> dict[str, httpx.Headers]:
    from gateway.app import create_app
    from gateway.settings import Settings

    app = create_app(Settings())  # not get_settings(): its cache may hold another test's settings
    body = {"prompt": "h", "max_tokens": 2, "sim": {"ttft_ms": 0, "itl_ms": 0}}
    heads = {}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as http:
            for path in ("/v1/sse", "/v1/ndjson"):
                heads[path] = (await http.post(path, json=body)).headers
            created = await http.post("/v1/streams", json=body)
            assert created.status_code == 201, created.text
            stream_id = created.json()["id"]
            for kind in ("sse", "ndjson"):
                heads[f"GET {kind}"] = (await http.get(f"/v1/streams/{stream_id}/{kind}")).headers
    return heads


def test_gateway_stream_responses_carry_no_http2_forbidden_header(monkeypatch):
    """What the application itself sends (the ASGI response start), before any server adds framing."""
    import os

    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:  # the in-process app: default settings
        monkeypatch.delenv(name)
    for path, headers in run(_asgi_heads()).items():
        assert not FORBIDDEN & set(headers), (path, headers)
        assert headers["content-type"].split(";")[0] in ("text/event-stream", "application/x-ndjson")


def test_gateway_streams_over_http2_from_hypercorn(tmp_path):
    """A server whose HTTP/2 stack (h2) refuses connection-specific headers serves the gateway's streams."""
    require_module("hypercorn")
    require("openssl")
    self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "--certfile", str(tmp_path / "cert.pem"),
         "--keyfile", str(tmp_path / "key.pem"), "gateway.app:create_app()"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"https://127.0.0.1:{port}"
        wait_http_tls(url + "/healthz", proc)
        for transport in ("sse", "ndjson"):
            head = run(_head(url, f"/v1/{transport}", True, json={"prompt": "h2", "max_tokens": 3, "sim": SIM}))
            assert head.http_version == "HTTP/2"
            assert not FORBIDDEN & set(head.headers), head.headers
            r = run(_stream(url, transport, http2=True, max_tokens=N, sim=SIM))
            assert r.text == expected_text("path", 0, N) and r.done is not None, transport
    finally:
        stop(proc)


def wait_http_tls(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, verify=False, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


# -- gzip ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["sse", "ndjson"])
def test_gzip_on_the_streams_still_arrives_token_by_token(lab, transport):
    url = lab.urls["nginx-gzip"]
    head = run(_head(url, f"/v1/{transport}", False, json={"prompt": "gz", "max_tokens": 3, "sim": SIM},
                     headers={"Accept-Encoding": "gzip"}))
    assert head.headers.get("content-encoding") == "gzip"  # the path does compress this stream
    r = run(_stream(url, transport, max_tokens=N, sim=SIM))
    assert r.text == expected_text("path", 0, N) and r.done is not None
    assert _bursts(r) >= N / 2, f"{N} tokens in {_bursts(r)} bursts: gzip held them"


def test_websocket_through_the_gzip_path_streams(lab):
    r = run(_stream(lab.urls["nginx-gzip"], "ws", max_tokens=N, sim=SIM))
    assert r.text == expected_text("path", 0, N) and _bursts(r) >= N / 2


# -- an idle timeout shorter than the time to first token ----------------------------------------

@pytest.mark.parametrize("transport", ["sse", "ndjson", "ws"])
def test_heartbeats_before_the_first_token_keep_a_slow_start_alive(lab, transport):
    r = run(_stream(lab.urls["haproxy-idle"], transport, "slow", max_tokens=5, sim=SLOW_START))
    assert r.text == expected_text("slow", 0, 5) and r.done is not None
    assert r.ttft > 3.0
    assert r.heartbeats >= 4  # every 0.5 s of the 3.5 s wait


def test_without_heartbeats_the_idle_timeout_cuts_every_transport_before_its_first_token(silent_lab):
    async def main():
        return await asyncio.gather(*(_stream(silent_lab.urls["haproxy-idle"], t, "slow", max_tokens=5,
                                              sim=SLOW_START) for t in ("sse", "ndjson", "ws")))

    for transport, r in zip(("sse", "ndjson", "ws"), run(main())):
        assert r.cut and not r.tokens, transport


# -- strict proxies ------------------------------------------------------------------------------

def test_strict_proxy_refuses_the_websocket_upgrade_and_streams_the_rest(lab):
    url = lab.urls["nginx-strict"]
    with pytest.raises(websockets.InvalidStatus) as caught:
        run(_stream(url, "ws", max_tokens=5, sim=SIM))
    assert caught.value.response.status_code == 403
    for transport in ("sse", "ndjson"):
        r = run(_stream(url, transport, max_tokens=N, sim=SIM))
        assert r.text == expected_text("path", 0, N) and _bursts(r) >= N / 2, transport


def test_ws_cut_path_opens_the_websocket_then_closes_it_before_the_first_token(lab):
    url = lab.urls["haproxy-ws-cut"]
    r = run(_stream(url, "ws", max_tokens=5, sim=SIM))
    assert r.cut and not r.tokens  # the upgrade passed (no exception), then nothing came
    r = run(_stream(url, "sse", max_tokens=5, sim=SIM))
    assert r.text == expected_text("path", 0, 5)


# -- fallback: WebSocket -> SSE over fetch -> NDJSON ---------------------------------------------

# A one-shot request: through the cut its generation goes on while the client moves (disconnect policy).
@pytest.mark.parametrize("path", ["nginx-strict", "haproxy-ws-cut"])
def test_auto_falls_back_to_sse_and_loses_nothing(lab, path):
    r = run(_stream(lab.urls[path], "auto", "fall", resume=True, max_tokens=N, sim=SIM))
    assert r.text == expected_text("fall", 0, N) and r.done is not None
    assert (r.gaps, r.duplicates) == (0, 0)
    assert r.transport == "sse_post"
    assert [(a, b) for a, b, _ in r.fallbacks] == [("ws", "sse_post")]
    assert r.fallbacks[0][2] - r.started < 2.0  # refused at once, or two connections cut within ms


def test_auto_stays_on_websocket_where_the_path_carries_it(lab):
    r = run(_stream(lab.urls["nginx-gzip"], "auto", "fall", max_tokens=N, sim=SIM))
    assert r.text == expected_text("fall", 0, N)
    assert (r.transport, r.fallbacks) == ("ws", [])


def test_locust_auto_users_fall_back_and_count_it(lab, tmp_path):
    from .test_loadtests import count, run_locust

    common = ("--max-tokens", "20", "--ttft-ms", "100", "--itl-ms", "20", "AutoUser")
    strict = run_locust(tmp_path / "strict", lab.urls["gateway"], "--target", lab.urls["nginx-strict"], *common,
                        users=4, seconds=5)
    cut = run_locust(tmp_path / "cut", lab.urls["gateway"], "--target", lab.urls["haproxy-ws-cut"], *common,
                     users=4, seconds=5)
    streams = count(strict["stats"], "auto", "stream")
    assert streams >= 4 and not strict["failures"], strict["failures"]
    assert count(strict["stats"], "auto", "fallback ws->sse_post") == streams  # every stream, once
    # Through the cut the upgrade passes: each stream falls back after its WebSocket is cut twice.
    streams = count(cut["stats"], "auto", "stream")
    assert streams >= 4 and not cut["failures"], cut["failures"]
    assert count(cut["stats"], "auto", "fallback ws->sse_post") == streams
