"""One cell of the matrix: Locust headless with the project's users, and the gateway measured meanwhile."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.names import counted_as

from ..procs import ROOT, GatewayView, ProcStat, proc_stat, stop
from ..streaming import USER_CLASSES
from .forks import ForkServer
from .matrix import Cell, Matrix

__all__ = ["LOCUSTFILE", "METRICS", "run_cell", "locust_args", "read_locust_json", "percentile",
           "SATURATED_CPU", "EXACT", "exact_figures"]

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
PLUGIN = Path(__file__).with_name("locust_plugin.py")
METRICS = ("ttft", "inter_token", "stream", "reconnect")
# Locust runs on one core (gevent): above this share of it, its own timings are suspect.
SATURATED_CPU = 0.9
_SAMPLE_S = 0.5




def locust_args(cell: Cell, matrix: Matrix, url: str) -> list[str]:
    """The locustfile's own arguments for this cell (documented at the top of loadtests/locustfile.py)."""
    if cell.kind == "reconnect" and cell.cut_by == "proxy":
        # Steady load through the cutting relay: the cuts are the relay's, the users resume by themselves.
        args = ["--scenario", "proxy", "--target", url]
    elif cell.kind == "reconnect":
        rate = f"{matrix.drop_rate:g}"
        args = (["--scenario", "reconnection", "--drop-rate", "0", "--client-drop-rate", rate]
                if cell.cut_by == "client" else ["--scenario", "reconnection", "--drop-rate", rate])
    elif cell.path != "direct":
        args = ["--scenario", "proxy", "--target", url]
    else:
        args = ["--scenario", "steady"]
    args += ["--max-tokens", str(matrix.max_tokens), "--ttft-ms", f"{matrix.ttft_ms:g}",
             "--itl-ms", f"{matrix.itl_ms:g}", "--prompt-bytes", str(matrix.prompt_bytes)]
    return [*args, USER_CLASSES[cell.transport]]


def percentile(response_times: dict, count: int, share: float) -> float:
    """Locust's own percentile over its histogram (`locust.stats.calculate_response_time_percentile`,
    restated so this process need not import locust, which monkey-patches the standard library)."""
    wanted = int(count * share)
    seen = 0
    for value in sorted(response_times, key=float, reverse=True):
        seen += response_times[value]
        if count - seen <= wanted:
            return float(value)
    return 0.0


# Exact figures from the per-stream records (--streams-out), vLLM benchmark_serving's terms: per stream
# TTFT, TPOT and E2E latency; every gap between tokens (ITL) and between reads (inter-chunk); every resume.
EXACT = {"ttft": ("ttft_ms", "streams"), "tpot": ("tpot_ms", "streams"), "e2e": ("e2e_ms", "streams"),
         "itl": ("itl_ms", "gaps between tokens"), "chunk": ("chunk_ms", "gaps between reads"),
         "resume": ("resume_ms", "resumes")}
QUANTILES = (50, 90, 95, 99)


def exact_figures(records: list[dict]) -> dict[str, dict]:
    """{metric: {count, of, mean, p50, p90, p95, p99}} over the streams that succeeded."""
    from .stats import percentile

    ok = [r for r in records if r["ok"]]
    out = {}
    for metric, (key, of) in EXACT.items():
        values: list[float] = []
        for r in ok:
            v = r.get(key)
            if isinstance(v, list):
                values += v
            elif v is not None:
                values.append(v)
        out[metric] = {"count": len(values), "of": of,
                       "mean": round(sum(values) / len(values), 3) if values else None,
                       **{f"p{q}": (None if not values else round(percentile(values, q), 3)) for q in QUANTILES}}
    return out


def read_streams(path: Path) -> list[dict]:
    """The per-stream records of a cell (Locust's workers write PATH.<pid>; one process here)."""
    records = []
    for p in [path, *sorted(path.parent.glob(path.name + ".*"))]:
        if p.exists():
            records += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return records


def read_locust_json(path: Path) -> dict[str, dict[str, dict]]:
    """{transport: {metric: figures}} from Locust's `--json-file` output."""
    out: dict[str, dict[str, dict]] = {}
    for entry in json.loads(path.read_text()):
        n = entry["num_requests"]
        times = entry["response_times"]
        out.setdefault(entry["method"], {})[entry["name"]] = {
            "count": n,
            "failures": entry["num_failures"],
            "p50": percentile(times, n, 0.50) if n else None,
            "p95": percentile(times, n, 0.95) if n else None,
            "p99": percentile(times, n, 0.99) if n else None,
            "mean": round(entry["total_response_time"] / n, 2) if n else None,
            "max": round(entry["max_response_time"], 2) if n and entry["max_response_time"] is not None else None,
            "content_length": entry["total_content_length"],
            "histogram": {str(k): v for k, v in times.items()},
        }
    return out


class _Sampler(threading.Thread):
    """CPU and RSS of the gateway and of Locust, every half second, while a cell runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: dict[str, list[ProcStat]] = {name: [] for name in pids}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for name, pid in self.pids.items():
                try:
                    self.samples[name].append(proc_stat(pid))
                except (FileNotFoundError, ProcessLookupError, ValueError):
                    pass
            self.halt.wait(_SAMPLE_S)


def _cpu_shares(samples: list[ProcStat]) -> list[float]:
    """Share of one core used between consecutive samples."""
    return [(b.cpu_s - a.cpu_s) / (b.at - a.at) for a, b in zip(samples, samples[1:]) if b.at > a.at]


def _delta(before: dict, after: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def gateway_delta(before: dict, after: dict, transport: str) -> dict:
    """What the gateway counted for one transport during a cell (its resumes included)."""
    labels = counted_as(transport)

    def per(metric: str) -> float:
        return sum(_delta(before, after, f'{metric}{{transport="{label}"}}') for label in labels)

    errors = sum(after[k] - before.get(k, 0.0) for k in after if k.startswith("gateway_stream_errors_total"))
    events = per("gateway_events_sent_total")
    created = _delta(before, after, "gateway_streams_created_total")
    finished = _delta(before, after, "gateway_streams_finished_total")
    return {
        "events": int(events),
        "bytes": int(per("gateway_bytes_sent_total")),
        "streams_created": int(created),
        "streams_finished": int(finished),
        "stream_errors": int(errors),
        "drops": int(per("gateway_drops_total")),
        "wasted_tokens": int(_delta(before, after, "gateway_wasted_tokens_total")),
        "resumes": int(per("gateway_resumes_total")),
        "disconnects": int(per("gateway_disconnects_total")),
        # Every stream sends one meta and at most one terminal event; the rest are tokens.
        "tokens": max(0, int(events - created - finished - errors)),
    }


def _users_reached(history: Path) -> int | None:
    """The most users Locust had running, from its stats history (one row a second)."""
    try:
        with open(history, newline="") as f:
            return max((int(row["User Count"]) for row in csv.DictReader(f)), default=None)
    except (OSError, ValueError, KeyError):
        return None


def run_cell(cell: Cell, matrix: Matrix, url: str, gw: GatewayView, raw: Path,
             tick: Callable[[], None] = lambda: None, run: int = 0, forks: ForkServer | None = None) -> dict:
    """Run Locust for one cell (its run `run`) against `url` (the gateway, directly or through a proxy):
    a fork of the fork server when there is one (loadtests/compare/forks.py), else a new process."""
    name = f"{cell.id}-r{run}"
    prefix = raw / name
    extra = prefix.with_name(name + "_extra.json")
    streams_out = prefix.with_name(name + "_streams.jsonl")
    cmd = [sys.executable, "-m", "locust", "-f", f"{LOCUSTFILE},{PLUGIN}", "--headless",
           "-u", str(cell.users), "-r", str(cell.users), "-t", f"{max(1, round(cell.duration_s))}s",  # whole seconds
           "--host", url, "--csv", str(prefix), "--json-file", str(prefix),
           "--exit-code-on-error", "0", "--stop-timeout", "0", "--streams-out", str(streams_out),
           *locust_args(cell, matrix, url)]
    env = {**os.environ, "GATEWAY_COMPARE_EXTRA": str(extra), "PYTHONPATH": str(ROOT)}
    before = gw.metrics()
    gw_start = gw.stat()
    log_path = prefix.with_name(name + "_locust.log")
    with open(log_path, "wb") as log:
        try:
            proc = forks.spawn(cmd[3:], env, log_path, ROOT) if forks is not None else None  # cmd[:3]: python -m locust
        except (OSError, RuntimeError):
            proc = None  # the fork server failed: a process, as without it
        if proc is None:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = _Sampler({"locust": proc.pid} | ({"gateway": gw.pid} if gw.pid else {}))
        sampler.start()
        # Locust stops by itself after -t; past this, ask it to stop (SIGTERM: it still writes its files).
        deadline = time.monotonic() + cell.duration_s + 40  # Locust's own start takes 10 s on a loaded box
        overran = False
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline and not overran:
                    overran = True
                    proc.terminate()
                    deadline += 15
                elif time.monotonic() > deadline:
                    break
                tick()
                time.sleep(0.2)
        finally:
            stop(proc)
            sampler.halt.set()
            sampler.join()
    gw_end = gw.stat()
    after = gw.metrics()
    log_text = prefix.with_name(name + "_locust.log").read_text(errors="replace")
    json_path = prefix.with_name(name + ".json")
    problem = None
    if overran:
        problem = f"Locust did not stop {cell.duration_s + 40:g} s after starting and was stopped with SIGTERM"
    if not json_path.exists():
        tail = " / ".join(log_text.strip().splitlines()[-3:])
        problem = (problem or f"Locust exited with {proc.returncode}") + f" and wrote no results ({tail[-300:]})"
    stats = read_locust_json(json_path) if json_path.exists() else {}
    reached = _users_reached(prefix.with_name(name + "_stats_history.csv"))
    if reached is not None and reached < cell.users and problem is None:
        problem = f"Locust reached only {reached} of {cell.users} users"
    extra_data = json.loads(extra.read_text()) if extra.exists() else {}
    board_path = prefix.with_name(name + "_transports.json")
    board = json.loads(board_path.read_text()) if board_path.exists() else {}
    generator = board.get("generator", {})
    locust_cpu = _cpu_shares(sampler.samples["locust"])
    # Locust's first second is its import and start-up: judge saturation on the run itself.
    busy = locust_cpu[2:] or locust_cpu
    gw_cpu_s = gw_end.cpu_s - gw_start.cpu_s if gw_start and gw_end else None
    gw_samples = sampler.samples.get("gateway", [])
    gateway = gateway_delta(before, after, cell.transport)
    gateway |= {
        "cpu_s": None if gw_cpu_s is None else round(gw_cpu_s, 3),
        "cpu_us_per_token": (round(gw_cpu_s * 1e6 / gateway["tokens"], 1)
                             if gw_cpu_s is not None and gateway["tokens"] else None),
        "cpu_share_peak": round(max(_cpu_shares(gw_samples)), 3) if len(gw_samples) > 1 else None,
        "rss_peak_bytes": max((s.rss for s in gw_samples), default=None),
        "tokens_per_s": round(gateway["tokens"] / cell.duration_s, 1),
    }
    warned = extra_data.get("cpu_warning_emitted", False) or "CPU usage above" in log_text
    peak = max(busy, default=0.0)
    lagged = bool(generator.get("saturated"))
    records = read_streams(streams_out)
    refused = sum(1 for r in records if (r["failure"] or "").startswith("refused:"))
    return {
        "cell": cell.id, "run": run, "kind": cell.kind, "transport": cell.transport, "path": cell.path,
        "cut_by": cell.cut_by or None,
        "exact": exact_figures(records),
        "streams": {"recorded": len(records), "ok": sum(r["ok"] for r in records), "refused": refused,
                    "failures": sorted({r["failure"] for r in records if r["failure"]})[:5]},
        "users": cell.users, "users_reached": reached, "duration_s": cell.duration_s,
        "locust": stats.get(cell.transport, {}),
        "locust_other_rows": sorted(f"{t}/{m}" for t in stats if t != cell.transport for m in stats[t]),
        "errors": extra_data.get("errors", []),
        "gateway": gateway,
        "load_generator": {
            "cpu_share_mean": round(sum(busy) / len(busy), 3) if busy else None,
            "cpu_share_peak": round(peak, 3),
            "locust_cpu_warning": warned,
            "event_loop_lag_p99_ms": generator.get("lag_ms_p99"),
            "users_report_saturated": lagged,
            "saturated": warned or lagged or peak >= SATURATED_CPU,
        },
        "command": " ".join(cmd[1:]).replace(str(ROOT) + "/", ""),
        "problem": problem,
    }
