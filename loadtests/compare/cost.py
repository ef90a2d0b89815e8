"""What a transport costs: bytes on the wire per token, and gateway memory per open connection.

The wire cost uses the project's own client (its codecs), not Locust: it needs few streams and exact
counts rather than load. Memory per connection is the benchmark's measurement (one, not two).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess

from gateway.client import Client
from gateway.names import counted_as

from ..procs import GatewayProcess

__all__ = ["WireMeter", "wire_cost", "memory_per_connection"]


async def _read(client: Client, transport: str, **fields):
    return await client.stream(transport, **fields)  # sse_get: created, then attached by id


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
        before = gw.metrics()
        row = asyncio.run(_wire_one(gw.port, transport, streams, fields))
        after = gw.metrics()

        def delta(metric: str) -> float:
            keys = [f'{metric}{{transport="{label}"}}' for label in counted_as(transport)]
            return sum(after[k] - before[k] for k in keys)
        events, body = delta("gateway_events_sent_total"), delta("gateway_bytes_sent_total")
        row["gateway_events"] = int(events)
        row["gateway_body_bytes"] = int(body)
        row["body_bytes_per_event"] = round(body / events, 2) if events else None
        rows.append(row)
    return rows


def memory_per_connection(transports: list[str], n: int, notes: list[str] | None = None) -> list[dict]:
    """Per transport, on a fresh gateway: RSS with `n` open streaming connections minus RSS before,
    per connection the gateway counts open. The benchmark's measurement (loadtests/bench/speed.py), with
    slow streams back to back (a token every 250 ms) so the figure is an open connection with its stream,
    subscriber and socket buffers, not a burst of traffic.
    """
    from ..bench import speed

    args = argparse.Namespace(priority=0, tokens=20, itl_ms=250.0, ttft_ms=0.0, ramp=None, warmup=1.0,
                              duration=2.0, profile=None)
    from ..bench.load import TRANSPORTS as MEASURED

    rows = []
    for transport in transports:
        if transport not in MEASURED:
            continue  # the benchmark's raw client has no Responses framing: no row, the report shows "-"
        try:
            row = speed.run_one("gateway", transport, n, args)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # a starved box: a note, not a lost report
            if notes is not None:
                notes.append(f"Memory per connection for {transport} not measured: {exc}.")
            continue
        rows.append({"transport": transport, "connections": row["open"], "requested": n,
                     "rss_before_bytes": row["rss_idle"], "rss_open_bytes": row["rss"],
                     "bytes_per_connection": round(row["kb_per_stream"] * 1024)})
    return rows
