"""Several gateway processes on one real redis-server: resume anywhere, drain, replica loss, Redis outage."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
import websockets

from gateway.client import TRANSPORTS, Client, StreamResult
from gateway.codecs import ws
from gateway.events import Token
from gateway.sources.simulated import expected_text

from .support import Gateway, RedisServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FAST = {
    "GATEWAY_STREAM_STORE": "redis",
    "GATEWAY_HEARTBEAT_S": "0.3",
    "GATEWAY_IDLE_TIMEOUT_S": "2.0",
    "GATEWAY_DETACH_GRACE_S": "1.0",
    "GATEWAY_TTL_S": "1.5",
    "GATEWAY_DRAIN_TIMEOUT_S": "3.0",
    "GATEWAY_REDIS_OUTAGE_S": "1.0",
    "GATEWAY_SSE_RETRY_MS": "200",
}
SIM = {"ttft_ms": 20, "itl_ms": 20, "jitter": 0}


def run(coro):
    return asyncio.run(coro)


def start(redis: RedisServer, n: int) -> list[Gateway]:
    env = {**FAST, "GATEWAY_REDIS_URL": redis.url}
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: Gateway(env), range(n)))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def redis():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pair(redis):
    """Replicas A and B, left running for the tests that do not kill anything."""
    gws = start(redis, 2)
    yield gws
    for gw in gws:
        gw.stop()


@pytest.fixture
def victim(redis):
    """A third replica, for the tests that SIGTERM or kill it."""
    gw = start(redis, 1)[0]
    yield gw
    gw.stop()


async def read_until(client: Client, transport: str, stream_id: str, n: int, after: int = -1):
    """Attach, read n tokens, then drop the connection: (last seq seen, tokens)."""
    tokens: list[Token] = []
    last = after
    async for event, _ in client.events(transport, stream_id=stream_id, after=after, resume=False):
        last = event.seq
        if type(event) is Token:
            tokens.append(event)
            if len(tokens) == n:
                break
    return last, tokens


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_create_on_a_read_half_on_b_resume_on_a(pair, transport):
    a, b = pair
    text = expected_text("half", 4, 80)

    async def go():
        async with Client(a.url) as ca, Client(b.url) as cb:
            sid = (await ca.create("half", max_tokens=80, seed=4, sim=SIM))["id"]
            last, first = await read_until(cb, transport, sid, 40)
            rest = await ca.stream(transport, stream_id=sid, after=last)
            return first, rest

    first, rest = run(go())
    assert [t.seq for t in first] == list(range(1, 41))
    assert [t.seq for t in rest.tokens] == list(range(41, 81))
    assert "".join(t.text for t in first) + rest.text == text
    assert rest.done.sha256 == sha(text) and rest.gaps == rest.duplicates == 0


def test_fifty_clients_share_one_reader(pair, redis):
    a, b = pair
    pid = str(b.proc.pid)
    text = expected_text("fan", 9, 120)

    def b_connections() -> list[dict]:
        return [c for c in redis.client().client_list() if f"-{pid}-" in c.get("name", "")]

    async def go():
        async with Client(a.url) as ca, Client(b.url) as cb:
            reads = b.metrics()["gateway_redis_reads_total"]
            sid = (await ca.create("fan", max_tokens=120, seed=9, sim={**SIM, "ttft_ms": 300}))["id"]
            first = asyncio.create_task(cb.stream("sse", stream_id=sid))
            while b.metrics().get("gateway_redis_mirror_clients") != 1:
                await asyncio.sleep(0.02)
            one = len(b_connections())
            rest = [asyncio.create_task(cb.stream(("sse", "ndjson", "ws")[i % 3], stream_id=sid))
                    for i in range(49)]
            while b.metrics().get("gateway_redis_mirror_clients") != 50:
                await asyncio.sleep(0.02)
            conns = b_connections()
            metrics = b.metrics()
            results = await asyncio.gather(first, *rest)
            return one, conns, metrics, results, b.metrics()["gateway_redis_reads_total"] - reads

    one, conns, metrics, results, reads = run(go())
    for r in results:
        assert r.text == text and r.done.sha256 == sha(text)
    assert metrics["gateway_redis_mirror_clients"] == 50 and metrics["gateway_redis_readers"] == 1
    # One connection blocked in XREAD for the whole process; the total does not grow with clients.
    assert sum(1 for c in conns if c["cmd"] == "xread") == 1
    assert len(conns) <= one + 1 and len(conns) <= 8 + 2
    # About one XREAD per token for all 50 clients, not one per client (that would be 6000).
    assert reads < 2 * 120 + 20


def test_delete_on_any_replica_reaches_the_generator(pair):
    a, b = pair

    async def go():
        async with Client(a.url) as ca, Client(b.url) as cb:
            sid = (await ca.create("del", max_tokens=500, seed=1, sim=SIM))["id"]
            reader = asyncio.create_task(ca.stream("ndjson", stream_id=sid))
            await asyncio.sleep(0.4)
            first = await cb.cancel(sid)
            result = await reader
            again = await cb.cancel(sid)
            status = httpx.get(f"{b.url}/v1/streams/{sid}").json()
            return first, result, again, status

    first, result, again, status = run(go())
    assert first == 204 and again == 409
    assert result.error.code == "cancelled" and 0 < len(result.tokens) < 500
    assert result.text == expected_text("del", 1, 500)[: len(result.text)]
    assert status["status"] == "error" and status["error"] == "cancelled"


def test_ended_stream_expires_everywhere(pair):
    a, b = pair
    sid = httpx.post(f"{a.url}/v1/streams", json={"max_tokens": 3, "sim": SIM}).json()["id"]
    r = run(Client(b.url).stream("sse", stream_id=sid))
    assert r.done is not None
    deadline = time.monotonic() + 15
    while httpx.get(f"{b.url}/v1/streams/{sid}/ndjson").status_code != 410:
        assert time.monotonic() < deadline, "the stream never expired"
        time.sleep(0.2)
    assert httpx.get(f"{a.url}/v1/streams/{sid}/sse").status_code == 410
    assert httpx.get(f"{b.url}/v1/streams/nosuchstream/sse").status_code == 404


def test_sigterm_drains_clients_to_another_replica(pair, victim):
    a, _ = pair
    text = expected_text("drain", 2, 120)

    async def go():
        async with Client([victim.url, a.url]) as client:
            short = (await client.create("drain", max_tokens=120, seed=2, sim=SIM))["id"]
            long_ = (await client.create("long", max_tokens=2000, seed=2, sim=SIM))["id"]
            seen = {t: asyncio.Event() for t in TRANSPORTS}

            async def follow(transport, sid, note):
                async with Client([victim.url, a.url]) as c:
                    result = StreamResult()
                    async for event, _ in c.events(transport, stream_id=sid, result=result):
                        if note and type(event) is Token and event.seq == 10:
                            seen[transport].set()
                    return result

            tasks = [asyncio.create_task(follow(t, short, True)) for t in TRANSPORTS]
            tasks.append(asyncio.create_task(follow("ndjson", long_, False)))
            await asyncio.gather(*(e.wait() for e in seen.values()))
            os.kill(victim.proc.pid, signal.SIGTERM)
            sigterm_at = time.monotonic()
            await asyncio.sleep(0.3)
            refused = httpx.post(f"{victim.url}/v1/streams", json={})
            health = httpx.get(f"{victim.url}/healthz").status_code
            results = await asyncio.gather(*tasks)
            await asyncio.to_thread(victim.proc.wait, 20)
            return results, refused, health, time.monotonic() - sigterm_at

    results, refused, health, took = run(go())
    for r in results[:3]:
        assert r.text == text and r.done.sha256 == sha(text)
        assert r.reconnect_requests == 1 and r.gaps == r.duplicates == 0
    long_ = results[3]
    assert long_.error.code == "shutdown" and long_.error.retryable
    assert long_.text == expected_text("long", 2, 2000)[: len(long_.text)] and long_.gaps == 0
    assert refused.status_code == 503 and refused.json()["code"] == "draining"
    assert health == 503
    assert 2.5 < took < 15  # drain_timeout_s (3 s) held the exit, then it went


def test_sigterm_on_a_reading_replica_moves_its_clients(pair, victim):
    a, b = pair
    text = expected_text("move", 8, 150)

    async def go():
        async with Client(a.url) as ca:
            sid = (await ca.create("move", max_tokens=150, seed=8, sim=SIM))["id"]
        clients = [Client([victim.url, b.url]) for _ in TRANSPORTS]
        tasks = [asyncio.create_task(c.stream(t, stream_id=sid)) for c, t in zip(clients, TRANSPORTS)]
        while victim.metrics().get("gateway_redis_mirror_clients") != 3:
            await asyncio.sleep(0.02)
        os.kill(victim.proc.pid, signal.SIGTERM)
        results = await asyncio.gather(*tasks)
        for c in clients:
            await c.aclose()
        await asyncio.to_thread(victim.proc.wait, 20)
        return results

    for r in run(go()):
        assert r.text == text and r.done.sha256 == sha(text)
        assert (r.reconnect_requests, r.reconnects, r.gaps, r.duplicates) == (1, 1, 0, 0)


def test_kill_9_gives_generator_lost_everywhere(pair, victim):
    a, b = pair
    full = expected_text("lost", 6, 2000)

    async def go():
        async with Client(victim.url) as cv:
            sid = (await cv.create("lost", max_tokens=2000, seed=6, sim=SIM))["id"]
        on = [([victim.url, a.url], "ndjson"), ([victim.url, b.url], "sse"), ([a.url], "ws"), ([b.url], "sse")]
        clients = [Client(urls) for urls, _ in on]
        tasks = [asyncio.create_task(c.stream(t, stream_id=sid)) for c, (_, t) in zip(clients, on)]
        await asyncio.sleep(0.8)
        victim.proc.kill()
        killed_at = time.monotonic()
        results = await asyncio.gather(*tasks)
        took = time.monotonic() - killed_at
        for c in clients:
            await c.aclose()
        async with Client(b.url) as cb:
            later = await cb.stream("ndjson", stream_id=sid)
        return results, later, took

    results, later, took = run(go())
    for r in [*results, later]:
        assert r.done is None and r.error.code == "generator_lost"
        assert r.text == full[: len(r.text)] and r.gaps == 0
    assert len(later.tokens) > 10 and later.text == max((r.text for r in results), key=len)
    assert 1.0 < took < 15  # after the inactivity timeout (2 s), not at once and not never


def test_redis_outage_then_recovery():
    redis = RedisServer()
    a, b = start(redis, 2)
    try:
        async def during():
            async with Client(a.url) as ca, Client(b.url) as cb:
                sid = (await ca.create("out", max_tokens=2000, seed=3, sim=SIM))["id"]
                tasks = [asyncio.create_task(ca.stream("sse", stream_id=sid)),
                         asyncio.create_task(cb.stream("ndjson", stream_id=sid))]
                await asyncio.sleep(0.6)
                redis.stop()
                results = await asyncio.gather(*tasks)
                refused = httpx.post(f"{a.url}/v1/streams", json={})
                attach = httpx.get(f"{b.url}/v1/streams/{sid}/ndjson")
                return results, refused, attach

        results, refused, attach = run(during())
        assert attach.status_code == 503 and attach.json()["code"] == "store_unavailable"
        for r in results:
            assert r.error.code == "store_unavailable" and r.error.retryable
            assert r.text == expected_text("out", 3, 2000)[: len(r.text)] and len(r.tokens) > 5
        assert refused.status_code == 503 and refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "store_unavailable" and refused.headers["retry-after"]

        redis.start()  # same port, empty: the gateways reconnect by themselves
        deadline = time.monotonic() + 15
        while httpx.post(f"{a.url}/v1/streams", json={"max_tokens": 1}).status_code != 201:
            assert time.monotonic() < deadline, "no recovery after Redis came back"
            time.sleep(0.2)

        async def after():
            async with Client(a.url) as ca, Client(b.url) as cb:
                sid = (await ca.create("back", max_tokens=50, seed=1, sim=SIM))["id"]
                return await cb.stream("ws", stream_id=sid)

        r = run(after())
        assert r.text == expected_text("back", 1, 50) and r.done.sha256 == sha(r.text)
    finally:
        for gw in (a, b):
            gw.stop()
        redis.stop()


def test_resume_past_the_real_end_on_a_mirror_is_still_refused(pair):
    """A mirror that lags catches up from Redis before it refuses a resume point, but a point past the
    stream's real end is refused all the same (409 past_end, after a bounded wait), on every transport."""
    a, b = pair

    async def go():
        async with Client(a.url) as ca, Client(b.url) as cb, httpx.AsyncClient(base_url=b.url) as http:
            sid = (await ca.create("past", max_tokens=1000, seed=2, sim=SIM))["id"]
            keep = asyncio.create_task(ca.stream("ndjson", stream_id=sid))  # keeps it generating
            last, _ = await read_until(cb, "sse", sid, 3)  # B follows it now
            after = last + 900  # 18 s of tokens away

            async def sse_():
                r = await http.get(f"/v1/streams/{sid}/sse", headers={"Last-Event-ID": str(after)})
                return r.status_code, r.json()["code"]

            async def ndjson_():
                r = await http.get(f"/v1/streams/{sid}/ndjson", params={"after": after})
                return r.status_code, r.json()["code"]

            async def ws_():
                async with websockets.connect(cb.ws_url + "/v1/ws", open_timeout=10) as sock:
                    await sock.send(ws.resume(sid, after))
                    event = ws.decode(await sock.recv())
                    return event.seq, event.code

            async def ws_attach():
                try:
                    async with websockets.connect(f"{cb.ws_url}/v1/streams/{sid}/ws?after={after}",
                                                  open_timeout=10):
                        return "accepted"
                except websockets.exceptions.InvalidStatus as exc:
                    return exc.response.status_code, orjson.loads(exc.response.body)["code"]

            t0 = time.monotonic()
            out = dict(zip(("sse", "ndjson", "ws", "ws-attach"),
                           await asyncio.gather(sse_(), ndjson_(), ws_(), ws_attach())))
            elapsed = time.monotonic() - t0
            running = (await http.get(f"/v1/streams/{sid}")).json()["status"]
            await ca.cancel(sid)
            await keep
            return out, elapsed, running

    out, elapsed, running = run(go())
    assert out == {"sse": (409, "past_end"), "ndjson": (409, "past_end"), "ws": (-1, "past_end"),
                   "ws-attach": (409, "past_end")}
    assert running == "running"  # refused while it ran: not because it had ended
    assert elapsed < 15  # a bounded wait (2 s), not one until the stream gets there (18 s)


def test_a_mirror_logs_its_clients_lifecycle(pair, redis, tmp_path):
    """The replica serving a stream it does not generate writes attached/resumed/cut lines for its clients."""
    a = pair[0]
    log = tmp_path / "b.jsonl"
    b = Gateway({**FAST, "GATEWAY_REDIS_URL": redis.url, "GATEWAY_LOG_FILE": str(log), "GATEWAY_LOG_LEVEL": "info"})
    try:
        async def go():
            async with Client(a.url) as ca, Client(b.url) as cb:
                sid = (await ca.create("journal", max_tokens=30, seed=2, sim=SIM))["id"]
                last, _ = await read_until(cb, "ndjson", sid, 10)
                rest = await cb.stream("sse", stream_id=sid, after=last)
                return sid, last, rest

        sid, last, rest = run(go())
        assert rest.done is not None
        # The resume may reach B before B notices the first client left: "cut" and "resumed" in either order.
        want = ["attached", "cut", "resumed"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            records = [orjson.loads(line) for line in log.read_text().splitlines() if sid in line]
            if sorted(r["event"] for r in records) == want:
                break
            time.sleep(0.1)
        assert sorted(r["event"] for r in records) == want and records[0]["event"] == "attached", records
        attached, cut, resumed = (next(r for r in records if r["event"] == e) for e in want)
        assert attached["transport"] == cut["transport"] == "ndjson" and resumed["transport"] == "sse"
        assert cut["reason"] == "client_left" and resumed["after"] == last
    finally:
        b.stop()
