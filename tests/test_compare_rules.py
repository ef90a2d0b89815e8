"""The recommendation rules: verdicts follow the measured numbers, never a fixed preference."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from loadtests.compare import report
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


# The report end to end from fixed figures: the verdicts printed in summary.md are compared with verdicts
# fixed here, never with another output of the same `recommend()` call. The frame (matrix, paths, baseline,
# memory) is a real `compare --preset tiny` run's results.json, kept in tests/golden/compare_results.json.
FRAME = json.loads((Path(__file__).parent / "golden" / "compare_results.json").read_text())
QUICK = {"ttft": 150.0, "itl": 30.0, "rec": 60.0, "wire": 50.0, "cpu": 40.0}  # keeps pace with a 20 ms gap
SLOWER = {"ttft": 250.0, "itl": 38.0, "rec": 200.0, "wire": 90.0, "cpu": 80.0}  # keeps pace, behind on each


def report_verdicts(tmp_path: Path, figures: dict[str, dict]) -> dict[str, str]:
    r = copy.deepcopy(FRAME)
    for c in r["cells"]:
        f = figures[c["transport"]]
        c["locust"] = cell(c["transport"], c["users"], f["ttft"], f["itl"], kind=c["kind"],
                           reconnect_p95=f["rec"] if c["kind"] == "reconnect" else None)["locust"]
        c["locust"]["inter_token"]["p50"] = r["matrix"]["itl_ms"]
        for row in c["locust"].values():
            for key in ("p50", "p95", "p99"):
                row.setdefault(key, 0.0)
            row.setdefault("mean", row["p50"])
            row.setdefault("max", row["p99"])
        c["gateway"]["cpu_us_per_token"] = f["cpu"]
    for w in r["wire"]:
        w["wire_bytes_per_token"] = figures[w["transport"]]["wire"]
    r["recommendations"] = recommend(r)
    (tmp_path / "raw").mkdir(parents=True)
    report.write(tmp_path, r)
    md = (tmp_path / "summary.md").read_text()
    rows = md.split("### Which transport for which need", 1)[1].split("\n###", 1)[0]
    cells = [[x.strip() for x in line.strip("|").split("|")] for line in rows.splitlines() if line.startswith("|")]
    head = cells[0]
    return {row[head.index("need")]: row[head.index("winner")] for row in cells[2:]}


def test_printed_verdicts_from_fixed_figures(tmp_path):
    assert report_verdicts(tmp_path / "a", {"sse_post": QUICK, "ws": SLOWER}) == {
        "browser client": "sse_post", "bidirectional control": "ws", "strict proxies": "sse_post",
        "resumability": "sse_post", "mobile networks": "sse_post", "highest throughput": "sse_post"}
    assert report_verdicts(tmp_path / "b", {"sse_post": SLOWER, "ws": QUICK}) == {
        "browser client": "ws", "bidirectional control": "ws", "strict proxies": "ws",
        "resumability": "ws", "mobile networks": "ws", "highest throughput": "ws"}
