"""A reader that stops reading is cut for the reason the settings give, exactly: `slow_lag` when it falls
MAX_LAG_BYTES behind, `slow_send` when one write waits SEND_TIMEOUT_S; a normal reader of the same stream
gets every event either way."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from gateway.sources.simulated import expected_text

from . import wire
from .support import gateway, run

N = 100_000
SIM = {"ttft_ms": 10, "itl_ms": 0.04, "jitter": 0}  # ~4 s, several MB: more than the kernel buffers hold
CASES = {
    # Only the lag limit can fire within the stream: a write may wait a minute.
    "slow_lag": {"GATEWAY_MAX_LAG_BYTES": "300000", "GATEWAY_SEND_TIMEOUT_S": "60"},
    # Only the send timeout can: the lag allowed is far beyond the stream's size.
    "slow_send": {"GATEWAY_MAX_LAG_BYTES": str(2**40), "GATEWAY_SEND_TIMEOUT_S": "1"},
}


def stall(port: int, path: str) -> socket.socket:
    """A client that sends its request and never reads: its small receive buffer fills at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    upgrade = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") if path.endswith("/ws") else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}\r\n".encode())
    return sock


@pytest.mark.parametrize(("reason", "transport"), [("slow_lag", "ndjson"), ("slow_lag", "ws"), ("slow_send", "ndjson")])
def test_a_stalled_reader_is_cut_for_the_configured_reason(tmp_path, reason, transport):
    log = tmp_path / "lifecycle.jsonl"
    env = {**CASES[reason], "GATEWAY_LOG_FILE": str(log), "GATEWAY_LOG_LEVEL": "info",
           "GATEWAY_MAX_TOKENS_LIMIT": str(2 * N), "GATEWAY_DETACH_GRACE_S": "5"}
    with gateway(env) as gw:
        sid = httpx.post(f"{gw.url}/v1/streams", json={"prompt": "slow", "max_tokens": N, "sim": SIM}).json()["id"]
        stalled = stall(gw.port, f"/v1/streams/{sid}/{transport}")
        try:
            r = run(wire.read(gw.url, transport, stream_id=sid, timeout=90))

            def cuts() -> list[dict]:
                records = [json.loads(line) for line in log.read_text().splitlines()]
                return [x for x in records if x.get("stream") == sid and x["event"] == "cut"]

            deadline = time.monotonic() + 30
            while not cuts():
                assert time.monotonic() < deadline, "the stalled reader was never cut"
                time.sleep(0.1)
        finally:
            stalled.close()
    wire.assert_exact(r.events, 0, N + 1)  # the normal reader lost nothing to its stalled neighbour
    assert r.text == expected_text("slow", 0, N)
    (cut,) = cuts()
    assert cut["reason"] == reason and cut["transport"] == transport, cut
