"""loadtests/networks.py: the dead-connection rows from real breaks, and the verdict rows from fixed figures."""

from __future__ import annotations

import asyncio

import pytest

from loadtests import networks
from loadtests.lab import Lab

pytestmark = pytest.mark.timeout(240)


def test_dead_connection_rows_show_each_client_noticing_at_its_read_timeout():
    with Lab(port=0, proxies=(), gateway_env={"GATEWAY_HEARTBEAT_S": "1"}) as lab:
        d = asyncio.run(networks.dead_connections(lab, runs=1, streams=3))
    assert d["heartbeat_s"] == 1 and d["read_timeout_s"] == networks.READ_TIMEOUT_S == 3
    for client, r in d["clients"].items():  # python and locust, each transport
        assert r["resumed"] == r["streams"] == 3, client
        assert 2.5 < r["notice_s"]["value"] < 5.0, client  # the 3 s read timeout, not a close handshake
        assert r["notice_s"]["value"] < r["resume_s"]["value"] < r["notice_s"]["value"] + 3, client


def _fig(value: float, samples: int = 210) -> dict:
    return {"value": value, "lo": value * 0.95, "hi": value * 1.05, "runs": [value] * 3, "samples": samples,
            "of": "streams"}


def dead(resume: float) -> dict:
    return {"notice_s": _fig(3.0), "resume_s": _fig(resume), "read_timeout_s": 3, "resumed": 210, "streams": 210}


def fixed() -> dict:
    """A networks run's results with fixed figures (3 runs, 210 samples each)."""
    row = lambda ttft, wait, exact=210: {"ttft_s": _fig(ttft), "longest_wait_s": _fig(wait), "exact": exact,  # noqa: E731
                                         "streams": 210, "reconnects": 0, "bytes_per_token": 40}
    m = {
        "runs": 3, "heartbeat_s": 1, "read_timeout_s": 3,
        "mobile_networks": {
            "3g": {"profile": "300 ms RTT", "judged_by": "ttft_s",
                   "transports": {"sse_post": row(0.70, 0.1), "ndjson": row(0.71, 0.1), "ws": row(0.95, 0.1)}},
            "train": {"profile": "", "judged_by": "longest_wait_s",
                      "transports": {"sse_post": row(0.4, 1.0), "ndjson": row(0.4, 1.02), "ws": row(0.4, 1.5)}},
        },
        "strict_proxies": {
            "nginx-strict": {"transports": {"sse_post": "streams", "ndjson": "streams", "ws": "refused (InvalidStatus)"},
                             "auto": {"fallback_s": _fig(0.07), "ttft_s": _fig(0.5), "exact": 210, "streams": 210,
                                      "ended_on": "sse_post"}},
        },
        "many_tabs": {f"{p} {k}": {"opened": 8, "streaming": [8 if p == "HTTP/2" or k == "ws" else 6] * 3}
                      for p in ("HTTP/1.1", "HTTP/2") for k in ("sse_get", "sse_post", "ws")},
        "dead_connections": {"heartbeat_s": 1, "read_timeout_s": 3, "ws_ping": "none", "clients": {
            "python sse_post": dead(3.1), "python ndjson": dead(3.1), "python ws": dead(13.0),
            "page sse_get": {"notice_s": None, "resume_s": None, "read_timeout_s": None, "resumed": 0,
                                 "streams": 3, "limit_s": 15}}},
    }
    return m


def test_verdicts_follow_the_figures():
    m = fixed()
    got = {r["need"]: r for r in networks.verdicts(m)}
    tied = lambda label: set(label.removeprefix("tie: ").split(", "))  # noqa: E731
    assert tied(got["mobile networks"]["verdict"]) == {"ndjson", "sse_post"}  # ws loses both profiles
    assert tied(got["strict proxies"]["verdict"]) == {"sse_post", "ndjson"}
    assert "ws via nginx-strict: refused" in got["strict proxies"]["why"]
    assert got["many tabs"]["verdict"] == "HTTP/1.1: ws; HTTP/2: sse_get, sse_post, ws"
    assert tied(got["dead connections"]["verdict"]) == {"sse_post", "ndjson"}
    assert "never noticed: page sse_get" in got["dead connections"]["why"]
    # Too few samples: not judged, never a winner.
    m["dead_connections"]["clients"]["python ws"]["resume_s"] = _fig(1.0, samples=20)
    assert tied(networks.verdicts(m)[-1]["verdict"]) == {"sse_post", "ndjson"}


def test_the_comparison_report_decides_these_needs_from_a_networks_run(tmp_path):
    """compare --networks FILE: the four verdicts printed in summary.md come from the networks run, in place
    of loopback's "not measured", and its tables follow."""
    from loadtests.compare import report
    from loadtests.compare.rules import figures, recommend

    from .test_compare_rules import FAST, SLOW, fixed_frame

    r = fixed_frame(FAST, SLOW)
    r["networks"] = fixed()
    r["figures"] = figures(r)
    r["recommendations"] = recommend(r)
    (tmp_path / "raw").mkdir(parents=True)
    report.write(tmp_path, r)
    md = (tmp_path / "summary.md").read_text()
    rows = md.split("### Which transport for which need", 1)[1].split("\n###", 1)[0]
    cells = [[x.strip() for x in line.strip("|").split("|")] for line in rows.splitlines() if line.startswith("|")]
    printed = {row[0]: row[1] for row in cells[2:]}
    assert printed["browser client"] == "sse_post"  # loopback's own verdicts stay
    assert printed["mobile networks"] == "tie: ndjson, sse_post"
    assert printed["strict proxies"] == "tie: sse_post, ndjson"
    assert printed["many tabs"] == "HTTP/1.1: ws; HTTP/2: sse_get, sse_post, ws"
    assert set(printed["dead connections"].removeprefix("tie: ").split(", ")) == {"sse_post", "ndjson"}
    for title in ("Dead connections", "Strict proxies", "Many tabs", "Mobile networks"):
        assert f"### {title}" in md
    assert "Networks and hard paths" in (tmp_path / "index.html").read_text()
