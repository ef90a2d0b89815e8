"""Redis faults against real processes: a restart that loses the data, maxmemory with noeviction, and
STREAMS_PER_KEY across replicas sharing one Redis (issue 18)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gateway.client import Client, StreamResult
from loadtests.procs import free_port, stop
from gateway.sources.simulated import expected_text

from .support import Gateway, RedisServer, ROOT, run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

IDLE_S = 2.0
FAST = {
    "GATEWAY_STREAM_STORE": "redis",
    "GATEWAY_WORKERS": "1",  # one process per replica (the Redis store's default is one per core)
    "GATEWAY_HEARTBEAT_S": "0.3",
    "GATEWAY_IDLE_TIMEOUT_S": str(IDLE_S),
    "GATEWAY_DETACH_GRACE_S": "3.0",
    "GATEWAY_TTL_S": "30",
    "GATEWAY_REDIS_OUTAGE_S": "1.0",
}
SLOW = {"ttft_ms": 20, "itl_ms": 40, "jitter": 0}
KEY = "secret-owner-0123456789"


def start(redis: RedisServer, n: int, **env: str) -> list[Gateway]:
    full = {**FAST, "GATEWAY_REDIS_URL": redis.url, **env}
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: Gateway(full), range(n)))


def gauge(gw: Gateway, name: str) -> float:
    return gw.metrics()[name]


async def read_some(client: Client, transport: str, sid: str, result: StreamResult, started: asyncio.Event,
                    n: int = 3) -> StreamResult:
    """Read `sid` to its end (no resume), setting `started` once n tokens came."""
    async for _event, _ in client.events(transport, stream_id=sid, resume=False, result=result):
        if len(result.tokens) >= n:
            started.set()
    started.set()
    return result


def test_redis_restart_without_data_ends_every_reader_with_store_lost():
    """Readers of the owner and of the replica that mirrors the stream all end with `store_lost`,
    keep their partial text, and both replicas then report the same status."""
    redis = RedisServer()
    a, b = start(redis, 2)
    try:
        async def go():
            async with Client(a.url) as ca, Client(b.url) as cb:
                ids = [(await ca.create(f"lost{i}", max_tokens=3000, seed=i, sim=SLOW))["id"] for i in range(4)]
                readers = []
                for i, sid in enumerate(ids):
                    for client, transport in ((ca, "sse"), (cb, "ndjson"), (cb, "ws")):
                        result, started = StreamResult(), asyncio.Event()
                        task = asyncio.create_task(read_some(client, transport, sid, result, started))
                        readers.append((i, sid, client is cb, task, started))
                await asyncio.wait_for(asyncio.gather(*(s.wait() for *_, s in readers)), 20)
                redis.stop()
                redis.start()  # same port, no persistence: every key is gone
                t0 = time.monotonic()
                done = await asyncio.wait_for(asyncio.gather(*(t for _, _, _, t, _ in readers)), 4 * IDLE_S + 10)
                return ids, readers, done, time.monotonic() - t0

        ids, readers, results, took = run(go())
        assert took < 3 * IDLE_S + 5, f"readers ended {took:.1f} s after the restart"
        for (i, sid, mirrored, _, _), r in zip(readers, results):
            assert r.error is not None, f"reader of {sid} (mirror={mirrored}) ended without a terminal error"
            assert r.error.code == "store_lost" and r.error.retryable
            assert len(r.tokens) >= 3 and r.text == expected_text(f"lost{i}", i, 3000)[: len(r.text)]
        for sid in ids:
            sa = httpx.get(f"{a.url}/v1/streams/{sid}").json()
            sb = httpx.get(f"{b.url}/v1/streams/{sid}").json()
            assert (sa["status"], sa["error"]) == (sb["status"], sb["error"]) == ("error", "store_lost")
            assert sa["last_seq"] == sb["last_seq"] and sa["tokens"] == sb["tokens"] >= 3
        for gw in (a, b):
            assert gauge(gw, "gateway_active_streams") == 0
        # And the replicas work on afterwards.
        r = run(_one(a.url, b.url, "after", 30))
        assert r.done is not None and r.text == expected_text("after", 1, 30)
    finally:
        for gw in (a, b):
            gw.stop()
        redis.stop()


async def _one(create_url: str, read_url: str, prompt: str, n: int) -> StreamResult:
    async with Client(create_url) as ca, Client(read_url) as cb:
        sid = (await ca.create(prompt, max_tokens=n, seed=1, sim={"ttft_ms": 5, "itl_ms": 2, "jitter": 0}))["id"]
        return await cb.stream("ndjson", stream_id=sid)


def _fill(redis: RedisServer) -> int:
    """Fill Redis to its maxmemory (noeviction): returns the junk keys written."""
    import redis as redis_py

    client = redis.client()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + 3 * 1_048_576))
    client.config_set("maxmemory-policy", "noeviction")
    n = 0
    try:
        while n < 100_000:
            client.set(f"junk:{n}", b"x" * 8192)
            n += 1
    except redis_py.exceptions.OutOfMemoryError:
        # Full; and kept full (at the edge, freed buffers would let a write through now and then).
        client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) - 1_048_576))
        return n
    raise AssertionError("Redis never reached maxmemory")


def _unfill(redis: RedisServer, n: int) -> None:
    client = redis.client()
    for i in range(0, n, 1000):
        client.delete(*(f"junk:{j}" for j in range(i, min(n, i + 1000))))
    client.config_set("maxmemory", "0")


def test_redis_at_maxmemory_503_errors_and_an_unready_replica():
    redis = RedisServer()
    a, b = start(redis, 2)
    c = None
    try:
        async def go():
            async with Client(a.url) as ca, Client(b.url) as cb:
                ids = [(await ca.create(f"oom{i}", max_tokens=5000, seed=i, sim=SLOW))["id"] for i in range(3)]
                readers = []
                for sid in ids:
                    for client, transport in ((ca, "ndjson"), (cb, "sse")):
                        result, started = StreamResult(), asyncio.Event()
                        readers.append((asyncio.create_task(read_some(client, transport, sid, result, started)),
                                        started))
                await asyncio.wait_for(asyncio.gather(*(s.wait() for _, s in readers)), 20)
                junk = await asyncio.to_thread(_fill, redis)
                creates = [await asyncio.to_thread(httpx.post, f"{gw.url}/v1/streams", json={"max_tokens": 5})
                           for gw in (a, b) for _ in range(5)]
                done = await asyncio.wait_for(asyncio.gather(*(t for t, _ in readers)), 30)
                return junk, creates, done

        junk, creates, results = run(go())
        for r in creates:
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "store_unavailable" and int(r.headers["retry-after"]) >= 1
        for r in results:
            assert r.error is not None and r.error.code == "store_unavailable", r.terminal
            assert len(r.tokens) >= 3
        for gw in (a, b):
            m = gw.metrics()
            assert m["gateway_active_streams"] == 0
            assert httpx.get(gw.url + "/healthz").json()["status"] == "store_unavailable"

        # A replica started while Redis is full runs and says it is not ready.
        port = free_port()
        env = {**os.environ, **FAST, "GATEWAY_REDIS_URL": redis.url, "GATEWAY_LOG_LEVEL": "warning"}
        c = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(port)], cwd=ROOT, env=env)
        deadline = time.monotonic() + 20
        health = None
        while time.monotonic() < deadline and health is None:
            assert c.poll() is None, "the replica exited while Redis was full"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            except httpx.HTTPError:
                time.sleep(0.1)
        assert health is not None and health.status_code == 503
        assert health.json()["status"] == "store_unavailable"

        _unfill(redis, junk)
        deadline = time.monotonic() + 15
        while httpx.get(f"http://127.0.0.1:{port}/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the new replica never became ready"
            time.sleep(0.2)
        r = run(_one(f"http://127.0.0.1:{port}", a.url, "back", 20))
        assert r.done is not None and r.text == expected_text("back", 1, 20)
        for gw in (a, b):
            assert gauge(gw, "gateway_active_streams") >= 0
    finally:
        if c is not None:
            stop(c)
        for gw in (a, b):
            gw.stop()
        redis.stop()


def test_streams_per_key_holds_under_concurrency_across_replicas():
    redis = RedisServer()
    env = {"GATEWAY_API_KEYS": f"owner={KEY}", "GATEWAY_TOKEN_SECRET": "s" * 32, "GATEWAY_STREAMS_PER_KEY": "2",
           "GATEWAY_METRICS_PUBLIC": "true"}
    a, b = start(redis, 2, **env)
    try:
        async def go():
            headers = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(headers=headers, timeout=20) as http:
                body = {"max_tokens": 2000, "sim": {"ttft_ms": 50, "itl_ms": 100}}
                posts = [http.post(f"{(a, b)[i % 2].url}/v1/streams", json=body) for i in range(40)]
                return await asyncio.gather(*posts)

        responses = run(go())
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(201) == 2 and statuses.count(429) == 38, statuses
        assert all(r.json()["code"] == "too_many_streams" for r in responses if r.status_code == 429)
        # Ending one gives its place back, wherever the next create lands.
        created = [r.json()["id"] for r in responses if r.status_code == 201]
        headers = {"Authorization": f"Bearer {KEY}"}
        assert httpx.delete(f"{a.url}/v1/streams/{created[0]}", headers=headers).status_code == 204
        deadline = time.monotonic() + 10
        while (r := httpx.post(f"{b.url}/v1/streams", json={"max_tokens": 5}, headers=headers)).status_code != 201:
            assert r.status_code == 429 and time.monotonic() < deadline, r.text
            time.sleep(0.1)
        for gw in (a, b):
            assert gauge(gw, "gateway_active_streams") >= 0
    finally:
        for gw in (a, b):
            gw.stop()
        redis.stop()


@pytest.mark.parametrize("lb", ["nginx", "haproxy"])
def test_the_lab_load_balancers_retry_a_503_attach_on_the_other_replica(lb, tmp_path):
    """A draining replica answers attaches with 503: the load balancer tries the other one."""
    import signal

    from loadtests.lab import LAB_DIR, render

    from .support import require

    binary = require(lb)
    redis = RedisServer()
    a, b = start(redis, 2, GATEWAY_DRAIN_TIMEOUT_S="20")
    port = free_port()
    values = {"LISTEN": f"127.0.0.1:{port}", "UPSTREAM": f"127.0.0.1:{a.port}", "UPSTREAM_B": f"127.0.0.1:{b.port}",
              "READ_TIMEOUT": "30s", "RUN_DIR": str(tmp_path)}
    if lb == "nginx":
        conf = tmp_path / "lb.conf"
        conf.write_text(render("nginx/lb.conf", **values))
        argv, env = [binary, "-c", str(conf), "-p", str(tmp_path)], os.environ
    else:
        argv, env = [binary, "-f", str(LAB_DIR / "haproxy/lb.cfg")], {**os.environ, **values}
    proxy = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    try:
        from .support import wait_http

        wait_http(f"http://127.0.0.1:{port}/healthz", proxy)
        ended = httpx.post(f"{b.url}/v1/streams", json={"max_tokens": 5, "sim": {"ttft_ms": 1, "itl_ms": 1}}).json()
        httpx.post(f"{a.url}/v1/streams", json={"max_tokens": 5000, "sim": SLOW})  # keeps A draining
        time.sleep(0.5)
        a.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while httpx.get(a.url + "/healthz").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{a.url}/v1/streams/{ended['id']}/ndjson").status_code == 503  # A refuses itself
        statuses = []
        for _ in range(12):
            r = httpx.get(f"http://127.0.0.1:{port}/v1/streams/{ended['id']}/ndjson", timeout=10)
            statuses.append(r.status_code)
            if r.status_code == 200:
                assert r.text.splitlines()[-1].startswith('{"type":"done"')
        assert statuses == [200] * 12, statuses
        # A create is not retried (not idempotent): through the balancer it is either created or refused.
        creates = {httpx.post(f"http://127.0.0.1:{port}/v1/streams", json={"max_tokens": 1}).status_code
                   for _ in range(6)}
        assert creates <= {201, 503}
    finally:
        stop(proxy)
        for gw in (a, b):
            gw.stop()
        redis.stop()
