"""Accepting in bursts (gateway/accept.py): the contract with uvicorn and uvloop, and admission at accept.

A connection queued in the kernel is invisible to the server until accepted; libuv accepts one per
loop iteration (libuv/libuv#3696). These tests queue connections in the kernel first (a blocking
connect returns once the kernel has completed the handshake), then count loop iterations.
"""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import uvloop

from gateway.accept import Listener, Loop, configure

from .support import gateway

N = 200  # connections queued before the loop looks


class _Made(asyncio.Protocol):
    def __init__(self, made: list, data: list) -> None:
        self.made, self.data = made, data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)

    def data_received(self, data: bytes) -> None:
        self.data.append(data)


def _queued(loop_class, n: int, before=None, iterations: int = 8):
    """Queue `n` connections on a listening socket served by `loop_class`'s create_server, let the loop
    run `iterations` iterations, and return (server, connections made, data received, clients)."""
    loop = loop_class()
    made: list = []
    data: list = []
    clients: list[socket.socket] = []

    async def go():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        port = sock.getsockname()[1]
        for _ in range(n):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        if before:
            before(clients)
        server = await asyncio.get_running_loop().create_server(lambda: _Made(made, data), sock=sock, backlog=1024)
        for _ in range(iterations):
            await asyncio.sleep(0)  # one loop iteration each
        server.close()
        return server

    try:
        server = loop.run_until_complete(go())
        return server, made, data, clients
    finally:
        for c in clients:
            c.close()
        loop.close()


def test_a_queued_burst_is_accepted_in_a_few_iterations_where_stock_uvloop_takes_one_per_iteration():
    server, made, _, _ = _queued(Loop, N)
    assert isinstance(server, Listener)  # uvicorn's create_server(sock=...) path lands here
    assert len(made) == N, f"{len(made)} of {N} connections accepted in 8 loop iterations"
    assert server.accepted == N and server.wakeups <= 8
    # Why this module exists: stock uvloop (libuv >= 1.45) accepts one connection per iteration.
    _, stock, _, _ = _queued(uvloop.Loop, N)
    assert len(stock) <= 9, f"stock uvloop accepted {len(stock)} in 8 iterations: libuv accepts in bulk again?"


REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def test_the_screen_answers_a_refused_request_at_accept_and_passes_the_others_on():
    def screen(first: bytes) -> bytes | None:
        return REFUSAL if first.startswith(b"POST /v1/sse ") else None

    def send(clients):
        clients[0].sendall(b"POST /v1/sse HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        clients[1].sendall(b"GET /v1/streams/abc/sse HTTP/1.1\r\nHost: x\r\n\r\n")
        # clients[2] sends nothing yet: served the usual way

    configure(screen=screen)
    try:
        server, made, data, _ = _queued(Loop, 3, before=send)
    finally:
        configure()
    assert server.screened == 1 and len(made) == 2  # the refused one never got a protocol
    assert b"".join(data) == b"GET /v1/streams/abc/sse HTTP/1.1\r\nHost: x\r\n\r\n"  # nothing lost by the peek


def test_the_gateway_accepts_through_the_listener_and_refuses_a_create_before_reading_its_body():
    with gateway({"GATEWAY_MAX_STREAMS": "1"}) as gw:
        long = {"prompt": "hold", "max_tokens": 2000, "sim": {"ttft_ms": 10, "itl_ms": 50, "jitter": 0}}
        r = httpx.post(gw.url + "/v1/streams", json=long, timeout=10)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        # Past capacity a create is refused by the gate or at accept, before the body is parsed: a body
        # the app would answer 422 gets the 503 (with Retry-After and the problem body) instead.
        r = httpx.post(gw.url + "/v1/sse", content=b"{not json", headers={"content-type": "application/json"},
                       timeout=10)
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json" and 1 <= int(r.headers["retry-after"]) <= 3
        body = json.loads(r.content)
        assert body["code"] == "over_capacity" and body["status"] == 503
        # Every stream-creating route, the LLM-format ones included: refused before the body is read.
        for path in ("/v1/streams", "/v1/ndjson", "/v1/chat/completions", "/v1/responses", "/v1/messages"):
            r = httpx.post(gw.url + path, content=b"{not json", headers={"content-type": "application/json"},
                           timeout=10)
            assert r.status_code == 503 and r.json()["code"] == "over_capacity", (path, r.status_code, r.text)
        # Attaching is not a create: served.
        with httpx.stream("GET", f"{gw.url}/v1/streams/{sid}/ndjson", timeout=10) as r:
            assert r.status_code == 200
            assert json.loads(next(r.iter_lines()))["type"] == "meta"
        m = gw.metrics()
        assert m["gateway_connections_accepted_total"] >= 4 and m["gateway_accept_wakeups_total"] >= 1
        assert m['gateway_refused_total{reason="capacity"}'] == 6
        httpx.delete(f"{gw.url}/v1/streams/{sid}", timeout=10)
