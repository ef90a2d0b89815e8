"""The benchmark's load client: N streams kept open, lateness of every token.

Lean on purpose, so the server is what gets measured: raw asyncio protocols
on uvloop, no HTTP or WebSocket library on the per-event path. Each
connection runs one stream after another (a closed loop at N concurrent
streams). It counts token events by their JSON `"type":"token"` marker
straight off the wire (chunk and frame headers never hold that string, and
JSON escapes every quote inside a text), and stamps each with the time its
bytes arrived. A token's schedule is known in advance (jitter 0): token k is
due at created + ttft + k * itl, where `created` is the server's wall-clock
time in the meta event (read off the wire once per stream), so lateness
needs no decoding. The time from sending the request to `created` is kept
apart as the start delay. One witness stream per run is decoded in full with
the project's codecs and checked.

    python -m loadtests.bench.load --port 8000 --transport sse --n 1000 --server-pid PID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import time

import orjson
from websockets.frames import Frame, Opcode

from gateway.names import FORMAT, parse

from ..procs import proc_stat, proc_wait

__all__ = ["main", "TRANSPORTS"]

TRANSPORTS = ("sse_post", "sse_get", "ndjson", "ws")  # gateway/names.py
TOKEN, DONE = b'"token"', b'"done"'
CREATED = re.compile(rb'"created": ?([0-9.]+)')
STREAM_ID = re.compile(rb'"id": ?"([^"]+)"')
_TAIL = len(TOKEN) - 1
_BUCKETS = 60_000  # lateness histogram: 1 ms buckets up to 60 s


class Run:
    """Shared state of all connections: the schedule, the window and the histogram."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ttft = args.ttft_ms / 1000
        self.itl = args.itl_ms / 1000
        body = {"prompt": "bench", "max_tokens": args.tokens,
                "sim": {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms, "jitter": 0}}
        self.body = orjson.dumps(body)
        self.hist = [0] * _BUCKETS
        self.starts = [0] * _BUCKETS  # request sent -> stream created, 1 ms buckets
        self.counting = False
        self.tokens = 0  # tokens seen in the window
        self.streams = 0  # streams finished in the window
        self.errors = 0
        self.open = 0

    def request(self) -> bytes:
        a = self.args
        if a.transport == "ws":
            return (b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        path = b"streams" if a.transport == "sse_get" else FORMAT[a.transport].encode()
        return (b"POST /v1/%b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (path, len(self.body), self.body))

    @staticmethod
    def attach(stream_id: bytes) -> bytes:
        return b"GET /v1/streams/%b/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % stream_id


class Conn(asyncio.Protocol):
    """One connection running streams back to back (HTTP keep-alive, or one socket for WS)."""

    def __init__(self, run: Run, done: asyncio.Future) -> None:
        self.run = run
        self.closed = done
        self.ws = run.args.transport == "ws"
        self.by_id = run.args.transport == "sse_get"
        self.creating = False  # sse_get: waiting for the created stream's id
        self.start_frame = Frame(Opcode.TEXT, b'{"type":"start",' + run.body[1:]).serialize(mask=True, extensions=[])
        self.upgraded = False
        self.tail = b""
        self.k = 0
        self.t0 = 0.0
        self.base = 0.0  # when token 0 is due; 0 until the meta event is read
        self.ended = False

    def connection_made(self, transport) -> None:
        self.t = transport
        self.run.open += 1
        if self.ws:
            transport.write(self.run.request())
        else:
            self._begin()

    def _begin(self) -> None:
        self.k = 0
        self.ended = False
        self.tail = b""
        self.base = 0.0
        self.t0 = time.time()
        self.creating = self.by_id
        self.t.write(self.start_frame if self.ws else self.run.request())

    def _created(self, data: bytes) -> None:
        """sse_get: the 201 of POST /v1/streams (a JSON body of Content-Length bytes), then the attach."""
        buf = self.tail + data
        head, sep, body = buf.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head) if sep else None
        if length is None or len(body) < int(length.group(1)):
            self.tail = buf
            return
        m = STREAM_ID.search(body)
        if not head.startswith(b"HTTP/1.1 201") or m is None:
            self._fail()
            return
        self.tail = b""
        self.creating = False
        self.t.write(Run.attach(m.group(1)))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.creating:
            self._created(data)
            return
        if self.ws and not self.upgraded:
            head, sep, data = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail()
                return
            self.upgraded = True
            self._begin()
            if not data:
                return
        if self.ended:  # past the done event: wait for the chunked terminator
            if (self.tail + data).endswith(b"0\r\n\r\n"):
                self._begin()
            else:
                self.tail = (self.tail + data)[-5:]
            return
        buf = self.tail + data
        run = self.run
        if not self.base:
            if buf.startswith(b"HTTP/1.1 ") and buf[9:10] != b"2":
                self._fail()
                return
            m = CREATED.search(buf)
            if m is None:
                self.tail = buf[-4096:]  # the meta event is split: wait for the rest
                return
            created = float(m.group(1))
            self.base = created + run.ttft
            if run.counting:
                start = int((created - self.t0) * 1000)
                run.starts[0 if start < 0 else start if start < _BUCKETS else _BUCKETS - 1] += 1
            buf = buf[m.end():]
            self.tail = b""
        new = buf.count(TOKEN) - self.tail.count(TOKEN)
        if new:
            if run.counting:
                run.tokens += new
                hist, base, itl = run.hist, self.base, run.itl
                for k in range(self.k, self.k + new):
                    late = int((now - base - k * itl) * 1000)
                    hist[0 if late < 0 else late if late < _BUCKETS else _BUCKETS - 1] += 1
            self.k += new
        if DONE in buf:
            if run.counting:
                run.streams += 1
            if self.k != run.args.tokens:
                run.errors += 1
            self.ended = True
            if self.ws:
                self._begin()
                return
            self.tail = buf[-5:]
            if buf.endswith(b"0\r\n\r\n"):
                self._begin()
            return
        self.tail = buf[-_TAIL:]

    def _fail(self) -> None:
        self.run.errors += 1
        self.t.close()

    def connection_lost(self, exc) -> None:
        self.run.open -= 1
        if not self.closed.done():
            self.closed.set_result(None)


def _witness_imports():
    # Imported before the measured window: an import inside it (httpx, the corpus) blocks this
    # loop for ~100 ms, and every token that arrives meanwhile would be stamped that late.
    sys.path.insert(0, os.getcwd())
    from gateway.client import Client
    from gateway.sources.simulated import expected_text

    expected_text("warm-up", 1, 1)
    return Client, expected_text


async def witness(args: argparse.Namespace) -> str:
    """One stream decoded in full with the project's codecs: the count check, and the gateway's text."""
    Client, expected_text = _witness_imports()
    fields = {"max_tokens": args.tokens, "seed": 7, "sim": {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms,
                                                           "jitter": 0}}
    async with Client(f"http://127.0.0.1:{args.port}") as client:
        result = await client.stream(args.transport, "witness", **fields)  # sse_get: create, then attach
    if result.cut or result.done is None:
        return "cut"
    if len(result.tokens) != args.tokens:
        return f"{len(result.tokens)} tokens"
    if args.check_text and result.text != expected_text("witness", 7, args.tokens):
        return "wrong text"
    return "ok"


async def warm_up(args: argparse.Namespace) -> None:
    """Three short streams before the idle RSS is read: the code and caches the first streams load
    (shared by every later one) are not counted as per-stream memory."""
    Client, _ = _witness_imports()
    fields = {"max_tokens": 3, "sim": {"ttft_ms": 0, "itl_ms": 1, "jitter": 0}}
    async with Client(f"http://127.0.0.1:{args.port}") as client:
        for i in range(3):
            try:
                await client.stream(args.transport, "warm", seed=i, **fields)
            except Exception:  # a peer without the gateway's full API: its idle RSS is read as it is
                return
    await asyncio.sleep(0.3)


async def hold(run: Run, port: int, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        closed = loop.create_future()
        try:
            await loop.create_connection(lambda: Conn(run, closed), "127.0.0.1", port)
        except OSError:
            run.errors += 1
            await asyncio.sleep(0.1)
            continue
        await asyncio.wait([closed, loop.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)


async def lag_probe(out: list[float], interval: float = 0.05) -> None:
    """How late this client's own loop runs: a saturated client shows up here."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(interval)
        out.append(loop.time() - t - interval)


def percentile(hist: list[int], q: float) -> float:
    total = sum(hist)
    if not total:
        return float("nan")
    want, seen = q * total, 0
    for ms, count in enumerate(hist):
        seen += count
        if seen >= want:
            return float(ms)
    return float(len(hist) - 1)


async def bench(args: argparse.Namespace) -> dict:
    run = Run(args)
    _witness_imports()
    stop = asyncio.Event()
    pid = args.server_pid
    await warm_up(args)
    rss_idle = proc_stat(pid).rss
    holders = []
    ramp = args.ramp
    for i in range(args.n):
        holders.append(asyncio.create_task(hold(run, args.port, stop)))
        if ramp:
            await asyncio.sleep(ramp / args.n)
    await asyncio.sleep(args.warmup)
    lags: list[float] = []
    probe = asyncio.create_task(lag_probe(lags))
    witness_task = asyncio.create_task(witness(args))  # a stream started in the steady state
    cpu0, me0, t0 = proc_stat(pid).cpu_s, resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    wait0, mywait0 = proc_wait(pid), proc_wait(os.getpid())
    run.counting = True
    await asyncio.sleep(args.duration)
    run.counting = False
    cpu1, me1, t1 = proc_stat(pid).cpu_s, resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    wait1, mywait1 = proc_wait(pid), proc_wait(os.getpid())
    rss = proc_stat(pid).rss
    open_now = run.open
    probe.cancel()
    try:
        check = await asyncio.wait_for(witness_task, args.tokens * args.itl_ms / 1000 + 30)
    except (asyncio.TimeoutError, OSError) as exc:
        check = f"failed: {type(exc).__name__}"
    stop.set()
    for h in holders:
        h.cancel()
    wall = t1 - t0
    tokens = run.tokens
    server_cpu = cpu1 - cpu0
    client_cpu = (me1.ru_utime + me1.ru_stime) - (me0.ru_utime + me0.ru_stime)
    lags.sort()
    return {
        "transport": args.transport, "n": args.n, "open": open_now, "seconds": wall,
        "events": tokens, "events_per_s": tokens / wall, "offered_per_s": args.n * args.tokens / (run.ttft + (args.tokens - 1) * run.itl),
        "streams": run.streams, "errors": run.errors,
        "server_cpu_s": server_cpu, "us_per_event": server_cpu / tokens * 1e6 if tokens else float("nan"),
        "server_cpu_share": server_cpu / wall,
        "late_p50_ms": percentile(run.hist, 0.5), "late_p99_ms": percentile(run.hist, 0.99),
        "late_max_ms": percentile(run.hist, 1.0),
        "start_p50_ms": percentile(run.starts, 0.5), "start_p99_ms": percentile(run.starts, 0.99),
        "rss_idle": rss_idle, "rss": rss, "kb_per_stream": (rss - rss_idle) / 1024 / max(open_now, 1),
        "client_cpu_share": client_cpu / wall,
        "server_wait_share": (wait1 - wait0) / wall, "client_wait_share": (mywait1 - mywait0) / wall,
        "client_lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000 if lags else float("nan"),
        "witness": check,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--transport", type=lambda name: parse(name).value, choices=TRANSPORTS, required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--ramp", type=float, default=2.0, help="seconds over which the N connections open")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds after the ramp before measuring")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    p.add_argument("--check-text", action="store_true", help="the witness compares text (the gateway only)")
    args = p.parse_args(argv)
    import uvloop

    result = uvloop.run(bench(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
