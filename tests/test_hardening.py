"""Keys, ownership, browser safety, limits, slow consumers and lifecycle logs, against a real gateway."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import time

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from gateway.app import create_app
from gateway.client import Client, GatewayError
from gateway.codecs import ws as wsc
from gateway.events import Error
from gateway.settings import Settings
from gateway.sources.simulated import expected_text

from . import wire
from .support import gateway, run

PROBLEM = "application/problem+json"
SIM = {"ttft_ms": 10, "itl_ms": 5, "jitter": 0}
LONG = {"ttft_ms": 10, "itl_ms": 50, "jitter": 0}
ORIGIN = "https://app.example"
# One key per test, so one test's rate and stream counts do not touch another's.
KEYS = {name: f"secret-{name}-0123456789" for name in
        ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory")}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


_PEERS = itertools.count(2)


@pytest.fixture
def peer() -> str:
    """A loopback address of the test's own to send from. The gateway counts wrong keys per client address
    (`unauthorized_per_s`, left at its default: 5/s, burst 10) for the life of the module's gateway: sent
    from one address, the 401 tests together went past it and got 429s, depending on how fast they ran."""
    return f"127.0.0.{next(_PEERS)}"


def http_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


@pytest.fixture(scope="module")
def sec(tmp_path_factory, server):
    log = tmp_path_factory.mktemp("journal") / "lifecycle.jsonl"
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text("# from a file\n" + "\n".join(f"{n}={k}" for n, k in KEYS.items() if n > "f") + "\n")
    env = {
        "GATEWAY_API_KEYS": ",".join(f"{n}={k}" for n, k in KEYS.items() if n <= "f"),
        "GATEWAY_API_KEYS_FILE": str(keys_file),
        "GATEWAY_RATE_PER_KEY": "20",
        "GATEWAY_METRICS_PUBLIC": "true",
        "GATEWAY_STREAMS_PER_KEY": "3",
        "GATEWAY_CLIENTS_PER_STREAM": "3",
        "GATEWAY_WS_MESSAGES_PER_S": "5",
        "GATEWAY_ALLOWED_ORIGINS": json.dumps([ORIGIN]),
        "GATEWAY_LOG_FILE": str(log),
        "GATEWAY_LOG_LEVEL": "info",
        "GATEWAY_HEARTBEAT_S": "0.5",
        "GATEWAY_SEND_TIMEOUT_S": "2",
        "GATEWAY_MAX_LAG_BYTES": "1500000",  # ~1.3 s of the 16,666 tokens/s stream below: a busy box's normal reader stays inside it
        "GATEWAY_MAX_TOKENS_LIMIT": "200000",
        "GATEWAY_DETACH_GRACE_S": "5",
    }
    with gateway(env, server=server) as g:
        g.journal = log
        yield g


def journal(gw, stream_id: str) -> list[dict]:
    lines = [json.loads(line) for line in gw.journal.read_text().splitlines()]
    return [r for r in lines if r.get("stream") == stream_id]


def create(gw, who: str, **body) -> dict:
    r = httpx.post(gw.url + "/v1/streams", json={"max_tokens": 5, "sim": SIM, **body}, headers=auth(who))
    assert r.status_code == 201, r.text
    return r.json()


def is_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status
    return body


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.every_server
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"},
                                     {"Authorization": "Bearer"}])
def test_no_or_bad_key_is_401(sec, headers, peer):
    with http_from(peer) as http:
        for method, path in [("POST", "/v1/streams"), ("POST", "/v1/sse"), ("GET", "/v1/streams/x"),
                             ("GET", "/v1/streams/x/sse"), ("DELETE", "/v1/streams/x")]:
            # A connection each: a server may close a kept-alive connection after answering before reading a
            # body (hypercorn did, under load), and a request sent on it meanwhile is lost: not what this checks.
            r = http.request(method, sec.url + path, json={}, headers={**headers, "Connection": "close"})
            is_problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(sec.url + "/healthz").status_code == 200


def test_keys_from_settings_and_file_work_and_are_never_logged(sec):
    for who in ("alice", "mallory"):  # one from GATEWAY_API_KEYS, one from the file
        sid = create(sec, who)["id"]
        assert journal(sec, sid)[0]["key"] == who
    text = sec.journal.read_text()
    assert not any(secret in text for secret in KEYS.values())


def test_another_key_gets_404_everywhere(sec):
    own = create(sec, "alice", max_tokens=200, sim=LONG)
    sid, other = own["id"], auth("bob")
    missing = is_problem(httpx.get(f"{sec.url}/v1/streams/{'x' * 24}", headers=other), 404)
    for method, path in [("GET", ""), ("GET", "/sse"), ("GET", "/ndjson"), ("DELETE", "")]:
        body = is_problem(httpx.request(method, f"{sec.url}/v1/streams/{sid}{path}", headers=other), 404)
        assert body["title"] == missing["title"]  # the same answer as for a stream that does not exist

    async def ws_tries():
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(f"{sec.ws_url}/v1/streams/{sid}/ws", additional_headers=other):
                pass
        async with connect(sec.ws_url + "/v1/ws", additional_headers=other) as sock:
            await sock.send(wsc.resume(sid, -1))
            refused = wsc.decode(await sock.recv())
        return info.value.response.status_code, refused

    status, refused = run(ws_tries())
    assert status == 404 and isinstance(refused, Error) and refused.code == "not_found"
    # The owner still has it, untouched.
    state = httpx.get(f"{sec.url}/v1/streams/{sid}", headers=auth("alice")).json()
    assert state["status"] == "running"
    assert httpx.delete(f"{sec.url}/v1/streams/{sid}", headers=auth("alice")).status_code == 204


def test_stream_ids_are_long_and_random(sec):
    ids = {create(sec, "alice")["id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(len(base64.urlsafe_b64decode(i + "==")) * 8 >= 128 for i in ids)


@pytest.mark.every_server
def test_attach_token_in_the_url_replaces_the_header(sec, peer):
    own = create(sec, "alice", max_tokens=8, prompt="tok", seed=3)
    assert own["token"] and own["sse"].endswith("?token=" + own["token"])
    http = http_from(peer)

    r = http.get(sec.url + own["ndjson"])  # no Authorization header
    assert r.status_code == 200
    tokens = [json.loads(line) for line in r.text.splitlines() if '"token"' in line]
    assert "".join(t["text"] for t in tokens) == expected_text("tok", 3, 8)

    other = create(sec, "alice")
    assert http.get(f"{sec.url}/v1/streams/{other['id']}/sse?token={own['token']}").status_code == 401
    head, mac = own["token"].split(".")
    forged = base64.urlsafe_b64encode(b"9999999999.bob").rstrip(b"=").decode() + "." + mac
    assert http.get(f"{sec.url}/v1/streams/{own['id']}/sse?token={forged}").status_code == 401
    # A token grants attach, nothing else.
    assert http.delete(f"{sec.url}/v1/streams/{own['id']}?token={own['token']}").status_code == 401
    http.close()

    async def ws_attach():
        async with connect(sec.ws_url + own["ws"]) as sock:
            events = [wsc.decode(await sock.recv())]
            while events[-1].type not in ("done", "error"):
                events.append(wsc.decode(await sock.recv()))
            return events

    events = run(ws_attach())
    assert [e.type for e in events][-1] == "done" and len(events) == 10


def test_attach_tokens_expire():
    from gateway.auth import Auth, Unauthorized

    a = Auth(Settings(api_keys="k=s", attach_token_ttl_s=1))
    token = a.token("sid", "k")
    assert a.check_token(token, "sid")[0] == "k"
    time.sleep(2.1)
    with pytest.raises(Unauthorized, match="expired"):
        a.check_token(token, "sid")


# -- browser safety ---------------------------------------------------------------------------


@pytest.mark.every_server
def test_websocket_origin_allow_list(sec):
    async def go(origin):
        headers = auth("erin") | ({"Origin": origin} if origin else {})
        try:
            async with connect(sec.ws_url + "/v1/ws", additional_headers=headers) as sock:
                await sock.send(wsc.start(max_tokens=2, sim=SIM))
                return wsc.decode(await sock.recv()).type
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    assert run(go("https://evil.example")) == 403
    assert run(go(ORIGIN)) == "meta"
    assert run(go(None)) == "meta"  # not a browser: no Origin to check


def test_cors_from_settings(sec):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    ok = httpx.options(sec.url + "/v1/streams", headers={"Origin": ORIGIN, **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    bad = httpx.options(sec.url + "/v1/streams", headers={"Origin": "https://evil.example", **pre})
    assert "access-control-allow-origin" not in bad.headers
    r = httpx.post(sec.url + "/v1/streams", json={"max_tokens": 1}, headers={"Origin": ORIGIN, **auth("alice")})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-stream-id" in r.headers["access-control-expose-headers"].lower()


def test_cors_star_is_refused_with_keys():
    with pytest.raises(ValueError, match="not '\\*'"):
        create_app(Settings(api_keys="k=s", allowed_origins=["*"]))


# -- limits -----------------------------------------------------------------------------------


def test_requests_per_second_per_key_429(sec):
    with httpx.Client(base_url=sec.url) as client:
        started, passed, limited = time.monotonic(), 0, None
        for _ in range(400):  # 20/s with a burst of 40: a 429 comes long before 400, however slow the box
            r = client.get("/v1/streams/nope", headers=auth("carol"))
            if r.status_code == 429:
                limited = r
                break
            assert r.status_code == 404
            passed += 1
        elapsed = time.monotonic() - started
        other = client.get("/v1/streams/nope", headers=auth("dave"))  # another key has its own budget
    assert limited is not None and 40 <= passed <= 40 + 20 * elapsed + 2
    body = is_problem(limited, 429)
    assert body["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert other.status_code == 404
    time.sleep(1.2)  # the bucket refills
    assert httpx.get(sec.url + "/v1/streams/nope", headers=auth("carol")).status_code == 404


def test_concurrent_streams_per_key_429(sec):
    ids = [create(sec, "dave", max_tokens=500, sim=LONG)["id"] for _ in range(3)]
    r = httpx.post(sec.url + "/v1/sse", json={"max_tokens": 2}, headers=auth("dave"))
    assert is_problem(r, 429)["code"] == "too_many_streams" and int(r.headers["retry-after"]) >= 1

    async def ws_start():
        async with connect(sec.ws_url + "/v1/ws", additional_headers=auth("dave")) as sock:
            await sock.send(wsc.start(max_tokens=2, sim=SIM))
            refused = wsc.decode(await sock.recv())
            httpx.delete(f"{sec.url}/v1/streams/{ids[0]}", headers=auth("dave"))
            await sock.send(wsc.start(max_tokens=2, sim=SIM))  # the socket stays usable
            return refused, [wsc.decode(await sock.recv()).type for _ in range(4)]

    refused, events = run(ws_start())
    assert refused.code == "too_many_streams" and refused.retryable
    assert events == ["meta", "token", "token", "done"]
    assert create(sec, "erin")  # other keys are not limited by dave's streams
    for sid in ids:
        httpx.delete(f"{sec.url}/v1/streams/{sid}", headers=auth("dave"))


def test_clients_per_stream_429(sec):
    own = create(sec, "frank", max_tokens=200, sim=LONG)

    async def go():
        async with httpx.AsyncClient(base_url=sec.url, headers=auth("frank")) as client:
            readers = [await client.send(client.build_request("GET", f"/v1/streams/{own['id']}/sse"), stream=True)
                       for _ in range(3)]
            fourth = await client.get(f"/v1/streams/{own['id']}/ndjson")
            for r in readers:
                assert r.status_code == 200
                await r.aclose()
            return fourth

    r = run(go())
    assert is_problem(r, 429)["code"] == "too_many_clients"
    httpx.delete(f"{sec.url}/v1/streams/{own['id']}", headers=auth("frank"))


def test_websocket_message_rate(sec):
    async def go():
        async with connect(sec.ws_url + "/v1/ws", additional_headers=auth("erin")) as sock:
            for _ in range(30):
                await sock.send(wsc.cancel())
            got = []
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    got.append(wsc.decode(await sock.recv()))
            return got, info.value.rcvd

    got, close = run(go())
    assert close.code == 1008 and "too many" in close.reason
    assert got[-1].code == "rate_limited"
    assert 5 <= sum(e.code == "no_stream" for e in got) < 30  # the burst passed, the rest did not


def test_connections_per_process_503():
    with gateway({"GATEWAY_MAX_CONNECTIONS": "3"}) as gw:
        async def go():
            async with httpx.AsyncClient(base_url=gw.url) as client:
                held = [await client.send(client.build_request("POST", "/v1/sse", json={"max_tokens": 100,
                                                                                          "sim": LONG}), stream=True)
                        for _ in range(3)]
                refused = await client.get("/v1/streams/none")
                health = await client.get("/healthz")  # exempt: a full replica still answers its balancer
                with pytest.raises(websockets.InvalidStatus) as info:
                    async with connect(gw.ws_url + "/v1/ws"):
                        pass
                for r in held:
                    await r.aclose()
                await asyncio.sleep(0.3)
                again = await client.get("/healthz")
                return refused, health, info.value.response, again

        refused, health, ws_refused, again = run(go())
        assert is_problem(refused, 503)["code"] == "too_many_connections"
        assert health.status_code == 200 and health.json()["active_streams"] == 3
        assert int(refused.headers["retry-after"]) >= 1
        assert ws_refused.status_code == 503
        assert again.status_code == 200
        assert gw.metrics()['gateway_refused_total{reason="connections"}'] >= 2


# -- slow consumers ---------------------------------------------------------------------------


def stall(gw, path: str) -> socket.socket:
    """A client that sends its request and never reads: its small receive buffer fills at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    upgrade = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") if "/ws" in path else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}\r\n".encode())
    return sock


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("transport", ["sse", "ndjson", "ws"])
def test_stalled_reader_is_cut_while_a_normal_reader_finishes_on_time(sec, transport):
    n, who = 100_000, {"sse": "grace", "ndjson": "heidi", "ws": "ivan"}[transport]
    # ~6 s, 7 MB: more than the kernel buffers hold, at a pace this Python client keeps up with on a busy box.
    sim = {"ttft_ms": 10, "itl_ms": 0.06, "jitter": 0}
    label = "sse_get" if transport == "sse" else transport  # an attach by GET .../sse (gateway/names.py)
    slow_before = sec.metrics()[f'gateway_slow_cuts_total{{transport="{label}"}}']

    async def go():
        async with Client(sec.url, api_key=KEYS[who]) as client:
            offset = time.time() - time.perf_counter()
            # The control: the same stream with no stalled neighbour, read by the same client on this machine.
            alone = await client.create("alone", max_tokens=n, sim=sim)
            control = await client.stream(transport, stream_id=alone["id"])
            own = await client.create("slow", max_tokens=n, sim=sim)
            stalled = stall(sec, own[transport])  # the attach URL with its token
            result = await client.stream(transport, stream_id=own["id"])
            return own, stalled, result, result.arrivals[-1] + offset, (alone, control.arrivals[-1] + offset)

    own, stalled, result, done_at, (alone, alone_done_at) = run(go())
    try:
        assert result.done is not None and result.text == expected_text("slow", 0, n)
        # The stalled connection is cut. On a loaded box the normal reader may fall behind too (16,666
        # tokens/s is a lot for a Python client) and be cut for its own lag; then it resumed each time. So
        # the cuts are exactly the normal reader's resumes plus one: the stalled reader's, which never comes
        # back (a cut of the wrong reader would leave the stalled one uncut and fail here).
        cuts = lambda: [r for r in journal(sec, own["id"]) if r["event"] == "cut"]  # noqa: E731
        cut = wait_for(lambda: len(cuts()) > result.reconnects and cuts())
        assert len(cut) == result.reconnects + 1, (cut, result.reconnects)
        assert all(c["reason"] in ("slow_send", "slow_lag") and c["transport"] == label for c in cut), cut
        ended = wait_for(lambda: [r for r in journal(sec, own["id"]) if r["event"] == "ended"])[0]
        assert ended["status"] == "done"  # the cut did not end the stream
        # On time: the normal reader finished about as soon after the generation's end as the same client
        # did with no stalled neighbour (a reader held back until the slow one's cut would be seconds later).
        # Reading 100,000 events costs this Python client seconds itself on a busy machine: hence the control.
        alone_ended = next(r for r in journal(sec, alone["id"]) if r["event"] == "ended")
        late, late_alone = done_at - ended["ts"], alone_done_at - alone_ended["ts"]
        if not result.reconnects:  # a reader cut for its own lag waited out its reconnect backoff: not "on time"
            assert late < 2 * max(late_alone, 0.5) + 1.0, (late, late_alone)
        assert sec.metrics()[f'gateway_slow_cuts_total{{transport="{label}"}}'] >= slow_before + 1
    finally:
        stalled.close()

    # The stream stays resumable for the client that was cut: exactly the last 10 tokens and `done`.
    tail = run(wire.read(sec.url, transport, stream_id=own["id"], after=n - 10, headers=auth(who)))
    wire.assert_exact(tail.events, n - 9, n + 1)
    assert tail.text == expected_text("slow", 0, n)[-len(tail.text):] and len(tail.tokens) == 10


@pytest.mark.every_server
def test_stalled_reader_of_an_ended_stream_is_cut_by_time(sec):
    own = create(sec, "judy", max_tokens=70_000, sim={"ttft_ms": 0, "itl_ms": 0, "jitter": 0})
    wait_for(lambda: httpx.get(f"{sec.url}/v1/streams/{own['id']}", headers=auth("judy")).json()["status"] == "done")
    stalled = stall(sec, own["sse"])  # ~5 MB backlog in one write; the final write then waits
    try:
        cut = wait_for(lambda: [r for r in journal(sec, own["id"]) if r["event"] == "cut"])[0]
        assert cut["reason"] == "slow_send" and cut["duration_s"] >= 2
        info = wait_for(lambda: (s := httpx.get(f"{sec.url}/v1/streams/{own['id']}", headers=auth("judy")).json())
                        ["clients"] == 0 and s)
        assert info["status"] == "done"
    finally:
        stalled.close()


# -- lifecycle logs ---------------------------------------------------------------------------


def test_lifecycle_lines(sec):
    own = create(sec, "alice", prompt="a secret prompt", max_tokens=30, sim={**SIM, "drop_after": 10})

    async def go():
        async with Client(sec.url, api_key=KEYS["alice"]) as client:
            return await client.stream("ndjson", stream_id=own["id"])

    result = run(go())
    assert result.reconnects == 1 and result.done is not None
    records = wait_for(lambda: (rs := journal(sec, own["id"])) and len(rs) == 5 and rs)
    # The generation ends on its own clock (150 ms here), so "ended" may come before or after the reader's
    # lines; the reader's own lines keep their order.
    ended = next(r for r in records if r["event"] == "ended")
    readers = [r for r in records if r is not ended]
    assert [r["event"] for r in records][0] == "created"
    assert [r["event"] for r in readers] == ["created", "attached", "cut", "resumed"], records
    created, attached, cut, resumed = readers
    assert created["prompt_bytes"] == len("a secret prompt") and "prompt" not in created
    assert all(r["key"] == "alice" for r in records)
    assert attached["transport"] == resumed["transport"] == cut["transport"] == "ndjson"
    assert cut["reason"] == "server" and cut["last_seq"] == 10 and cut["duration_s"] >= 0
    assert resumed["after"] == 10
    assert ended["status"] == "done" and ended["tokens"] == 30 and ended["duration_s"] > 0
    assert "a secret prompt" not in sec.journal.read_text()


def test_prompts_logged_only_when_allowed(tmp_path):
    log = tmp_path / "j.jsonl"
    with gateway({"GATEWAY_LOG_PROMPTS": "true", "GATEWAY_LOG_FILE": str(log), "GATEWAY_LOG_LEVEL": "info"}) as gw:
        httpx.post(gw.url + "/v1/ndjson", json={"prompt": "visible prompt", "max_tokens": 2, "sim": SIM})
    created = [json.loads(line) for line in log.read_text().splitlines() if '"created"' in line]
    assert created[0]["prompt"] == "visible prompt" and created[0]["key"] is None


def test_client_reports_a_refusal(sec):
    async def go():
        async with Client(sec.url, api_key="wrong") as client:
            await client.create()

    with pytest.raises(GatewayError) as info:
        run(go())
    assert info.value.status == 401
