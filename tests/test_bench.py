"""The benchmarks at a tiny N: the speed benchmark (every server and transport runs, and the table comes
out), the reconnect storm and the start-up storm's two-worker variant.

Smoke tests only: they check that the benchmarks keep working (each stream counted, the witness stream
decoded in full and correct, every resumed client exact), never how fast.
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


def test_reconnect_storm_benchmark_resumes_every_client_on_both_survivors():
    """The reconnect storm at a tiny N: R1 killed, every client resumes at R2 or R3 with no gap or
    duplicate and reads to `done`; one XRANGE per stream per surviving replica (coalesced)."""
    cmd = [sys.executable, "-m", "loadtests.bench.reconnect", "--clients", "24", "--streams", "3",
           "--tokens", "150", "--itl-ms", "100", "--ramp-s", "0.2", "--transport", "ndjson"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["cut"] == row["resumed"] == row["ended_done"] == 24, row
    assert row["gaps"] == row["duplicates"] == 0, row
    # Half the clients list R2 first, half R3; one whose first try failed went on to the other.
    assert row["by_replica"]["R2"] > 0 and row["by_replica"]["R3"] > 0, row
    assert sum(row["by_replica"].values()) == 24, row
    assert row["xrange"] == 3 * 2, row


def test_storm_benchmark_runs_two_workers():
    """`gateway-w2`: serve --workers 2 on a throwaway Redis; both workers answer."""
    cmd = [sys.executable, "-m", "loadtests.bench.storm", "--n", "40", "--ramp", "0.5", "--tokens", "20",
           "--servers", "gateway-w2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stderr.strip().splitlines()[-1])
    assert row["cores"] == "shared" and row["ok"] == 40 and row["refused"] == 0, row
    assert len(row["per_worker"]) == 2 and sum(row["per_worker"]) == 40, row
