"""Several gateway processes on one real redis-server: resume anywhere, drain, replica loss, Redis outage."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
import websockets

from gateway.client import TRANSPORTS, Client
from gateway.codecs import ws
from gateway.sources.simulated import expected_text

from . import wire
from .support import Gateway, RedisServer, run

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



def start(redis: RedisServer, n: int, **extra: str) -> list[Gateway]:
    env = {**FAST, "GATEWAY_REDIS_URL": redis.url, **extra}
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: Gateway(env), range(n)))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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


def create(url: str, prompt: str, **fields) -> str:
    r = httpx.post(f"{url}/v1/streams", json={"prompt": prompt, **fields}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def begun(url: str, prompt: str, max_tokens: int, seed: int) -> tuple[str, asyncio.Task]:
    """A stream begun on `url` by a reader that stays to its end (a one-shot NDJSON POST), so no detach
    grace (1 s here) ends it before the clients under test come, however slowly a loaded machine brings
    them: its id, and that reader's task. (Created ahead with no reader, such streams were cancelled.)"""
    meta = asyncio.get_running_loop().create_future()
    reader = asyncio.create_task(wire.read(
        url, "ndjson", body={"prompt": prompt, "max_tokens": max_tokens, "seed": seed, "sim": SIM},
        on_event=lambda e: meta.done() or e["type"] != "meta" or meta.set_result(e["stream_id"])))
    async with asyncio.timeout(10):
        return await meta, reader


def follows(read: wire.Read, text: str) -> bool:
    """The read's tokens are a prefix of `text`."""
    return text.startswith(read.text)


def drained(read: wire.Read) -> bool:
    """The connection ended with the draining server's reconnect signal: a `reconnect` event on SSE and
    NDJSON, close code 1012 (service restart) on a WebSocket."""
    if read.transport == "ws":
        return read.close_code == 1012
    return read.ended == "reconnect" and read.events[-1]["type"] == "reconnect"


@pytest.mark.every_flavour
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_create_on_a_read_half_on_b_resume_on_a(pair, transport):
    a, b = pair
    text = expected_text("half", 4, 80)
    sid = create(a.url, "half", max_tokens=80, seed=4, sim=SIM)

    async def go():
        first = await wire.read(b.url, transport, stream_id=sid, until=wire.at_seq(40))
        rest = await wire.read(a.url, transport, stream_id=sid, after=first.seqs[-1])
        return first, rest

    first, rest = run(go())
    assert first.ended == "stopped" and rest.ended == "terminal"
    wire.assert_exact(first.events + rest.events, 0, 81)
    assert first.text + rest.text == text and rest.terminal["sha256"] == sha(text)


def test_fifty_clients_share_one_reader(pair, redis):
    a, b = pair
    pid = str(b.proc.pid)
    full = expected_text("fan", 9, 5000)

    def b_connections() -> list[dict]:
        return [c for c in redis.client().client_list() if f"-{pid}-" in c.get("name", "")]

    async def go():
        reads = b.metrics()["gateway_redis_reads_total"]
        # A stream far longer than the test: all fifty readers on B attach while it runs however slowly a
        # loaded machine opens them, and none leaves before the cancel. (A 120-token stream could end
        # before the fiftieth came; the wait for 50 clients then never ended.)
        sid, keeper = await begun(a.url, "fan", 5000, 9)
        first = asyncio.create_task(wire.read(b.url, "sse", stream_id=sid))
        while b.metrics().get("gateway_redis_mirror_clients") != 1:
            await asyncio.sleep(0.02)
        one = len(b_connections())
        rest = [asyncio.create_task(wire.read(b.url, TRANSPORTS[i % 3], stream_id=sid)) for i in range(49)]
        while b.metrics().get("gateway_redis_mirror_clients") != 50:
            await asyncio.sleep(0.02)
        conns = b_connections()
        metrics = b.metrics()
        while httpx.get(f"{b.url}/v1/streams/{sid}").json()["last_seq"] < 120:  # some tokens for all 50
            await asyncio.sleep(0.05)
        assert httpx.delete(f"{a.url}/v1/streams/{sid}").status_code == 204
        results = await asyncio.gather(first, *rest)
        reads = b.metrics()["gateway_redis_reads_total"] - reads
        return one, conns, metrics, results, reads, await keeper

    one, conns, metrics, results, reads, kept = run(go())
    last = kept.terminal["seq"]
    assert kept.terminal["code"] == "cancelled" and last > 120
    for r in results:
        wire.assert_exact(r.events, 0, last)  # every reader: every event, up to the same cancel
        assert r.terminal == kept.terminal and r.text == kept.text and full.startswith(r.text)
    assert metrics["gateway_redis_mirror_clients"] == 50 and metrics["gateway_redis_readers"] == 1
    # One connection blocked in XREAD for the whole process; the total does not grow with clients.
    assert sum(1 for c in conns if c["cmd"] == "xread") == 1
    assert len(conns) <= one + 1 and len(conns) <= 8 + 2
    # About one XREAD per event for all 50 clients, not one per client (fifty times that).
    assert reads < 2 * last + 20


def test_the_mirrors_reader_reads_once_per_window(redis):
    """REDIS_READ_WINDOW_MS: after an XREAD that brought events, the one reader waits out the window
    before the next, so each XREAD (its cost grows with the streams followed) brings a window's worth.
    Ten streams at 50 events/s mirrored on B: every reader gets every event, and B makes at most about
    one XREAD per window (plus one per new mirror, which ends the wait), where reading again at once made
    one per arrival (hundreds here; docs/scale.md "Reconnect storm")."""
    a, b = start(redis, 2, GATEWAY_REDIS_READ_WINDOW_MS="100")
    try:
        async def go():
            begun_ = [await begun(a.url, "window", 150, seed) for seed in range(10)]
            reads = b.metrics()["gateway_redis_reads_total"]
            t0 = time.monotonic()
            results = await asyncio.gather(*(wire.read(b.url, "ndjson", stream_id=sid) for sid, _ in begun_))
            elapsed = time.monotonic() - t0
            reads = b.metrics()["gateway_redis_reads_total"] - reads
            await asyncio.gather(*(keeper for _, keeper in begun_))
            return results, reads, elapsed

        results, reads, elapsed = run(go())
    finally:
        a.stop()
        b.stop()
    for seed, r in enumerate(results):
        wire.assert_exact(r.events, 0, 151)
        assert r.text == expected_text("window", seed, 150)
    assert reads <= 1.5 * elapsed / 0.1 + 10 + 5, (reads, elapsed)


def test_delete_on_any_replica_reaches_the_generator(pair):
    a, b = pair
    sid = create(a.url, "del", max_tokens=500, seed=1, sim=SIM)

    async def go():
        reader = asyncio.create_task(wire.read(a.url, "ndjson", stream_id=sid))
        await asyncio.sleep(0.4)
        async with httpx.AsyncClient() as http:
            first = (await http.delete(f"{b.url}/v1/streams/{sid}")).status_code
            result = await reader
            again = (await http.delete(f"{b.url}/v1/streams/{sid}")).status_code
            status = (await http.get(f"{b.url}/v1/streams/{sid}")).json()
        return first, result, again, status

    first, result, again, status = run(go())
    assert first == 204 and again == 409
    assert result.terminal["type"] == "error" and result.terminal["code"] == "cancelled"
    wire.assert_exact(result.events, 0)
    assert 0 < len(result.tokens) < 500 and follows(result, expected_text("del", 1, 500))
    assert status["status"] == "error" and status["error"] == "cancelled"


def test_ended_stream_expires_everywhere(pair):
    a, b = pair
    sid = create(a.url, "", max_tokens=3, sim=SIM)
    r = run(wire.read(b.url, "sse", stream_id=sid))
    wire.assert_exact(r.events, 0, 4)
    deadline = time.monotonic() + 15
    while httpx.get(f"{b.url}/v1/streams/{sid}/ndjson").status_code != 410:
        assert time.monotonic() < deadline, "the stream never expired"
        time.sleep(0.2)
    assert httpx.get(f"{a.url}/v1/streams/{sid}/sse").status_code == 410
    assert httpx.get(f"{b.url}/v1/streams/nosuchstream/sse").status_code == 404


def test_sigterm_drains_clients_to_another_replica(pair, victim):
    a, _ = pair
    text = expected_text("drain", 2, 120)
    short = create(victim.url, "drain", max_tokens=120, seed=2, sim=SIM)
    long_ = create(victim.url, "long", max_tokens=2000, seed=2, sim=SIM)

    async def go():
        seen = {t: asyncio.Event() for t in TRANSPORTS}

        def note(transport):
            return lambda e: seen[transport].set() if e.get("seq") == 10 else None

        tasks = [asyncio.create_task(wire.follow([victim.url, a.url], t, short, on_event=note(t)))
                 for t in TRANSPORTS]
        tasks.append(asyncio.create_task(wire.follow([victim.url, a.url], "ndjson", long_)))
        async with asyncio.timeout(20):
            await asyncio.gather(*(e.wait() for e in seen.values()))
        os.kill(victim.proc.pid, signal.SIGTERM)
        sigterm_at = time.monotonic()
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient() as http:
            refused = await http.post(f"{victim.url}/v1/streams", json={})
            health = (await http.get(f"{victim.url}/healthz")).status_code
        results = await asyncio.gather(*tasks)
        await asyncio.to_thread(victim.proc.wait, 20)
        return results, refused, health, time.monotonic() - sigterm_at

    results, refused, health, took = run(go())
    for transport, reads in zip(TRANSPORTS, results[:3]):
        events = wire.joined(reads)
        wire.assert_exact(events, 0, 121)  # across the move: nothing resent, nothing skipped
        assert wire.text_of(events) == text and reads[-1].terminal["sha256"] == sha(text)
        assert drained(reads[0]), (transport, reads[0].ended, reads[0].close_code)
        assert reads[-1].url == a.url
    long_reads = results[3]
    end = long_reads[-1].terminal
    assert end["code"] == "shutdown" and end["retryable"]
    events = wire.joined(long_reads)
    wire.assert_exact(events, 0)
    assert expected_text("long", 2, 2000).startswith(wire.text_of(events))
    assert refused.status_code == 503 and refused.json()["code"] == "draining"
    assert health == 503
    assert 2.5 < took < 30  # drain_timeout_s (3 s) held the exit, then it went


def test_sigterm_on_a_reading_replica_moves_its_clients(pair, victim):
    a, b = pair
    text = expected_text("move", 8, 150)

    async def go():
        sid, keeper = await begun(a.url, "move", 150, 8)
        tasks = [asyncio.create_task(wire.follow([victim.url, b.url], t, sid)) for t in TRANSPORTS]
        async with asyncio.timeout(20):
            while victim.metrics().get("gateway_redis_mirror_clients") != 3:
                await asyncio.sleep(0.02)
        os.kill(victim.proc.pid, signal.SIGTERM)
        results = await asyncio.gather(*tasks)
        await asyncio.to_thread(victim.proc.wait, 20)
        assert (await keeper).text == text
        return results

    for transport, reads in zip(TRANSPORTS, run(go())):
        events = wire.joined(reads)
        wire.assert_exact(events, 0, 151)
        assert wire.text_of(events) == text and reads[-1].terminal["sha256"] == sha(text)
        assert len(reads) == 2 and drained(reads[0]), (transport, [(r.ended, r.close_code) for r in reads])


def test_kill_9_gives_generator_lost_everywhere(pair, victim):
    a, b = pair
    full = expected_text("lost", 6, 2000)
    sid = create(victim.url, "lost", max_tokens=2000, seed=6, sim=SIM)

    async def go():
        on = [([victim.url, a.url], "ndjson"), ([victim.url, b.url], "sse"), ([a.url], "ws"), ([b.url], "sse")]
        tasks = [asyncio.create_task(wire.follow(urls, t, sid)) for urls, t in on]
        await asyncio.sleep(0.8)
        victim.proc.kill()
        killed_at = time.monotonic()
        results = await asyncio.gather(*tasks)
        took = time.monotonic() - killed_at
        later = await wire.read(b.url, "ndjson", stream_id=sid)
        return results, later, took

    results, later, took = run(go())
    texts = []
    for events in [wire.joined(reads) for reads in results] + [later.events]:
        wire.assert_exact(events, 0)
        assert events[-1]["type"] == "error" and events[-1]["code"] == "generator_lost"
        assert full.startswith(wire.text_of(events))
        texts.append(wire.text_of(events))
    assert len(later.tokens) > 10 and texts[-1] == max(texts[:-1], key=len)
    assert 1.0 < took < 30  # after the inactivity timeout (2 s), not at once and not never


@pytest.mark.every_flavour
def test_redis_outage_then_recovery(flavour):
    redis = RedisServer(flavour=flavour)
    a, b = start(redis, 2)
    try:
        async def during():
            sid = create(a.url, "out", max_tokens=2000, seed=3, sim=SIM)
            tasks = [asyncio.create_task(wire.read(a.url, "sse", stream_id=sid)),
                     asyncio.create_task(wire.read(b.url, "ndjson", stream_id=sid))]
            await asyncio.sleep(0.6)
            redis.stop()
            results = await asyncio.gather(*tasks)
            refused = httpx.post(f"{a.url}/v1/streams", json={})
            attach = httpx.get(f"{b.url}/v1/streams/{sid}/ndjson")
            return results, refused, attach

        results, refused, attach = run(during())
        assert attach.status_code == 503 and attach.json()["code"] == "store_unavailable"
        for r in results:
            assert r.terminal["code"] == "store_unavailable" and r.terminal["retryable"]
            wire.assert_exact(r.events, 0)
            assert follows(r, expected_text("out", 3, 2000)) and len(r.tokens) > 5
        assert refused.status_code == 503 and refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "store_unavailable" and refused.headers["retry-after"]

        redis.start()  # same port, empty: each gateway reconnects by itself and says so on /healthz
        deadline = time.monotonic() + 15
        for gw in (a, b):
            while httpx.get(f"{gw.url}/healthz").status_code != 200:
                assert time.monotonic() < deadline, f"{gw.url}: no recovery after Redis came back"
                time.sleep(0.2)
        assert httpx.post(f"{a.url}/v1/streams", json={"max_tokens": 1}).status_code == 201

        sid = create(a.url, "back", max_tokens=50, seed=1, sim=SIM)
        r = run(wire.read(b.url, "ws", stream_id=sid))
        wire.assert_exact(r.events, 0, 51)
        assert r.text == expected_text("back", 1, 50) and r.terminal["sha256"] == sha(r.text)
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
            last = (await wire.read(b.url, "sse", stream_id=sid, until=wire.at_token(3))).seqs[-1]  # B follows it
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
            sid = create(a.url, "journal", max_tokens=30, seed=2, sim=SIM)
            head = await wire.read(b.url, "ndjson", stream_id=sid, until=wire.at_token(10))
            rest = await wire.read(b.url, "sse", stream_id=sid, after=head.seqs[-1])
            return sid, head, rest

        sid, head, rest = run(go())
        last = head.seqs[-1]
        wire.assert_exact(head.events + rest.events, 0, 31)
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
        assert attached["transport"] == cut["transport"] == "ndjson" and resumed["transport"] == "sse_get"
        assert cut["reason"] == "client_left" and resumed["after"] == last
    finally:
        b.stop()


class DurableRedis(RedisServer):
    """A redis-server that keeps its data across a restart (append-only file, fsync on every write)."""

    def __init__(self, folder) -> None:
        self.folder = str(folder)
        super().__init__()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", self.folder, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL)
        wait_port(self.port, self.proc)


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("redis-server did not answer")


def test_a_redis_outage_shorter_than_the_limit_is_ridden_out_and_the_backlog_written(tmp_path):
    """Redis goes away for about a second of an 8 s allowance and comes back with its data: the owner's
    reader sees nothing of it, and the events made meanwhile reach the store (a replica that reads the
    finished stream only from Redis gets every one)."""
    redis = DurableRedis(tmp_path)
    a, b = start(redis, 2, GATEWAY_REDIS_OUTAGE_S="8")
    try:
        text = expected_text("ride", 3, 200)
        sid = create(a.url, "ride", max_tokens=200, seed=3, sim=SIM)  # 4 s of tokens

        async def go():
            reader = asyncio.create_task(wire.read(a.url, "ndjson", stream_id=sid))
            await asyncio.sleep(0.6)
            redis.stop()
            seen_down = False
            async with httpx.AsyncClient() as http:
                for _ in range(40):  # ~1 s without Redis; the owner must notice it
                    body = (await http.get(f"{a.url}/metrics")).text
                    seen_down |= "gateway_redis_up 0.0" in body
                    await asyncio.sleep(0.025)
            await asyncio.to_thread(redis.start)
            return await reader, seen_down

        r, seen_down = run(go())
        assert seen_down, "the owner never saw Redis down: no outage was tested"
        wire.assert_exact(r.events, 0, 201)  # ridden out: the reader saw nothing of it
        assert r.text == text and r.terminal["type"] == "done"
        deadline = time.monotonic() + 15
        while httpx.get(f"{b.url}/v1/streams/{sid}").json().get("status") != "done":
            assert time.monotonic() < deadline, "the end never reached the store"
            time.sleep(0.1)
        later = run(wire.read(b.url, "sse", stream_id=sid))
        wire.assert_exact(later.events, 0, 201)  # the backlog was written: nothing missing in Redis
        assert later.text == text and later.terminal["sha256"] == sha(text)
    finally:
        for gw in (a, b):
            gw.stop()
        redis.stop()


@pytest.mark.parametrize("transport", ["ndjson", "ws"])
def test_the_client_retries_a_503_at_the_next_base_url(pair, victim, transport):
    """A draining replica refuses an attach with 503 (a WebSocket with a `draining` error event); the client
    given several base URLs takes the stream from the next one, whole."""
    a, _ = pair
    text = expected_text("retry", 7, 60)
    hold = create(victim.url, "hold", max_tokens=5000, sim=SIM)  # generating: the victim drains for 3 s

    async def go():
        # Followed to A when the victim drains, so no detach grace ends it (and the drain) early.
        holder = asyncio.create_task(wire.follow([victim.url, a.url], "ndjson", hold))
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(10):
                while (await http.get(f"{victim.url}/v1/streams/{hold}")).json()["clients"] != 1:
                    await asyncio.sleep(0.02)
                os.kill(victim.proc.pid, signal.SIGTERM)
                while (await http.get(f"{victim.url}/healthz")).status_code != 503:
                    await asyncio.sleep(0.05)
            # The stream starts only now, kept by a reader on A: created ahead with none, it was ended by
            # the detach grace when a loaded machine took over 1 s to drain, and the client read a cut text
            # ending in `cancelled`.
            sid, keeper = await begun(a.url, "retry", 60, 7)
            refused = (await http.get(f"{victim.url}/v1/streams/{sid}/ndjson")).status_code
        async with Client([victim.url, a.url]) as client:
            result = await client.stream(transport, stream_id=sid)
            at = client.base_url
        return refused, result, at, await keeper, await holder

    refused, result, at, kept, _ = run(go())
    assert refused == 503
    assert kept.text == text  # the stream itself ran whole
    assert result.done is not None, result.terminal
    assert result.text == text and result.done.sha256 == sha(text)
    assert result.reconnects >= 1 and at == a.url
