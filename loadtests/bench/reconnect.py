"""Reconnect storm: N clients on one replica that is killed (SIGKILL) all resume on the others.

Three gateway replicas (R1, R2, R3) and a generator G on one redis-server: G generates S streams; the
N clients (N/S per stream) attach to them through R1, which serves them from its mirrors. Once every
client has events, R1 is SIGKILLed. Each client resumes after the last seq it saw at the next replica
of its own list, as `gateway/client.py` does with several base URLs: half the clients list R2 first,
half R3 (a failed try moves on to the next one). Before each try a client waits:

- `--transport sse`: the server's `retry:` (as EventSource does), doubled per failed try; the replicas
  jitter it (`--retry-ms`, `--retry-jitter`: SSE_RETRY_MS, SSE_RETRY_JITTER);
- `--transport ndjson`: its own full-jitter backoff, uniform in [0, `--backoff-s`], doubled per failed try.

The clients are cheap enough to hold thousands of connections in this one process: one
`asyncio.Protocol` per connection, HTTP/1.1 chunked framing undone by hand, the events decoded with the
gateway's own codecs (`gateway.codecs.sse` / `ndjson`), and per client only the last seq kept: every
event must be the one after it (a gap or a duplicate is counted), from seq 0 to the terminal event.

Printed (one JSON row per run): R1's CPU per event delivered in the two seconds before the kill (its
steady cost with N clients on S mirrored streams), time from the kill until 50/99/100% of the cut clients got an event
from another replica (their response head, then their first event), the time from the start of the
try that resumed a client to that event (the replicas' share, without the client's wait), tries per client, gaps and
duplicates, which replicas took them, what Redis served them (XRANGE loads and catch-ups per stream
and per surviving replica, from Redis's own command counters) and the CPU the surviving replicas
spent, and the load average of this (shared) machine before and after.

    python -m loadtests.bench.reconnect --clients 2000 --streams 100 --tokens 400 --itl-ms 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time

import redis
import uvloop

from gateway.codecs import ndjson, sse
from gateway.events import Done, Error, Heartbeat, Reconnect

from ..procs import GatewayProcess, proc_stat
from .fleet import create_streams, raise_fd_limit, replicas

__all__ = ["main"]


class Connection(asyncio.Protocol):
    """One HTTP/1.1 attach: status line and headers, then a chunked body decoded with a gateway codec.

    `ended` resolves to "done" (a terminal event), "cut" (the connection ended first), "refused" (not 200)
    or "skipped" (a seq out of order: counted, then the connection is dropped and resumed)."""

    def __init__(self, client: Client, decoder: sse.Decoder | ndjson.Decoder) -> None:
        self.client = client
        self.decoder = decoder
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.head = True
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if buf[9:12] != b"200":
                return self._end("refused")
            self.head = False
            self.client.attached()
            buf = buf[end + 4:]
        pos = 0
        while True:  # chunked framing: <hex size>\r\n<size bytes>\r\n ... 0\r\n\r\n
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol], 16)
            if size == 0:
                return self._end("cut")  # the body ended without a terminal event
            if len(buf) < eol + 2 + size + 2:
                break
            verdict = self.client.events(self.decoder.feed(buf[eol + 2:eol + 2 + size]))
            pos = eol + 2 + size + 2
            if verdict is not None:
                return self._end(verdict)
        self.buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("cut")

    def _end(self, verdict: str) -> None:
        if not self.ended.done():
            self.ended.set_result(verdict)
        if self.transport is not None:
            self.transport.close()


class Client:
    """One reader of one stream, across connections; it keeps only its last seq."""

    __slots__ = ("id", "urls", "sse", "last", "gaps", "dups", "tries", "retry_ms", "cut_at", "head_at",
                 "resumed_at", "tried_at", "ended", "port")

    def __init__(self, stream_id: str, urls: list[int], use_sse: bool) -> None:
        self.id = stream_id
        self.urls = urls  # ports: R1, then this client's order of the others
        self.sse = use_sse
        self.last = -1
        self.gaps = self.dups = self.tries = 0
        self.retry_ms: int | None = None  # the server's last `retry:` (SSE)
        self.cut_at: float | None = None
        self.head_at: float | None = None  # a 200 from another replica after the cut
        self.resumed_at: float | None = None  # the first event from it
        self.tried_at: float | None = None  # when the try that resumed it began (its connect call)
        self.ended: str | None = None  # done / error (terminal event), or why it stopped
        self.port = 0

    def attached(self) -> None:
        if self.cut_at is not None and self.head_at is None:
            self.head_at = time.perf_counter()

    def events(self, events: list) -> str | None:
        for event in events:
            kind = type(event)
            if kind is Heartbeat:
                continue
            if kind is Reconnect:
                return "cut"
            if event.seq != self.last + 1:
                if event.seq <= self.last:
                    self.dups += 1
                    continue
                self.gaps += 1
                return "skipped"
            self.last = event.seq
            if self.cut_at is not None and self.resumed_at is None:
                self.resumed_at = time.perf_counter()
            if kind is Done or kind is Error:
                self.ended = "done" if kind is Done else "error"
                return self.ended
        return None

    async def connect(self, port: int) -> str:
        loop = asyncio.get_running_loop()
        self.port = port
        if self.cut_at is not None and self.resumed_at is None:
            self.tried_at = time.perf_counter()
        decoder = sse.Decoder() if self.sse else ndjson.Decoder()
        if self.sse:
            resume = b"Last-Event-ID: %d\r\n" % self.last if self.last >= 0 else b""
            request = b"GET /v1/streams/%s/sse HTTP/1.1\r\nHost: b\r\n%s\r\n" % (self.id.encode(), resume)
        else:
            request = b"GET /v1/streams/%s/ndjson?after=%d HTTP/1.1\r\nHost: b\r\n\r\n" % (self.id.encode(),
                                                                                            self.last)
        try:
            transport, conn = await loop.create_connection(lambda: Connection(self, decoder), "127.0.0.1", port)
        except OSError:
            return "refused"
        transport.write(request)
        try:
            return await conn.ended
        finally:
            transport.close()
            if self.sse and decoder.retry is not None:
                self.retry_ms = decoder.retry

    async def run(self, backoff_s: float, max_tries: int) -> None:
        verdict = await self.connect(self.urls[0])
        if verdict in ("done", "error"):
            return
        self.cut_at = time.perf_counter()
        at = 1
        wait = (self.retry_ms or 3000) / 1000 if self.sse else random.uniform(0, backoff_s)
        while self.tries < max_tries:
            await asyncio.sleep(wait)
            self.tries += 1
            verdict = await self.connect(self.urls[at])
            if verdict in ("done", "error"):
                return
            if verdict == "skipped":  # a seq out of order (counted): again at once, at the same replica
                wait = 0.0
            else:
                at = at % (len(self.urls) - 1) + 1
                wait = 2 * (wait or (self.retry_ms or 3000) / 1000) if self.sse else \
                    random.uniform(0, backoff_s * 2 ** min(self.tries, 4))
        self.ended = "gave up"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


async def attach_all(clients: list[Client], backoff_s: float, max_tries: int, ramp_s: float,
                     timeout: float) -> list[asyncio.Task]:
    """Start every client (spread over `ramp_s`), and return once each has read an event."""
    tasks = []
    for i, c in enumerate(clients):
        tasks.append(asyncio.create_task(c.run(backoff_s, max_tries)))
        if ramp_s and i % 50 == 49:
            await asyncio.sleep(ramp_s * 50 / len(clients))
    deadline = time.perf_counter() + timeout
    while any(c.last < 0 for c in clients):
        if time.perf_counter() > deadline:
            missing = sum(c.last < 0 for c in clients)
            raise TimeoutError(f"{missing} of {len(clients)} clients had no event from R1 after {timeout:.0f} s")
        await asyncio.sleep(0.1)
    return tasks


async def storm(args: argparse.Namespace, gen: GatewayProcess, r1: GatewayProcess,
                others: list[GatewayProcess], rds: redis.Redis) -> dict:
    ids = await create_streams(gen.url, args.streams, tokens=args.tokens, itl_ms=args.itl_ms, prompt="storm")
    created = time.perf_counter()
    orders = [[o.port for o in others[k:] + others[:k]] for k in range(len(others))]
    clients = [Client(ids[i % len(ids)], [r1.port, *orders[(i // len(ids)) % len(orders)]], args.transport == "sse")
               for i in range(args.clients)]
    tasks = await attach_all(clients, args.backoff_s, args.max_tries, args.ramp_s, 120)
    attached_s = time.perf_counter() - created
    # R1's steady cost before the kill: its CPU per event delivered to the clients over two seconds.
    await asyncio.sleep(0.5)
    cpu_r1, seen = proc_stat(r1.pid).cpu_s, sum(c.last for c in clients)
    await asyncio.sleep(2.0)
    r1_us = (proc_stat(r1.pid).cpu_s - cpu_r1) / max(1, sum(c.last for c in clients) - seen) * 1e6
    left_s = args.tokens * args.itl_ms / 1000 - (time.perf_counter() - created)
    if left_s < 10:
        raise RuntimeError(f"the streams end {left_s:.1f} s after the kill: give them more --tokens")
    before = rds.info("commandstats")
    cpu0 = [proc_stat(o.pid).cpu_s for o in others]
    load0 = os.getloadavg()[0]
    me0 = resource.getrusage(resource.RUSAGE_SELF)
    spy = None
    if args.profile:  # py-spy samples R2 from just before the kill (collapsed stacks, for flame graphs)
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-f", "raw",
                                "-r", "200", "-d", "15", "-o", args.profile, "-p", str(others[0].pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)
    lags: list[tuple[float, float]] = []  # (s after the kill, ms late) of this client's own loop, when over 50 ms

    async def probe() -> None:  # how late this client's own loop runs: its share of any delay
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            late = time.perf_counter() - t - 0.01
            if late > 0.05:
                lags.append((round(t - killed, 2), round(late * 1000)))

    killed = time.perf_counter()
    prober = asyncio.create_task(probe())
    r1.proc.kill()
    done, pending = await asyncio.wait(tasks, timeout=left_s + 120)
    for t in pending:
        t.cancel()
    prober.cancel()
    after = rds.info("commandstats")
    if spy is not None:
        spy.wait(30)
    cpu1 = [proc_stat(o.pid).cpu_s for o in others]
    me1 = resource.getrusage(resource.RUSAGE_SELF)
    span = time.perf_counter() - killed

    def calls(cmd: str) -> int:
        return after.get(f"cmdstat_{cmd}", {}).get("calls", 0) - before.get(f"cmdstat_{cmd}", {}).get("calls", 0)

    cut = [c for c in clients if c.cut_at is not None]
    heads = [c.head_at - killed for c in cut if c.head_at is not None]
    resumed = [c.resumed_at - killed for c in cut if c.resumed_at is not None]
    served_in = [(c.resumed_at - c.tried_at) * 1000 for c in cut if c.resumed_at is not None and c.tried_at]
    if args.dump:
        with open(args.dump, "w") as f:
            json.dump([{"cut": c.cut_at - killed, "tried": c.tried_at - killed, "head": c.head_at - killed,
                        "event": c.resumed_at - killed, "port": c.port, "tries": c.tries}
                       for c in cut if c.resumed_at is not None and c.tried_at and c.head_at], f)
    by_port = {o.port: f"R{i + 2}" for i, o in enumerate(others)}
    served = {name: sum(1 for c in cut if c.port == port and c.resumed_at is not None) for port, name in by_port.items()}
    return {
        "transport": args.transport, "read_window_ms": args.read_window_ms, "clients": args.clients, "streams": args.streams,
        "tokens_per_s": round(1000 / args.itl_ms, 1), "attach_s": round(attached_s, 1),
        "r1_us_per_event": round(r1_us, 1), "cut": len(cut), "resumed": len(resumed), "by_replica": served,
        "head_p50_s": pct(heads, 50), "head_p99_s": pct(heads, 99),
        "p50_s": pct(resumed, 50), "p99_s": pct(resumed, 99), "max_s": max(resumed, default=float("nan")),
        "try_to_event_p50_ms": pct(served_in, 50), "try_to_event_p99_ms": pct(served_in, 99),
        "tries_mean": sum(c.tries for c in cut) / max(1, len(cut)), "tries_max": max((c.tries for c in cut), default=0),
        "gaps": sum(c.gaps for c in clients), "duplicates": sum(c.dups for c in clients),
        "ended_done": sum(c.ended == "done" for c in clients), "not_done": sum(c.ended != "done" for c in clients),
        "xrange": calls("xrange"), "xread": calls("xread"),
        "xrange_per_stream_per_replica": calls("xrange") / (args.streams * len(others)),
        "xrange_per_client": calls("xrange") / max(1, len(cut)),
        "after_kill_s": round(span, 1), "replica_cpu_s": [round(b - a, 2) for a, b in zip(cpu0, cpu1)],
        "client_lag_max_ms": max((ms for _, ms in lags), default=0),
        "client_lags": sorted(lags, key=lambda x: -x[1])[:5], "client_cpu_s": round(me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime, 2),
        "load_before": load0, "load_after": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=400)
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--itl-ms", type=float, default=100.0, help="time between tokens (100: 10 tokens/s)")
    p.add_argument("--transport", choices=("sse", "ndjson"), default="sse")
    p.add_argument("--retry-ms", type=int, default=1000, help="SSE: the replicas' retry: (SSE_RETRY_MS)")
    p.add_argument("--retry-jitter", type=float, default=1.0,
                   help="SSE: up to this fraction of --retry-ms added per connection (SSE_RETRY_JITTER)")
    p.add_argument("--backoff-s", type=float, default=0.5,
                   help="NDJSON: first backoff bound (full jitter, uniform in [0, it]), doubled per failed try")
    p.add_argument("--ramp-s", type=float, default=5.0, help="attach the clients to R1 over this long")
    p.add_argument("--max-tries", type=int, default=12)
    p.add_argument("--read-window-ms", help="the replicas' REDIS_READ_WINDOW_MS (default: the gateway's)")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--dump", metavar="FILE", help="write each cut client's times (s after the kill) here")
    p.add_argument("--profile", metavar="FILE", help="py-spy R2 for 15 s from the kill (collapsed stacks)")
    args = p.parse_args(argv)
    raise_fd_limit(4 * args.clients + 1024)  # the clients' sockets here, and R1's (it inherits the limit)
    env = {"GATEWAY_IDLE_TIMEOUT_S": "60", "GATEWAY_CLIENTS_PER_STREAM": "100000",
           "GATEWAY_SSE_RETRY_MS": str(args.retry_ms), "GATEWAY_SSE_RETRY_JITTER": str(args.retry_jitter)}
    if args.read_window_ms is not None:
        env["GATEWAY_REDIS_READ_WINDOW_MS"] = args.read_window_ms
    for _ in range(args.runs):
        with replicas(4, env) as (rp, (gen, r1, *others)):
            # uvloop, as the gateway runs: this client shares the cores with the replicas, and on the stdlib
            # loop its own lag reached 1.4-3.8 s in SSE storms here (under 0.1 s since, `client_lag_max_ms`).
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                row = runner.run(storm(args, gen, r1, others, redis.Redis.from_url(rp.url)))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
