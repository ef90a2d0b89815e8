"""The path doctor's arrival analysis, on synthetic arrival times (no sockets)."""

from __future__ import annotations

from gateway.client import StreamResult
from gateway.codecs import ndjson
from gateway.events import Meta, Token
from loadtests.probe import arrival, report_table

TTFT, ITL = 0.2, 0.05


def _result(times: list[float]) -> StreamResult:
    r = StreamResult(started=100.0)
    r.events = [Meta("s", "sim", 0.0)] + [Token(i + 1, "tok ") for i in range(len(times))]
    r.arrivals = [100.0] + [100.0 + t for t in times]
    return r


def test_tokens_on_schedule_are_spaced():
    a = arrival(_result([TTFT + i * ITL + 0.003 for i in range(20)]), "ndjson", TTFT, ITL)
    assert a["spaced"] and a["bursts"] == 20 and a["buffer_bytes"] is None
    assert a["max_hold_s"] < 0.01


def test_everything_at_the_end_is_held_to_the_end():
    end = TTFT + 19 * ITL
    r = _result([end] * 20)
    a = arrival(r, "ndjson", TTFT, ITL)
    assert not a["spaced"] and a["held_to_end"] and a["bursts"] == 1
    assert a["buffer_bytes"] == sum(len(ndjson.encode(t)) for t in r.tokens)
    assert abs(a["max_hold_s"] - 19 * ITL) < 1e-6


def test_bursts_of_five_estimate_the_buffer():
    # Released every fifth token: each burst arrives with its last token.
    times = [TTFT + (i // 5 * 5 + 4) * ITL for i in range(20)]
    r = _result(times)
    a = arrival(r, "ndjson", TTFT, ITL)
    assert not a["spaced"] and not a["held_to_end"] and a["bursts"] == 4
    sizes = [sum(len(ndjson.encode(t)) for t in r.tokens[i:i + 5]) for i in (0, 5, 10)]
    assert a["buffer_bytes"] == sorted(sizes)[1]  # the median burst before the last
    assert abs(a["max_hold_s"] - 4 * ITL) < 1e-6


def test_table_names_the_fix():
    held = arrival(_result([TTFT + 19 * ITL] * 20), "sse_post", TTFT, ITL)
    report = {"url": "http://x", "ok": False, "params": {"tokens": 20, "itl_ms": 50, "ttft_ms": 200, "idle_s": 0},
              "transports": {
                  "sse_post": {"reachable": True, "error": None, "ttft_s": 1.15, "arrival": held, "idle": None,
                          "resume": {"ok": True, "detail": ""}},
                  "ws": {"reachable": False, "error": "WebSocket upgrade refused (HTTP 404)"}}}
    table = report_table(report)
    assert "BUNCHED: held to the end" in table and "NO: WebSocket upgrade refused (HTTP 404)" in table
    assert "proxy_buffering off" in table and "http-no-delay" in table and "Upgrade" in table
