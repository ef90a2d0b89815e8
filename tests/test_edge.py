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

from .support import ROOT, HttpServer, QuietHandler, run, wait_http

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


# -- the connection edge ------------------------------------------------------------------------

EDGE = {"GATEWAY_MAX_CONNECTIONS": "20", "GATEWAY_MAX_PENDING_CONNECTIONS": "50", "GATEWAY_HEADER_TIMEOUT_S": "2",
        "GATEWAY_MAX_HEADER_BYTES": "16384", "GATEWAY_LOG_LEVEL": "warning"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def closed(sock: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before closing, or None if it is still open after `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_slow_headers_are_evicted_and_timed_out_while_real_clients_are_served(tmp_path):
    with proc(tmp_path, **EDGE) as gw:
        slow = []
        for _ in range(300):  # 300 half-sent heads against 20 + 50 places
            s = socket.create_connection(("127.0.0.1", gw.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        with httpx.Client(timeout=10) as http:
            ok = [http.get(gw.url + "/healthz").status_code for _ in range(10)]
            r = http.post(gw.url + "/v1/ndjson", json={"max_tokens": 5, "sim": {"ttft_ms": 1, "itl_ms": 1}})
        assert ok == [200] * 10
        assert r.status_code == 200 and r.text.splitlines()[-1].startswith('{"type":"done"')
        t0 = time.monotonic()
        replies = [closed(s, 15) for s in slow]
        assert all(reply is not None for reply in replies), "a half-sent head was held past the header timeout"
        assert time.monotonic() - t0 < 12
        assert sum(reply.startswith(b"HTTP/1.1 408") for reply in replies) >= 40  # the last ones: out of time
        for s in slow:
            s.close()
        refused = httpx.get(gw.url + "/metrics").text
        assert 'gateway_refused_total{reason="slow_headers"}' in refused
        assert 'gateway_refused_total{reason="header_timeout"}' in refused


def test_a_slow_second_request_on_a_keep_alive_connection_is_timed_out(tmp_path):
    with proc(tmp_path, **EDGE) as gw:
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            body = b'{"max_tokens": 2, "sim": {"ttft_ms": 1, "itl_ms": 1}}'
            # A chunked body first: the gate must find where the next request starts.
            s.sendall(b"POST /v1/complete HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            s.settimeout(10)
            first = s.recv(65536)
            while b"\r\n\r\n" not in first or len(first.split(b"\r\n\r\n", 1)[1]) < int(
                    first.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
                first += s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200") and b'"finish_reason":"stop"' in first, first
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ...and never the blank line
            t0 = time.monotonic()
            reply = closed(s, 10)
            assert reply is not None and reply.startswith(b"HTTP/1.1 408")
            assert 1.5 < time.monotonic() - t0 < 8


def test_huge_headers_get_431_with_memory_bounded(tmp_path):
    with proc(tmp_path, **EDGE) as gw:
        before = rss_mb(gw.proc.pid)
        replies = []
        for _ in range(20):  # 20 x a 10 MB header line, sent until the server closes
            with socket.create_connection(("127.0.0.1", gw.port)) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                chunk = b"a" * 65536
                try:
                    for _ in range(160):
                        s.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                replies.append(closed(s, 10))
        after = rss_mb(gw.proc.pid)
        assert sum(1 for r in replies if r and r.startswith(b"HTTP/1.1 431")) >= 15, [r[:40] for r in replies if r]
        assert after - before < 30, f"RSS {before:.0f} -> {after:.0f} MB"
        assert httpx.get(gw.url + "/healthz").status_code == 200


# -- bad input that must cost neither the request's connection nor a 500 --------------------------


def test_a_lone_surrogate_is_422_and_the_connection_stays(tmp_path):
    with proc(tmp_path, GATEWAY_LOG_LEVEL="warning") as gw:
        bodies = [b'{"prompt": "a\\ud800b", "max_tokens": 2}',
                  b'{"messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 2}']
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.settimeout(10)
            reader = s.makefile("rb")
            for path in ("/v1/streams", "/v1/sse", "/v1/ndjson", "/v1/complete"):
                for body in bodies:
                    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
                    status, headers, payload = read_response(reader)
                    assert status == 422, (path, payload)
                    assert headers[b"content-type"] == b"application/problem+json"
                    assert b"surrogate" in payload
            # The same keep-alive connection still serves a good request.
            good = b'{"max_tokens": 2, "sim": {"ttft_ms": 1, "itl_ms": 1}}'
            s.sendall(b"POST /v1/complete HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(good), good))
            status, _, payload = read_response(reader)
            assert status == 200 and json.loads(payload)["finish_reason"] == "stop"

        async def ws():
            async with connect(gw.ws_url + "/v1/ws") as sock:
                await sock.send('{"type": "start", "prompt": "\\ud800"}')
                return wsc.decode(await sock.recv())

        refused = run(ws())
        assert refused.type == "error" and refused.code in ("bad_message", "invalid_request")  # (the codec refuses it)


def read_response(reader) -> tuple[int, dict[bytes, bytes], bytes]:
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers.get(b"content-length", b"0")))


@pytest.mark.parametrize("value", ["abc", "-3", "1_0", " 7", "\u0663", "1e3", "99999999999999999999999"])
def test_resume_points_are_plain_ascii_digits(gw, value):
    sid = httpx.post(gw.url + "/v1/streams", json={"max_tokens": 30, "sim": {"ttft_ms": 1, "itl_ms": 1}}).json()["id"]
    responses = [httpx.get(f"{gw.url}/v1/streams/{sid}/ndjson", params={"after": value})]
    if value == value.strip():  # (a header value's surrounding whitespace is not part of it, RFC 9110)
        raw = value.encode()
        responses.append(httpx.get(f"{gw.url}/v1/streams/{sid}/sse", headers={"Last-Event-ID": raw}))
    for r in responses:
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", (value, r.text)
    assert httpx.get(f"{gw.url}/v1/streams/{sid}/ndjson", params={"after": "10"}).status_code == 200


class BadUpstream(HttpServer):
    """A small OpenAI-compatible upstream of the test's own that misbehaves by model name."""

    RETRY = {"sup": "\u00b2", "nines": "9" * 400, "date": "Sun, 06 Nov 2044 08:49:37 GMT", "words": "soon",
             "seconds": "7"}

    def __init__(self) -> None:
        retry = self.RETRY

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                model = body["model"]
                if model in retry:
                    payload = b'{"error": {"message": "busy"}}'
                    self.send_response(503)
                    self.send_header("Retry-After", retry[model].encode().decode("latin-1"))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                # "long": an SSE line that never ends (8 MB and counting).
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    self._chunk(b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n')
                    self._chunk(b"data: ")
                    for _ in range(128):
                        self._chunk(b"x" * 65536)
                    time.sleep(5)
                except OSError:
                    pass
                self.close_connection = True

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        super().__init__(Handler)
        self.url += "/v1"


@pytest.fixture(scope="module")
def relayed(tmp_path_factory):
    upstream = BadUpstream()
    models = {name: {"kind": "openai", "base_url": upstream.url} for name in [*BadUpstream.RETRY, "long"]}
    with proc(tmp_path_factory.mktemp("relay"), GATEWAY_MODELS=json.dumps(models), GATEWAY_LOG_LEVEL="warning") as gw:
        yield gw
    upstream.close()


@pytest.mark.parametrize("model", list(BadUpstream.RETRY))
def test_an_upstream_retry_after_is_parsed_as_rfc_9110_and_bounded(relayed, model):
    expected = {"sup": None, "nines": "3600", "date": "3600", "words": None, "seconds": "7"}[model]
    body = {"model": model, "max_tokens": 3}
    with httpx.Client(base_url=relayed.url, timeout=20) as http:
        for path in ("/v1/streams", "/v1/sse", "/v1/ndjson", "/v1/complete"):
            r = http.post(path, json=body)
            assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", (path, r.text)
            assert r.headers.get("retry-after") == expected, (path, r.headers.get("retry-after"))

    async def ws():
        async with connect(relayed.ws_url + "/v1/ws") as sock:
            await sock.send(wsc.start(model=model, max_tokens=3))
            refused = wsc.decode(await sock.recv())
            await sock.send(wsc.start(max_tokens=2, sim={"ttft_ms": 1, "itl_ms": 1}))  # the socket stays usable
            return refused, [wsc.decode(await sock.recv()).type for _ in range(4)]

    refused, events = run(ws())
    assert refused.type == "error" and refused.code == "upstream_503"
    assert events == ["meta", "token", "token", "done"]


def test_an_upstream_line_without_end_is_capped(relayed):
    before = rss_mb(relayed.proc.pid)
    r = httpx.post(relayed.url + "/v1/ndjson", json={"model": "long", "max_tokens": 3}, timeout=20)
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [e["type"] for e in lines] == ["meta", "token", "error"]
    assert lines[-1]["code"] == "upstream_bad_data" and "over" in lines[-1]["message"]
    assert rss_mb(relayed.proc.pid) - before < 20


# -- amplification: what streams keep is bounded -------------------------------------------------


def test_kept_streams_are_bounded_oldest_ended_evicted_first(tmp_path):
    env = {**KEYS_ON, "GATEWAY_MAX_KEPT_BYTES": "3000000", "GATEWAY_MAX_KEPT_BYTES_PER_KEY": "1500000",
           "GATEWAY_MAX_TOKENS_LIMIT": "8192", "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_ATTACH_TOKEN_TTL_S": "300"}
    other = {"Authorization": f"Bearer {OTHER}"}
    fast = {"ttft_ms": 0, "itl_ms": 0, "jitter": 0}
    with proc(tmp_path, **env) as gw, httpx.Client(base_url=gw.url, timeout=30) as http:
        # One after another, each read to its end: the oldest ended ones make room for the new. (An ended
        # stream's log is kept compressed, ~7.5 bytes a token: 8,192 tokens take ~60 kB, and a new stream is
        # admitted against 8,192 x 64 bytes: past ~16 ended ones, each new one evicts the oldest.)
        ids = []
        for i in range(24):
            r = http.post("/v1/streams", json={"max_tokens": 8192, "seed": i, "sim": fast}, headers=AUTH)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
            assert http.get(f"/v1/streams/{ids[-1]}/ndjson", headers=AUTH).text.splitlines()[-1].startswith(
                '{"type":"done"')
        first = http.get(f"/v1/streams/{ids[0]}/ndjson", headers=AUTH)
        assert first.status_code == 410 and first.json()["code"] == "expired"
        last = http.get(f"/v1/streams/{ids[-1]}/ndjson", headers=AUTH)
        assert last.status_code == 200 and last.text.count('"type":"token"') == 8192
        evicted = gw_metric(gw, "gateway_streams_evicted_total")
        assert evicted >= 5

        # A flood of the largest answers at full speed: admitted within the bounds, the rest refused.
        before = rss_mb(gw.proc.pid)

        async def flood():
            async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
                body = {"max_tokens": 8192, "sim": fast}
                return await asyncio.gather(*(client.post("/v1/streams", json=body, headers=AUTH) for _ in range(200)),
                                            client.post("/v1/streams", json={"max_tokens": 5}, headers=other))

        *mine, theirs = run(flood())
        codes = [r.status_code for r in mine]
        # (ended ones are evicted as new ones come: more than 1.5 MB / 520 kB go through, never all)
        assert 1 <= codes.count(201) <= 40 and codes.count(429) >= 160, sorted(codes)
        assert {r.json()["code"] for r in mine if r.status_code == 429} <= {"too_much_kept"}
        assert all(int(r.headers["retry-after"]) >= 1 for r in mine if r.status_code == 429)
        assert theirs.status_code == 201  # another key still has its share
        assert rss_mb(gw.proc.pid) - before < 40


def gw_metric(gw, name: str) -> float:
    for line in httpx.get(gw.url + "/metrics", headers=AUTH).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name}")


# -- the low rows ---------------------------------------------------------------------------------


def test_limits_for_keys_sockets_and_the_open_endpoints(tmp_path):
    env = {**KEYS_ON, "GATEWAY_RATE_PER_KEY": "2", "GATEWAY_UNAUTHORIZED_PER_S": "2",
           "GATEWAY_MAX_CONNECTIONS": "2"}
    with proc(tmp_path, **env) as gw, httpx.Client(base_url=gw.url, timeout=20) as http:
        # /metrics and the docs need a key while keys are on (GATEWAY_METRICS_PUBLIC / DOCS_PUBLIC open them).
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert http.get(path).status_code == 401, path
        assert http.get("/healthz").status_code == 200
        # Wrong keys from one address: 401, then 429 once over the rate.
        wrong = [http.get("/v1/streams/x", headers={"Authorization": "Bearer nope"}).status_code for _ in range(12)]
        assert wrong[0] == 401 and wrong.count(429) >= 6, wrong

        async def ws_starts():
            async with connect(gw.ws_url + "/v1/ws", additional_headers=AUTH) as sock:
                replies = []
                for _ in range(8):  # a start per message: the key's request rate, like a POST
                    await sock.send(wsc.start(max_tokens=1, sim={"ttft_ms": 0, "itl_ms": 0}))
                    while True:
                        event = wsc.decode(await sock.recv())
                        if event.type in ("done", "error"):
                            replies.append(event)
                            break
                return replies

        time.sleep(1.5)  # the key's bucket refills
        replies = asyncio.run(ws_starts())
        assert sum(r.type == "done" for r in replies) <= 5
        assert sum(r.type == "error" and r.code == "rate_limited" for r in replies) >= 3

        # Denied upgrades: at INFO, and not one line pair per refusal when they come in a burst.
        async def denied():
            for _ in range(60):
                try:
                    async with connect(gw.ws_url + "/v1/ws"):
                        pass
                except Exception:
                    pass

        asyncio.run(denied())
        time.sleep(0.3)
        log = gw.text()
        assert "ERROR" not in log, log[-1500:]
        assert 0 < log.count("connection rejected") < 40

        # At the connection cap, /healthz and /metrics still answer.
        time.sleep(2.0)  # the key's bucket refills
        held = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(2)]
        for s in held:
            body = b'{"max_tokens": 2000, "sim": {"ttft_ms": 10, "itl_ms": 50}}'
            s.sendall(b"POST /v1/sse HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: "
                      b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body))
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        r = http.get("/v1/streams/x", headers=AUTH)
        assert r.status_code == 503 and r.json()["code"] == "too_many_connections"
        assert http.get("/healthz").status_code == 200
        assert http.get("/metrics", headers=AUTH).status_code == 200
        for s in held:
            s.close()


def test_line_separators_are_escaped_in_every_encoding():
    from gateway.codecs import ndjson, sse
    from gateway.events import Error, Token, from_json

    text = "a\u2028b\u2029c\x85d"
    for event in (Token(1, text), Error(2, "x", text, False)):
        for wire in (ndjson.encode(event), sse.encode(event)):
            assert "\u2028".encode() not in wire and "\u2029".encode() not in wire and "\x85".encode() not in wire
            assert len(wire.decode().splitlines()) == (1 if wire.endswith(b"\n") and b"data:" not in wire else
                                                       len(wire.decode().split("\n")) - 1)
        line = ndjson.encode(event).decode().splitlines()
        assert len(line) == 1 and from_json(line[0]) == event
