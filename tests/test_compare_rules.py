"""The recommendation rules: verdicts follow the measured numbers, never a fixed preference."""

from __future__ import annotations

from loadtests.compare.rules import recommend


def cell(transport, users, ttft_p95, itl_p99, kind="load", path="direct", reconnect_p95=None, gaps=0,
         cpu_us=50.0):
    locust = {"ttft": {"count": 100, "failures": 0, "p50": ttft_p95 - 20, "p95": ttft_p95, "p99": ttft_p95},
              "inter_token": {"count": 1000, "failures": 0, "p50": 50.0, "p95": itl_p99, "p99": itl_p99},
              "stream": {"count": 100, "failures": gaps}}
    if reconnect_p95 is not None:
        locust["reconnect"] = {"count": 50, "failures": 0, "p50": reconnect_p95 - 5, "p95": reconnect_p95,
                               "p99": reconnect_p95}
    if gaps:
        locust["gap"] = {"count": gaps, "failures": gaps}
    return {"kind": kind, "transport": transport, "path": path, "users": users, "locust": locust, "errors": [],
            "gateway": {"cpu_us_per_token": cpu_us, "resumes": 10},
            "load_generator": {"saturated": False}}


def results(a: dict, b: dict) -> dict:
    """Two transports, sse_post and ws, with figures a and b."""
    cells = []
    for t, f in (("sse_post", a), ("ws", b)):
        cells += [cell(t, 10, f["ttft"], 80.0, cpu_us=f["cpu"]),
                  cell(t, 50, f["ttft"], f["itl50"], cpu_us=f["cpu"]),
                  cell(t, 10, f["ttft"], 80.0, kind="reconnect", reconnect_p95=f["rec"], gaps=f["gaps"])]
    return {"matrix": {"transports": ["sse_post", "ws"], "itl_ms": 50.0, "ttft_ms": 300.0},
            "cells": cells, "wire": [{"transport": "sse_post", "wire_bytes_per_token": a["wire"]},
                                     {"transport": "ws", "wire_bytes_per_token": b["wire"]}],
            "memory": [], "baseline": []}


def winners(r: dict) -> dict:
    return {row["need"]: row["winner"] for row in recommend(r)["table"]}


FAST = {"ttft": 320.0, "itl50": 90.0, "rec": 60.0, "gaps": 0, "wire": 50.0, "cpu": 40.0}
SLOW = {"ttft": 500.0, "itl50": 400.0, "rec": 200.0, "gaps": 0, "wire": 90.0, "cpu": 80.0}


def test_verdicts_follow_the_numbers():
    one = winners(results(FAST, SLOW))
    two = winners(results(SLOW, FAST))
    for need in ("browser client", "resumability", "mobile networks", "highest throughput"):
        assert one[need] == "sse_post" and two[need] == "ws", need
    # Capability decides who may compete, not who wins among equals: only ws talks back.
    assert one["bidirectional control"] == two["bidirectional control"] == "ws"
    assert one["strict proxies"] is None  # no proxy path measured: no verdict


def test_lost_events_disqualify_from_resumability():
    fast_but_lossy = dict(FAST, gaps=2)
    w = winners(results(fast_but_lossy, SLOW))
    assert w["resumability"] == "ws" and w["mobile networks"] == "ws"


def test_throughput_counts_the_most_streams_kept_at_pace():
    r = results(FAST, FAST)
    # sse_post slips at 50 streams (inter-token p99 over 2 x 50 ms); ws keeps pace.
    r["cells"][1]["locust"]["inter_token"]["p99"] = 150.0
    summary = recommend(r)["summary"]
    assert summary["sse_post"]["held_users"] == 10 and summary["sse_post"]["slipped_at"] == 50
    assert summary["ws"]["held_users"] == 50
    assert winners(r)["highest throughput"] == "ws"
