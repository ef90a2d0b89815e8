"""The speed benchmark at a tiny N: every server and transport runs, and the table comes out.

A smoke test only: it checks that the benchmark keeps working (each stream
counted, the witness stream decoded in full and correct), never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys

from loadtests.bench.peers import PEERS
from loadtests.bench.speed import HEAD

from .support import ROOT


def test_speed_benchmark_runs_gateway_and_every_peer(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, "-m", "loadtests.bench.speed", "--n", "4", "--transports", "sse,ndjson,ws",
           "--tokens", "20", "--ramp", "0.2", "--warmup", "0.5", "--duration", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    expected = {("gateway", t) for t in ("sse_post", "ndjson", "ws")}  # "sse" on the command line: sse_post
    expected |= {(peer, t) for peer, transports in PEERS.items() for t in transports}
    assert {(r["server"], r["transport"]) for r in rows} == expected, proc.stderr[-3000:]
    for r in rows:
        where = f"{r['server']} {r['transport']}"
        assert r["witness"] == "ok", where  # one stream decoded with the codecs: every token, in order
        assert r["errors"] == 0, where  # no stream ended short or refused
        assert r["events"] > 0 and r["streams"] > 0, where
        assert r["server_cpu_s"] >= 0 and r["rss"] > 0, where
    table = proc.stdout
    assert "| " + " | ".join(HEAD) + " |" in table
    assert table.count("\n| ") == len(rows)  # one line per row under the header
    # The gateway's rows carry no ratio; every peer row has one ("n/a" when the gateway's CPU read 0
    # clock ticks in this 1-second run on a loaded machine: nothing to divide by).
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert (cells[-1].endswith("x") or cells[-1] == "n/a") == (cells[2] != "gateway"), line


def test_gateway_alone(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtests.bench.speed", "--n", "3", "--transports", "ndjson",
                           "--peers", "none", "--windows", "0,40", "--tokens", "10", "--ramp", "0",
                           "--warmup", "0.3", "--duration", "0.5"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ndjson")]
    # One row per write window: the plain gateway, then the one with a 40 ms window, each checked by its witness.
    assert len(rows) == 2 and "| gateway |" in rows[0] and "| gateway w40 |" in rows[1], rows
    assert all("| ok |" in row for row in rows), rows
