"""The Locust scenarios, run headless against a real gateway; figures read back from their CSV files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .support import ROOT, gateway

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
STREAMING = ("sse_get", "sse_post", "ndjson", "ws")


def run_locust(tmp_path: Path, host: str, *args: str, users: int = 8, seconds: int = 6,
               timeout: float = 90) -> dict:
    """Run Locust headless; return its stats rows {(type, name): row}, failures and transports JSON."""
    prefix = tmp_path / "run"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host, "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--csv", str(prefix),
           "--stop-timeout", "5", "--loglevel", "WARNING", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    with open(f"{prefix}_stats.csv") as f:
        stats = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    with open(f"{prefix}_failures.csv") as f:
        failures = list(csv.DictReader(f))
    with open(f"{prefix}_transports.json") as f:
        transports = json.load(f)
    return {"stats": stats, "failures": failures, "transports": transports, "log": proc.stderr}


def median(stats: dict, transport: str, name: str) -> float:
    return float(stats[(transport, name)]["50%"])


@pytest.fixture(scope="module")
def gw():
    with gateway() as g:
        yield g


def test_steady_every_transport(gw, tmp_path):
    out = run_locust(tmp_path, gw.url, "--max-tokens", "30", "--ttft-ms", "200", "--itl-ms", "20")
    stats = out["stats"]
    for transport in STREAMING:
        for metric in ("ttft", "inter_token", "stream"):
            assert int(stats[(transport, metric)]["Request Count"]) > 0, (transport, metric)
        # TTFT near the configured 200 ms (jitter 0.3 spreads it over 140..260 ms, plus connection setup).
        assert 140 <= median(stats, transport, "ttft") <= 300, transport
        assert 14 <= median(stats, transport, "inter_token") <= 30, transport
    # The baseline sees its first token with the last: about ttft + 30 tokens x 20 ms.
    assert median(stats, "complete", "ttft") >= 600
    assert not out["failures"], out["failures"]
    rows = {r["transport"]: r for r in out["transports"]["totals"]}
    for transport in STREAMING:
        row = rows[transport]
        assert row["tokens"] >= 30 * row["streams"]  # every stream's tokens, and those cut short at the end
        assert row["bytes"] > row["tokens"] * 10
        assert row["gaps"] == row["duplicates"] == row["cuts"] == 0
