"""`python -m gateway compare`: run the matrix, then write the report folder."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..procs import ROOT, GatewayProcess
from . import loadgen
from .baseline import baseline
from .cost import memory_per_connection, wire_cost
from .forks import start as start_forks
from .matrix import CUT_PATH, Matrix
from .progress import Progress
from .proxies import start_cut, start_paths

__all__ = ["run", "conditions"]


def _version(cmd: list[str]) -> str | None:
    exe = shutil.which(cmd[0]) or next((p for p in (f"/usr/sbin/{cmd[0]}",) if os.path.exists(p)), None)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (head + ("+changes" if dirty else "")) or None


def conditions() -> dict:
    """Versions, machine and settings: what a reader needs to weigh the numbers."""
    from gateway.settings import Settings

    versions = {"python": platform.python_version()}
    for dist in ("llm-stream-gateway", "locust", "uvicorn", "fastapi", "starlette", "websockets", "httpx",
                 "matplotlib"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    versions["gateway commit"] = _git()
    versions["nginx"] = _version(["nginx", "-v"])
    versions["haproxy"] = _version(["haproxy", "-v"])
    settings = Settings().model_dump()
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {k: v for k, v in versions.items() if v},
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                    "memory_bytes": _mem_total(), "loadavg_start": list(os.getloadavg())},
        # host and port are the compare run's own; the rest is what the gateway ran with.
        "gateway_settings": {k: v for k, v in settings.items()
                             if k not in ("redis_url", "host", "port", "log_level", "log_prompts")},
        "command": "python -m gateway " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py")
        else " ".join(sys.argv),
    }


def _estimates(matrix: Matrix, paths: list[str]) -> list[tuple[str, float]]:
    steps = [("start the gateway and proxies", 3.0),
             ("baseline: complete vs stream", matrix.ttft_ms / 1000 + max(matrix.baseline_lengths, default=0) * matrix.itl_ms / 1000 + 1.5),
             ("bytes on the wire", len(matrix.transports) * (matrix.max_tokens * min(matrix.itl_ms, 10) / 1000 + 0.6))]
    steps += [(f"{cell.label()}, run {run + 1} of {matrix.runs}", cell.duration_s + 1.0)  # forked: 0.5 s to start
              for run in range(matrix.runs) for cell in matrix.cells() if cell.path in paths]
    steps += [("memory per connection", len(matrix.transports) * (10.0 + max(2.0, matrix.memory_connections / 400))),
              ("report", 4.0)]
    return steps


def run(matrix: Matrix, out: Path, locustfile: Path | None = None, quiet: bool = False,
        networks: str | None = None) -> Path:
    """Run everything the matrix asks for and write the report folder `out`; returns index.html."""
    from . import report, rules

    if locustfile is not None:
        loadgen.LOCUSTFILE = locustfile.resolve()
    if not loadgen.LOCUSTFILE.exists():
        raise SystemExit(f"no locustfile at {loadgen.LOCUSTFILE} (the Locust scenarios, loadtests/locustfile.py)")
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    results: dict = {"matrix": matrix.as_dict(), "conditions": conditions(), "notes": [], "cells": []}
    started = time.monotonic()
    progress = Progress(_estimates(matrix, [*matrix.paths, CUT_PATH]), stream=open(os.devnull, "w") if quiet else None)
    progress.step()
    with ExitStack() as stack:
        # Locust runs fork from one process that imported Locust once (forks.py), or start as processes;
        # it imports while the gateway and the proxies start.
        forks = start_forks(ROOT)
        if forks is not None:
            stack.callback(forks.close)
        gw = stack.enter_context(GatewayProcess(log=raw / "gateway.log"))
        cuts = "proxy" in matrix.drop_by and matrix.drop_rate > 0
        wanted = [*matrix.paths, *([matrix.cut_front] if cuts and matrix.cut_front not in matrix.paths else [])]
        targets, behind, notes = start_paths(wanted, gw, stack)
        if cuts and matrix.cut_front in targets:
            targets[CUT_PATH] = start_cut(targets[matrix.cut_front], matrix.cut_s, stack)
            behind[CUT_PATH] = behind[matrix.cut_front]
        elif cuts:
            notes.append(f"Proxy cuts skipped: the path {matrix.cut_front} in front of which the relay cuts did not start.")
        results["notes"] += notes
        results["paths"] = dict(targets)
        progress.estimates = _estimates(matrix, list(targets))
        progress.step()
        prompt = "x" * matrix.prompt_bytes
        results["baseline"] = (baseline(gw.url, matrix.baseline_lengths, matrix.ttft_ms, matrix.itl_ms, prompt)
                               if matrix.baseline_lengths else [])
        progress.step()
        # Faster than the model's pace to save time; 10 ms apart, each token is still its own write.
        results["wire"] = wire_cost(gw, matrix.transports, matrix.wire_streams,
                                    {"prompt": prompt, "max_tokens": matrix.max_tokens,
                                     "sim": {"ttft_ms": 50, "itl_ms": min(matrix.itl_ms, 10.0)}})
        # Run after run over the whole matrix (not cell after cell), so that a noisy minute on a shared
        # machine lands on every transport alike rather than on one.
        for run_no in range(matrix.runs):
            for cell in matrix.cells():
                if cell.path not in targets:
                    continue
                progress.step()
                results["cells"].append(loadgen.run_cell(cell, matrix, targets[cell.path], behind[cell.path],
                                                         raw, progress.draw, run=run_no, forks=forks))
        results["gateway_rss_end_bytes"] = gw.stat().rss
    progress.step()
    results["memory"] = (memory_per_connection(matrix.transports, matrix.memory_connections, results["notes"])
                         if matrix.memory_connections else [])
    progress.step()
    results["conditions"]["loadavg_end"] = list(os.getloadavg())
    results["conditions"]["duration_s"] = round(time.monotonic() - started, 1)
    if networks == "measure":
        from .. import networks as net
        from ..lab import find_tool

        results["networks"] = net.run(max(matrix.runs, 3), chromium=find_tool("chromium"))
    elif networks:
        results["networks"] = json.loads(Path(networks).read_text())
    results["figures"] = rules.figures(results)
    results["recommendations"] = rules.recommend(results)
    (raw / "results.json").write_text(json.dumps(results, indent=1))
    index = report.write(out, results)
    progress.finish(f"report: {index}")
    return index
