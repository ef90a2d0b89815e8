"""`python -m gateway lab`: every path starts, answers, and stops on Ctrl-C; the load-balanced path."""

from __future__ import annotations

import asyncio
import hashlib
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from gateway.client import Client
from loadtests.lab import PROXIES, Lab, render
from gateway.sources.simulated import expected_text

from . import wire
from .support import require, ROOT, run


def _lines(proc: subprocess.Popen) -> queue.Queue:
    out: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            out.put(line)
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


def _listening(url: str) -> bool:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_lab_starts_every_path_and_stops_on_ctrl_c():
    for tool in ("nginx", "haproxy", "redis-server"):
        require(tool)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "lab", "--port", "0", "--read-timeout", "5s"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        lines, table = _lines(proc), []
        deadline = time.monotonic() + 90
        while not table or "Ctrl-C" not in table[-1]:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "the lab exited:\n" + "".join(table)
            table.append(line)
        urls = dict(re.findall(r"^(\S+)\s+(https?://127\.0\.0\.1:\d+)/?\s", "".join(table), re.MULTILINE))
        assert set(urls) == {"gateway"} | {p.name for p in PROXIES}, "".join(table)
        for name, url in urls.items():
            r = httpx.get(url + "/healthz", timeout=5, verify=False)  # nginx-h2, nginx-tls: self-signed
            assert r.status_code == 200 and r.json()["status"] == "ok", name
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 0
        rest = []
        while (line := lines.get(timeout=5)) is not None:
            rest.append(line)
        assert "lab stopped" in "".join(rest)
        assert not [name for name, url in urls.items() if _listening(url)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("signals", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_stops_every_process_quietly(signals):
    """Ctrl-C stops the lab without a traceback and leaves no process; also when a second one comes while it
    stops (a user pressing twice, or `uv run` passing on the terminal's SIGINT: the lab printed a
    KeyboardInterrupt traceback from inside its stop, exit status -2)."""
    import psutil

    for tool in ("nginx", "redis-server"):
        require(tool)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "lab", "--port", "0", "--only", "nginx-tuned,nginx-lb"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    try:
        lines, seen = _lines(proc), []
        deadline = time.monotonic() + 90
        while not seen or "Ctrl-C" not in seen[-1]:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "the lab exited:\n" + "".join(seen + err)
            seen.append(line)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 6  # redis, the replicas and the gateway, nginx and its workers
        proc.send_signal(signal.SIGINT)
        if signals == 2:
            time.sleep(0.1)  # while the lab stops its proxies and gateways
            proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, "".join(err)
        assert "Traceback" not in "".join(err), "".join(err)
        assert "lab stopped" in "".join(iter(lambda: lines.get(timeout=5), None))
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not left, [(c.pid, c.name()) for c in left]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_every_configuration_renders_without_placeholders_left():
    for proxy in (p for p in PROXIES if p.tool != "relay"):  # relays (network profiles) have no file
        text = render(proxy.config, LISTEN="127.0.0.1:1", UPSTREAM="127.0.0.1:2", UPSTREAM_B="127.0.0.1:3",
                      READ_TIMEOUT="7s", RUN_DIR="/tmp/x")
        assert "127.0.0.1:1" in text and "127.0.0.1:2" in text and "7s" in text
    with pytest.raises(ValueError, match="UPSTREAM"):
        render("nginx/tuned.conf", LISTEN="127.0.0.1:1", READ_TIMEOUT="7s", RUN_DIR="/tmp/x")


def test_load_balanced_path_streams_on_both_replicas():
    require("nginx")
    with Lab(port=0, proxies=("nginx-lb",)) as lab:
        async def main():
            async with Client(lab.urls["nginx-lb"]) as client:
                return await asyncio.gather(*(
                    client.stream(t, f"lb{i}", max_tokens=20, sim={"ttft_ms": 50, "itl_ms": 10}, resume=False)
                    for i in range(2) for t in ("sse", "ndjson", "ws")))

        results = run(main())
        for i, r in enumerate(results):
            assert r.text == expected_text(f"lb{i // 3}", 0, 20) and r.done is not None
        created = [_created(lab.urls[name]) for name in ("replica-a", "replica-b")]
        assert sum(created) == 6 and min(created) >= 1, created


def _created(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("gateway_streams_created_total"):
            return float(line.split()[-1])
    raise AssertionError("no gateway_streams_created_total")


def test_resume_in_pieces_through_the_load_balancer():
    """Every piece is a new connection resuming after the last seq seen; nginx alternates the replicas,
    so every other resume lands on a replica that follows the stream through Redis (a copy that lags)."""
    require("nginx")
    require("redis-server")
    n, piece = 120, 5
    prompts = [f"pieces {i}" for i in range(3)]  # at once: more resumes racing the mirrors
    with Lab(port=0, proxies=("nginx-lb",)) as lab:
        assert lab.notes["nginx-lb"] == "(Redis store)"

        async def read_in_pieces(base: str, prompt: str):
            async with httpx.AsyncClient() as http:
                r = await http.post(base + "/v1/streams", json={"prompt": prompt, "max_tokens": n,
                                                                "sim": {"ttft_ms": 50, "itl_ms": 5}})
            sid, reads, after = r.json()["id"], [], -1
            while not reads or reads[-1].ended != "terminal":
                assert len(reads) < 2 * n, "no progress"
                # sse, ndjson, ws (a resume message on /v1/ws), then /v1/streams/{id}/ws?after=
                transport, attach = (("sse", False), ("ndjson", False), ("ws", False), ("ws", True))[len(reads) % 4]
                piece_read = await wire.read(base, transport, stream_id=sid, after=after, ws_attach=attach,
                                             until=wire.at_token(piece))
                assert piece_read.status in (200, 101), piece_read.problem
                reads.append(piece_read)
                after = wire.last_seq(reads, after)
            return reads

        async def main():
            return await asyncio.gather(*(read_in_pieces(lab.urls["nginx-lb"], p) for p in prompts))

        for prompt, reads in zip(prompts, run(main())):
            events = wire.joined(reads)
            wire.assert_exact(events, 0, n + 1)  # meta, n tokens, done: no gap, no duplicate
            text = wire.text_of(events)
            assert text == expected_text(prompt, 0, n)
            done = reads[-1].terminal
            assert done["sha256"] == hashlib.sha256(text.encode()).hexdigest() and done["tokens"] == n
            assert len(reads) >= n // piece


EVENTSOURCE = """([sid]) => {
  const ev = window.__ev = {seqs: [], reconnects: 0, errors: 0, done: null, opened: 0};
  const es = new EventSource(`/v1/streams/${sid}/sse`);
  es.onopen = () => ev.opened++;
  es.onerror = () => ev.errors++;
  const seq = (e) => ev.seqs.push(JSON.parse(e.data).seq);
  es.addEventListener("meta", seq);
  es.addEventListener("token", seq);
  es.addEventListener("reconnect", () => ev.reconnects++);
  es.addEventListener("done", (e) => { seq(e); ev.done = JSON.parse(e.data); es.close(); });
}"""


def test_eventsource_in_chromium_follows_a_drain_to_the_other_replica():
    """A real EventSource through the load balancer; its replica gets SIGTERM mid-stream. The drain answers
    with `retry:` and a `reconnect` event, EventSource reconnects by itself with Last-Event-ID, and the
    other replica carries on from Redis: every seq once, in order, to `done`."""
    for tool in ("nginx", "redis-server"):
        require(tool)
    chromium = require("chromium")
    from playwright.sync_api import sync_playwright

    env = {"GATEWAY_DRAIN_TIMEOUT_S": "3", "GATEWAY_SSE_RETRY_MS": "200"}
    with Lab(port=0, proxies=("nginx-lb",), gateway_env=env) as lab:
        lb = lab.urls["nginx-lb"]
        n = 300  # 6 s of tokens
        sid = httpx.post(lb + "/v1/streams", json={"prompt": "es", "max_tokens": n, "seed": 4,
                                                   "sim": {"ttft_ms": 50, "itl_ms": 20, "jitter": 0}}).json()["id"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                page.goto(lb + "/")
                page.evaluate(EVENTSOURCE, [sid])
                page.wait_for_function("() => window.__ev.seqs.length >= 20", timeout=30_000)
                serving = [c for c in lab._children if c.name.startswith("replica")
                           and 'gateway_connections{transport="sse_get"} 1.0' in httpx.get(c.url + "/metrics").text]
                assert len(serving) == 1, [c.name for c in serving]
                serving[0].proc.send_signal(signal.SIGTERM)
                page.wait_for_function("() => window.__ev.done !== null", timeout=60_000)
                ev = page.evaluate("() => window.__ev")
            finally:
                browser.close()
        assert ev["seqs"] == list(range(0, n + 2))  # meta, n tokens, done: nothing twice, nothing skipped
        assert ev["reconnects"] >= 1 and ev["opened"] >= 2  # told to go, and it went by itself
        assert ev["done"]["tokens"] == n
        assert ev["done"]["sha256"] == hashlib.sha256(expected_text("es", 4, n).encode()).hexdigest()
