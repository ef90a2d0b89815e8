"""The recommendation rules on fixed inputs: fixed verdicts, ties where the evidence does not separate.

Each cell here has three runs; a figure is the mean of the runs with a t interval over them
(loadtests/compare/stats.py). `spread` sets how far the runs scatter around the value.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest

from loadtests.compare import report
from loadtests.compare.rules import figures, recommend
from loadtests.compare.stats import decide, figure, percentile


def exact(value: float, n: int, of: str) -> dict:
    return {"count": n, "of": of, "mean": value, "p50": value * 0.8, "p90": value * 0.95, "p95": value,
            "p99": value * 1.1}


def cell(transport, users, ttft_p95, itl_p99, *, kind="load", path="direct", resume_p95=None, gaps=0,
         cpu_us=50.0, spread=0.01, n=100, e2e=None, refused=0):
    """Three runs of one cell; the runs differ by +-spread around each figure."""
    runs = []
    for i, k in enumerate((1 - spread, 1.0, 1 + spread)):
        ex = {"ttft": exact(ttft_p95 * k, n, "streams"), "itl": exact(itl_p99 / 1.1 * k, n * 20, "gaps"),
              "e2e": exact((e2e or ttft_p95 * 4) * k, n, "streams")}
        if resume_p95 is not None:
            ex["resume"] = exact(resume_p95 * k, n, "resumes")
        locust = {"ttft": {"count": n if not refused else 0, "failures": 0},
                  "stream": {"count": n, "failures": gaps + refused}}
        if gaps:
            locust["gap"] = {"count": gaps, "failures": gaps}
        runs.append({"cell": f"{kind}-{path}-{transport}-c{users}", "run": i, "kind": kind, "transport": transport,
                     "path": path, "users": users, "duration_s": 5.0, "locust": locust, "errors": [],
                     "exact": ex if not refused else {}, "streams": {
                         "recorded": n, "ok": n - refused, "refused": refused,
                         "failures": ["refused: HTTP 404 Not Found"] if refused else []},
                     "gateway": {"cpu_us_per_token": cpu_us * k, "resumes": 10, "tokens": 1000 * n,
                                 "tokens_per_s": 100.0, "wasted_tokens": 0},
                     "load_generator": {"saturated": False}})
    return runs


def results(a: dict, b: dict, drop_rate: float = 1.0) -> dict:
    """Two transports, sse_post and ws, with figures a and b."""
    cells = []
    for t, f in (("sse_post", a), ("ws", b)):
        sp = f.get("spread", 0.01)
        cells += cell(t, 10, f["ttft"], 80.0, cpu_us=f["cpu"], spread=sp, n=f.get("n", 100))
        cells += cell(t, 50, f["ttft"], f["itl50"], cpu_us=f["cpu"], spread=sp, n=f.get("n", 100))
        cells += cell(t, 10, f["ttft"], 80.0, kind="reconnect", resume_p95=f["rec"], gaps=f["gaps"], spread=sp,
                      n=f.get("n", 100))
    return {"matrix": {"transports": ["sse_post", "ws"], "itl_ms": 50.0, "ttft_ms": 300.0, "max_tokens": 60,
                       "drop_rate": drop_rate},
            "cells": cells, "wire": [], "memory": [], "baseline": []}


def verdicts(r: dict) -> dict:
    return {row["need"]: row["verdict"] for row in recommend(r)["table"]}


FAST = {"ttft": 320.0, "itl50": 90.0, "rec": 160.0, "gaps": 0, "cpu": 40.0}
SLOW = {"ttft": 500.0, "itl50": 400.0, "rec": 300.0, "gaps": 0, "cpu": 80.0}


def test_clear_differences_name_a_winner_and_follow_the_numbers():
    one = verdicts(results(FAST, SLOW))
    two = verdicts(results(SLOW, FAST))
    for need in ("browser client", "resumability", "highest throughput"):
        assert one[need] == "sse_post" and two[need] == "ws", need
    # Capability decides who may compete: only ws talks back.
    assert one["bidirectional control"] == two["bidirectional control"] == "ws"
    assert one["strict proxies"] == "not measured"  # no proxy path ran: no verdict
    assert one["mobile networks"] == "not measured"  # loopback cannot say


def test_overlapping_intervals_are_a_tie_naming_both():
    noisy = dict(FAST, spread=0.5)  # runs at 50%, 100%, 150%: the interval is wide
    v = verdicts(results(noisy, SLOW))
    assert v["browser client"] == "tie: sse_post, ws"
    assert v["resumability"] == "tie: sse_post, ws"


def test_a_difference_under_ten_percent_is_a_tie_however_tight():
    near = dict(FAST, ttft=FAST["ttft"] * 1.05, rec=FAST["rec"] * 1.05)
    v = verdicts(results(FAST, near))
    assert v["browser client"] == "tie: sse_post, ws"
    assert v["resumability"] == "tie: sse_post, ws"


def test_too_few_samples_are_not_judged():
    few = dict(FAST, n=60)  # 3 runs x 60 streams = 180 < 200
    table = {row["need"]: row for row in recommend(results(few, dict(SLOW, n=60)))["table"]}
    assert table["browser client"]["verdict"] == "not measured"
    assert "fewer than 200 samples" in table["browser client"]["why"]


def test_lost_events_disqualify_from_resumability():
    v = verdicts(results(dict(FAST, gaps=2), SLOW))
    assert v["resumability"] == "ws"


def test_no_drops_is_not_measured_never_failed():
    row = next(r for r in recommend(results(FAST, SLOW, drop_rate=0))["table"] if r["need"] == "resumability")
    assert row["verdict"] == "not measured" and "--drop-rate 0" in row["why"]


def test_throughput_counts_the_most_streams_kept_at_pace():
    r = results(FAST, FAST)
    # sse_post slips at 50 streams (inter-token p99 over 2 x 50 ms); ws keeps pace.
    for c in r["cells"]:
        if c["transport"] == "sse_post" and c["users"] == 50:
            c["exact"]["itl"]["p99"] = 150.0
    summary = recommend(r)["summary"]
    assert summary["sse_post"]["held_users"] == 10 and summary["sse_post"]["slipped_at"] == 50
    assert summary["ws"]["held_users"] == 50
    assert verdicts(r)["highest throughput"] == "ws"


def _with_proxy(r: dict, path: str, outcomes: dict[str, str]) -> dict:
    for t, outcome in outcomes.items():
        if outcome == "refused":
            r["cells"] += cell(t, 10, 320.0, 80.0, path=path, refused=100)
        elif outcome == "held":
            r["cells"] += cell(t, 10, 3000.0, 1.0, path=path, e2e=3100.0)
        elif outcome == "delayed":
            r["cells"] += cell(t, 10, 900.0, 80.0, path=path, e2e=4000.0)
        else:
            r["cells"] += cell(t, 10, 320.0, 80.0, path=path)
    return r


def test_proxy_outcomes_are_ranked_refused_worst():
    # nginx-defaults: ws refused (no Upgrade headers), sse_post held until the end: sse_post wins.
    r = _with_proxy(results(FAST, FAST), "nginx-defaults", {"sse_post": "held", "ws": "refused"})
    out = recommend(r)
    assert verdicts(r)["strict proxies"] == "sse_post"
    paths = out["summary"]
    assert paths["ws"]["proxy_paths"]["nginx-defaults"]["outcome"] == "refused"
    assert paths["sse_post"]["proxy_paths"]["nginx-defaults"]["outcome"] == "held until the end"
    # Each finding carries its fix, from the lab's tuned nginx config.
    assert "proxy_set_header Upgrade $http_upgrade;" in paths["ws"]["proxy_paths"]["nginx-defaults"]["fix"]
    assert "proxy_buffering off;" in paths["sse_post"]["proxy_paths"]["nginx-defaults"]["fix"]
    # Held is worse than delayed; equal outcomes tie.
    r = _with_proxy(results(FAST, FAST), "haproxy", {"sse_post": "held", "ws": "delayed"})
    assert verdicts(r)["strict proxies"] == "ws"
    assert "option http-no-delay" in recommend(r)["summary"]["sse_post"]["proxy_paths"]["haproxy"]["fix"]
    r = _with_proxy(results(FAST, FAST), "haproxy", {"sse_post": "clean", "ws": "clean"})
    assert verdicts(r)["strict proxies"] == "tie: sse_post, ws"


def test_stats_exact_percentiles_and_t_intervals():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50.5 and percentile(values, 99) == pytest.approx(99.01)
    f = figure([10.0, 12.0, 14.0], 300, "streams")
    assert f.value == 12.0 and f.hi - f.value == pytest.approx(4.303 * 2 / math.sqrt(3))
    one = figure([10.0], 300, "streams")
    assert math.isinf(one.hi) and not one.enough  # one run: no interval, never judged
    d = decide({"a": figure([10, 10.5, 11], 300, "x"), "b": figure([20, 21, 22], 300, "x")})
    assert d.winner == "a" and d.label == "a"
    d = decide({"a": figure([10, 15, 20], 300, "x"), "b": figure([20, 21, 22], 300, "x")})
    assert d.winner is None and d.label == "tie: a, b"


def _noisy(r: dict, rng: random.Random, noise: float) -> dict:
    """The same cells measured again: every run's figures moved by up to +-noise, independently."""
    r = copy.deepcopy(r)
    for c in r["cells"]:
        for fig in c["exact"].values():
            k = 1 + rng.uniform(-noise, noise)
            for key in ("mean", "p50", "p90", "p95", "p99"):
                fig[key] *= k
        c["gateway"]["cpu_us_per_token"] *= 1 + rng.uniform(-noise, noise)
    return r


def test_the_same_preset_twice_gives_the_same_verdicts_ties_included():
    """Recorded figures measured again with run-to-run noise (seeded, 20 repeats): a clear difference keeps its
    winner every time, a difference under 10% stays a tie every time; none flips."""
    rng = random.Random(14)
    clear, near = results(FAST, SLOW), results(FAST, dict(FAST, ttft=335.0, rec=165.0, cpu=42.0, itl50=92.0))
    want_clear, want_near = verdicts(clear), verdicts(near)
    assert want_near["browser client"] == want_near["resumability"] == "tie: sse_post, ws"
    assert want_clear["browser client"] == want_clear["resumability"] == "sse_post"
    for _ in range(20):
        assert verdicts(_noisy(clear, rng, 0.04)) == want_clear
        assert verdicts(_noisy(near, rng, 0.04)) == want_near


def test_no_throughput_winner_over_a_transport_the_load_generator_could_not_judge():
    r = results(FAST, FAST)
    for c in r["cells"]:
        if c["transport"] == "sse_post" and c["users"] == 50:
            c["exact"]["itl"]["p99"] = 150.0
            c["load_generator"]["saturated"] = True  # the slip may be Locust's own delay
    row = next(x for x in recommend(r)["table"] if x["need"] == "highest throughput")
    assert row["verdict"] == "not measured" and "sse_post could not be judged up to 50 streams" in row["why"]


# The report end to end from fixed figures: the verdicts printed in summary.md are compared with verdicts
# fixed here, never with another output of the same `recommend()` call. The frame (conditions, baseline,
# memory) is a real `compare --preset tiny` run's results.json, kept in tests/golden/compare_results.json.
FRAME = json.loads((Path(__file__).parent / "golden" / "compare_results.json").read_text())


def fixed_frame(a: dict, b: dict) -> dict:
    """FRAME with the fixed cells of `results(a, b)`, on a gateway and load generator that stayed well."""
    r = copy.deepcopy(FRAME)
    fixed = results(a, b)
    r["matrix"].update(fixed["matrix"], runs=3, drop_by="client")
    r["cells"], r["wire"], r["memory"] = fixed["cells"], [], []
    for c in r["cells"]:
        c["gateway"].update(cpu_s=1.0, cpu_share_peak=0.5, rss_peak_bytes=None, drops=0, stream_errors=0)
        c["load_generator"].update(cpu_share_peak=0.3, locust_cpu_warning=False)
    return r


def report_verdicts(tmp_path: Path, a: dict, b: dict) -> dict[str, str]:
    r = fixed_frame(a, b)
    r["figures"] = figures(r)
    r["recommendations"] = recommend(r)
    (tmp_path / "raw").mkdir(parents=True)
    report.write(tmp_path, r)
    md = (tmp_path / "summary.md").read_text()
    rows = md.split("### Which transport for which need", 1)[1].split("\n###", 1)[0]
    cells = [[x.strip() for x in line.strip("|").split("|")] for line in rows.splitlines() if line.startswith("|")]
    head = cells[0]
    return {row[head.index("need")]: row[head.index("verdict")] for row in cells[2:]}


def test_printed_verdicts_from_fixed_figures(tmp_path):
    assert report_verdicts(tmp_path / "a", FAST, SLOW) == {
        "browser client": "sse_post", "bidirectional control": "ws", "strict proxies": "not measured",
        "resumability": "sse_post", "mobile networks": "not measured", "highest throughput": "sse_post"}
    assert report_verdicts(tmp_path / "b", dict(FAST, spread=0.5), SLOW) == {
        "browser client": "tie: sse_post, ws", "bidirectional control": "ws", "strict proxies": "not measured",
        "resumability": "tie: sse_post, ws", "mobile networks": "not measured", "highest throughput": "sse_post"}


def test_streams_a_proxy_cut_for_good_disqualify_from_resumability():
    """Clean resumes when the user cuts, but behind the cutting proxy sse_post streams ended unresumed: ws
    wins, and the verdict says what sse_post lost, and where. Requests cut before any answer (no stream id
    to resume with) are listed apart and disqualify nobody: their count is chance, the verdict would flip."""
    r = results(FAST, SLOW)
    assert verdicts(r)["resumability"] == "sse_post"
    for c in r["cells"]:
        if c["kind"] == "reconnect":
            c["cut_by"] = "client"
    for t, lost in (("sse_post", 3), ("ws", 0)):
        for run in cell(t, 10, 320.0, 80.0, kind="reconnect", path="proxy-cut", resume_p95=200.0):
            run["cut_by"] = "proxy"
            run["errors"] = [{"method": t, "name": "stream", "occurrences": 2,  # no answer: not judged
                              "error": "cut: no response, ConnectionError: Connection reset by peer"}]
            if lost:
                run["errors"].append({"method": t, "name": "stream", "occurrences": lost,
                                      "error": "cut: ended without done or error after 3 resumes"})
            run["locust"]["stream"]["failures"] = lost + 2
            r["cells"].append(run)
    row = next(x for x in recommend(r)["table"] if x["need"] == "resumability")
    assert row["verdict"] == "ws", row
    assert "sse_post cut by the proxy: 9 cut streams" in row["why"], row["why"]  # 3 in each of 3 runs
    assert "cut before any answer" in row["why"] and "sse_post 6, ws 6" in row["why"], row["why"]
    summary = recommend(r)["summary"]
    assert set(summary["ws"]["drops"]) == {"client", "proxy"}
    assert summary["ws"]["drops"]["proxy"]["failures"]["unanswered"] == 6
    assert summary["ws"]["drops"]["proxy"]["failures"]["other"] == 0
