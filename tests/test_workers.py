"""`serve --workers 2` on one port with a real redis-server: any worker serves any stream, per-worker drain,
metrics from every worker in one scrape, and the refusal without the Redis store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest


from gateway.sources.simulated import expected_text

from . import wire
from .support import ROOT, Gateway, free_port

SIM = {"ttft_ms": 20, "itl_ms": 20, "jitter": 0}
ENV = {
    "GATEWAY_STREAM_STORE": "redis",
    "GATEWAY_WORKERS": "2",
    "GATEWAY_HEARTBEAT_S": "0.3",
    "GATEWAY_DRAIN_TIMEOUT_S": "15",
    "GATEWAY_SSE_RETRY_MS": "100",
}


@pytest.fixture(scope="module")
def two(redis):
    """One supervisor with two workers for the module (the drain test leaves two workers again)."""
    gw = Gateway({**ENV, "GATEWAY_REDIS_URL": redis.url})
    children = []
    try:
        workers = wait_workers(gw, 2)
        yield gw, workers
    finally:
        children = psutil.Process(gw.proc.pid).children() if gw.proc.poll() is None else []
        gw.stop()
    # SIGTERM to the supervisor stops every worker.
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def wait_workers(gw: Gateway, n: int, exclude: frozenset[int] = frozenset()) -> dict[int, int]:
    """{pid: private port} of the supervisor's `n` live workers (none in `exclude`), once each listens."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = {}
        for child in psutil.Process(gw.proc.pid).children():
            if child.pid in exclude:
                continue
            try:
                ports = [c.laddr.port for c in child.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:  # a drained worker that just exited
                continue
            private = [p for p in ports if p != gw.port]
            if gw.port in ports and private:
                out[child.pid] = private[0]
        if len(out) == n:
            return out
        time.sleep(0.1)
    raise AssertionError(f"{n} workers did not come up")


def served_by(url: str, tries: int = 200) -> set[int]:
    """The pids that answered /healthz over `tries` new connections to `url` (stops once two answered)."""
    pids = set()
    for _ in range(tries):
        pids.add(httpx.get(url + "/healthz", timeout=10).json()["pid"])
        if len(pids) == 2:
            break
    return pids


def create(url: str, prompt: str, **fields) -> tuple[str, int]:
    r = httpx.post(f"{url}/v1/streams", json={"prompt": prompt, "sim": SIM, **fields}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["id"], int(r.headers["x-gateway-worker"])


def test_workers_refuse_the_memory_store():
    port = free_port()
    env = {**os.environ, "GATEWAY_STREAM_STORE": "memory"}
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--workers 2 needs the Redis store" in done.stderr


def test_one_port_reaches_both_workers_and_any_worker_resumes_any_stream(two):
    gw, workers = two
    assert served_by(gw.url) == set(workers)
    text = expected_text("across", 5, 80)
    sid, creator = create(gw.url, "across", max_tokens=80, seed=5)
    assert creator in workers
    other = next(p for p in workers if p != creator)

    async def go():
        # Through the other worker's own port (deterministic), then the rest through the shared one.
        first = await wire.read(f"http://127.0.0.1:{workers[other]}", "sse", stream_id=sid, until=wire.at_seq(30))
        rest = await wire.read(gw.url, "ndjson", stream_id=sid, after=first.seqs[-1])
        return first, rest

    first, rest = asyncio.run(go())
    assert int(first.headers["x-gateway-worker"]) == other
    assert first.ended == "stopped" and rest.ended == "terminal"
    wire.assert_exact(first.events + rest.events, 0, 81)
    assert first.text + rest.text == text


def test_one_scrape_shows_every_worker(two):
    gw, workers = two

    def created() -> float:
        samples = gw.metrics()
        assert samples['gateway_worker_up{worker="0"}'] == 1 and samples['gateway_worker_up{worker="1"}'] == 1
        return sum(samples[f'gateway_streams_created_total{{worker="{i}"}}'] for i in (0, 1))

    before = created()
    for i in range(3):
        create(gw.url, f"count {i}", max_tokens=2)
    assert created() - before == 3
    # A worker's own figures alone, as its sibling reads them.
    own = httpx.get(gw.url + "/metrics", params={"worker": "self"}).text
    assert "gateway_worker_up" not in own and "gateway_streams_created_total " in own


def test_sigterm_drains_one_worker_its_clients_resume_on_the_other(two):
    gw, workers = two
    text = expected_text("drain one", 6, 300)
    sid, creator = create(gw.url, "drain one", max_tokens=300, seed=6)
    other = next(p for p in workers if p != creator)

    async def go():
        # Attached to the generating worker, which gets SIGTERM at seq 20: it keeps generating into
        # Redis, tells its client to reconnect and stops listening, so the client lands on the other.
        def term(event: dict) -> None:
            if event.get("seq") == 20:
                os.kill(creator, signal.SIGTERM)

        first = await wire.read(f"http://127.0.0.1:{workers[creator]}", "sse", stream_id=sid, on_event=term)
        # While it drains (generating for seconds yet), no new connection on the port reaches it.
        during = [await asyncio.to_thread(lambda: httpx.get(gw.url + "/healthz", timeout=10).json())
                  for _ in range(20)]
        rest = await wire.follow(gw.url, "sse", sid, after=wire.last_seq([first]))
        return first, during, rest

    first, during, rest = asyncio.run(go())
    # (the other, or the drained worker's successor once it has exited: never the draining one)
    assert creator not in {h["pid"] for h in during} and all(h["status"] == "ok" for h in during), during
    assert first.ended == "reconnect", first.events[-3:]
    assert {int(r.headers["x-gateway-worker"]) for r in rest if r.headers} == {other}
    events = first.events + wire.joined(rest)
    wire.assert_exact(events, 0, 301)
    assert wire.text_of(events) == text and rest[-1].terminal["type"] == "done"
    # The supervisor restarts the drained worker: two workers again, one of them new.
    again = wait_workers(gw, 2)
    assert other in again and creator not in again
