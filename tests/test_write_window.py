"""The write window: each connection writes at most once per window, with every event that came due.

httpx yields one piece per HTTP chunk, and the gateway writes each batch as
one chunk, so the pieces a client sees count the server's writes.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from gateway.codecs import ndjson, sse
from gateway.sources.simulated import expected_text

from .support import Gateway, gateway, run

TOKENS = 100
BODY = {"prompt": "window", "seed": 5, "max_tokens": TOKENS, "sim": {"ttft_ms": 0, "itl_ms": 20, "jitter": 0}}


def _read(url: str, fmt: str) -> tuple[str, int]:
    """The text of a one-shot stream, and how many chunks carried tokens."""
    parser = sse.Parser() if fmt == "sse" else ndjson.Lines()
    text, chunks = [], 0
    with httpx.stream("POST", f"{url}/v1/{fmt}", json=BODY, timeout=30) as r:
        assert r.status_code == 200
        for piece in r.iter_raw():
            items = parser.feed(piece)
            events = [orjson.loads(m.data) for m in items if isinstance(m, sse.Message)] if fmt == "sse" \
                else [orjson.loads(line) for line in items]
            tokens = [e["text"] for e in events if e["type"] == "token"]
            chunks += bool(tokens)
            text += tokens
    return "".join(text), chunks


@pytest.mark.parametrize("fmt", ["sse", "ndjson"])
def test_a_window_coalesces_each_connections_writes(fmt):
    with gateway({"GATEWAY_WRITE_WINDOW_MS": "250"}) as gw:
        text, chunks = _read(gw.url, fmt)
    assert text == expected_text("window", 5, TOKENS)
    # 100 tokens over ~2 s in 250 ms windows: about 8 writes (a busy machine can only merge more).
    assert chunks <= 15, chunks


def test_without_a_window_each_event_is_its_own_write():
    with gateway() as gw:
        text, chunks = _read(gw.url, "ndjson")
    assert text == expected_text("window", 5, TOKENS)
    # One write per token 20 ms apart; only a stall of the machine merges some.
    assert chunks >= TOKENS // 3, chunks


def test_the_window_is_bounded():
    with pytest.raises(RuntimeError, match="exited"):  # refused at start-up: over 1000 ms
        Gateway({"GATEWAY_WRITE_WINDOW_MS": "5000"})


def test_a_window_coalesces_websocket_frames():
    """WebSocket frames cannot be told apart by writes on the client side: count arrival bursts instead."""
    import time

    from websockets.asyncio.client import connect

    from gateway.codecs import ws

    async def go(url: str) -> tuple[str, int]:
        text, arrivals = [], []
        async with connect(url + "/v1/ws", compression=None) as sock:
            await sock.send(ws.start(**BODY))
            async for message in sock:
                event = orjson.loads(message)
                if event["type"] == "token":
                    text.append(event["text"])
                    arrivals.append(time.monotonic())
                elif event["type"] in ("done", "error"):
                    break
        bursts = 1 + sum(b - a > 0.005 for a, b in zip(arrivals, arrivals[1:]))
        return "".join(text), bursts

    with gateway({"GATEWAY_WRITE_WINDOW_MS": "250"}) as gw:
        text, bursts = run(go(gw.ws_url))
    assert text == expected_text("window", 5, TOKENS)
    assert bursts <= 15, bursts  # ~8 windows of 250 ms; without a window, 100 tokens 20 ms apart
