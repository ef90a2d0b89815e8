"""What a transport costs: bytes on the wire per token, and gateway memory per open connection.

Both use the project's own client (its codecs), not Locust: they need few
streams and exact counts rather than load.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from gateway.client import Client
from ..procs import GatewayProcess

__all__ = ["WireMeter", "wire_cost", "memory_per_connection", "client_transport"]


def client_transport(transport: str) -> tuple[str, bool]:
    """The client's (and the gateway's metrics') transport name for a Locust transport, and whether
    the stream is created first and attached by id (`sse_get`, as EventSource does)."""
    name, _, style = transport.partition("_")
    return name, style == "get"


async def _read(client: Client, transport: str, **fields):
    name, by_id = client_transport(transport)
    if by_id:
        created = await client.create(**fields)
        return await client.stream(name, stream_id=created["id"])
    return await client.stream(name, **fields)


class WireMeter:
    """A loopback TCP relay that counts the bytes each way: what the transport really puts on the wire
    (HTTP headers, chunked framing, the WebSocket handshake and frame headers included)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = 0  # gateway -> client
        self.up = 0  # client -> gateway
        self.connections = 0

    async def __aenter__(self) -> WireMeter:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(client_r, up_w, "up"), self._pipe(up_r, client_w, "down"))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await reader.read(65536):
                setattr(self, way, getattr(self, way) + len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def _wire_one(port: int, transport: str, streams: int, fields: dict) -> dict:
    async def one(i: int):
        # A client per stream: each stream pays its own connection, as a page load would.
        async with Client(meter.url) as client:
            return await _read(client, transport, seed=i, **fields)

    async with WireMeter(port) as meter:
        results = await asyncio.gather(*(one(i) for i in range(streams)))
        await asyncio.sleep(0.05)  # let the relay count the last bytes
    tokens = sum(len(r.tokens) for r in results)
    payload = sum(len(r.text.encode()) for r in results)
    return {"transport": transport, "streams": streams, "tokens": tokens, "payload_bytes": payload,
            "wire_down_bytes": meter.down, "wire_up_bytes": meter.up, "connections": meter.connections,
            "wire_bytes_per_token": round(meter.down / tokens, 2) if tokens else None,
            "payload_bytes_per_token": round(payload / tokens, 2) if tokens else None}


def wire_cost(gw: GatewayProcess, transports: list[str], streams: int, fields: dict) -> list[dict]:
    """Per transport: bytes on the wire per token for whole streams, plus the gateway's own count of
    body bytes per event (its framing, without HTTP). One transport at a time, so the gateway's
    counters belong to it alone."""
    rows = []
    for transport in transports:
        name, _ = client_transport(transport)
        key = f'{{transport="{name}"}}'
        before = gw.metrics()
        row = asyncio.run(_wire_one(gw.port, transport, streams, fields))
        after = gw.metrics()
        events = after[f"gateway_events_sent_total{key}"] - before[f"gateway_events_sent_total{key}"]
        body = after[f"gateway_bytes_sent_total{key}"] - before[f"gateway_bytes_sent_total{key}"]
        row["gateway_events"] = int(events)
        row["gateway_body_bytes"] = int(body)
        row["body_bytes_per_event"] = round(body / events, 2) if events else None
        rows.append(row)
    return rows


async def _open(client: Client, transport: str, i: int, fields: dict, opened: list, release: asyncio.Event) -> None:
    """Open one stream, read its meta event, then hold the connection until released."""
    name, by_id = client_transport(transport)
    args = {"stream_id": (await client.create(seed=i, **fields))["id"]} if by_id else {"seed": i, **fields}
    events = client.events(name, resume=False, **args)
    try:
        await anext(events)
        opened.append(i)
        await release.wait()
    finally:
        await events.aclose()


def memory_per_connection(transports: list[str], n: int, log=None) -> list[dict]:
    """Per transport, on a fresh gateway: RSS with `n` open streaming connections minus RSS before.

    A fresh process per transport, because Python rarely gives freed memory back:
    a second transport measured in the same process would reuse the first one's.
    The streams stay open (a token every half second), so the figure is an open
    connection with its stream, subscriber and socket buffers.
    """
    rows = []
    for transport in transports:
        with GatewayProcess(log=log) as gw:
            rows.append(asyncio.run(_measure_memory(gw, transport, n)))
    return rows


async def _measure_memory(gw: GatewayProcess, transport: str, n: int) -> dict:
    fields = {"max_tokens": 1000, "sim": {"ttft_ms": 0, "itl_ms": 500}}
    name, _ = client_transport(transport)
    async with Client(gw.url, read_timeout=120) as client:
        # Warm up: the first streams load code and fill caches that every later one shares.
        for i in range(3):
            await _read(client, transport, seed=i, max_tokens=3, sim={"ttft_ms": 0, "itl_ms": 1})
        await asyncio.sleep(0.3)
        before = gw.stat()
        opened: list[int] = []
        release = asyncio.Event()
        tasks = [asyncio.create_task(_open(client, transport, i, fields, opened, release)) for i in range(n)]
        try:
            deadline = time.monotonic() + 60
            while len(opened) < n:
                failed = [t for t in tasks if t.done() and t.exception()]
                if failed:
                    raise failed[0].exception()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(opened)} of {n} {transport} connections opened in 60 s")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            samples = []
            for _ in range(3):
                samples.append(gw.stat().rss)
                await asyncio.sleep(0.2)
            open_now = (await asyncio.to_thread(gw.metrics))[f'gateway_connections{{transport="{name}"}}']
        finally:
            release.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    loaded = statistics.median(samples)
    return {"transport": transport, "connections": int(open_now), "requested": n,
            "rss_before_bytes": before.rss, "rss_open_bytes": int(loaded),
            "bytes_per_connection": round((loaded - before.rss) / max(open_now, 1))}
