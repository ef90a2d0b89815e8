"""The Transports tab's figures: per transport, live, merged across Locust workers.

Timings come from Locust's own stats (the `ttft`, `inter_token`, `reconnect`
and `stream` rows the users fire, which Locust already merges on the master).
What Locust does not carry is counted here: tokens, bytes and open streams,
plus the load generator's health. Workers send theirs with each stats report
(`report_to_master`); the master adds them up (`worker_report`).

Percentiles are over a sliding window (`WINDOW_S`) of the stats' response-time
histograms, sampled once a second, so they move as the load moves; `totals()`
gives the whole run (what the CSV keeps). Locust rounds response times above
100 ms to 2 significant digits: a TTFT of 304 ms counts as 300.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from typing import Any

import gevent
from locust.stats import calculate_response_time_percentile, diff_response_time_dicts

from gateway.names import OWN, Transport

__all__ = ["Board", "LagMonitor", "ORDER", "METRICS", "COLUMNS"]

log = logging.getLogger("loadtests")

ORDER = tuple(t.value for t in (*OWN, Transport.COMPLETE))  # then any other, by name
METRICS = ("ttft", "inter_token", "reconnect", "stream", "gap", "duplicate")
WINDOW_S = 10.0
HISTORY_POINTS = 3600  # an hour at one point a second
CHARTED = ("ttft_p95", "itl_p99", "tokens_per_s")
# (key, title) of each column of the tab, the JSON rows and the transports CSV, in order.
COLUMNS = (
    ("transport", "Transport"), ("active", "Open streams"), ("streams", "Streams"),
    ("failed", "Failed"), ("tokens", "Tokens"), ("tokens_per_s", "Tokens/s"), ("bytes", "Bytes"),
    ("ttft_p50", "TTFT p50 ms"), ("ttft_p95", "TTFT p95 ms"), ("ttft_p99", "TTFT p99 ms"),
    ("itl_p50", "Inter-token p50 ms"), ("itl_p99", "Inter-token p99 ms"),
    ("reconnects", "Reconnects"), ("reconnect_p99", "Reconnect p99 ms"),
    ("gaps", "Gaps"), ("duplicates", "Duplicates"), ("cuts", "Cut streams"),
    ("refused", "Refused (backed off)"), ("window", "Percentiles over"), ("note", "Note"),
)


class LagMonitor:
    """How late the gevent loop wakes a sleeping greenlet: the load generator's own delay.

    Every timing a user reports includes this lateness. When it grows (CPU
    saturated, too many users per process), the figures blame the gateway for
    the generator's slowness, so it is shown and warned about.
    """

    def __init__(self, interval: float = 0.1, keep: int = 100) -> None:
        self.interval = interval
        self.lags: deque[float] = deque(maxlen=keep)  # seconds late, last `keep` wake-ups
        self.greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
            self.greenlet = None

    def _run(self) -> None:
        while True:
            # A random period, so that periodic work in the users cannot hide between samples.
            delay = self.interval * random.uniform(0.5, 1.5)
            t0 = time.perf_counter()
            gevent.sleep(delay)
            self.lags.append(max(0.0, time.perf_counter() - t0 - delay))

    def percentile_ms(self, p: float) -> float:
        """Lateness at percentile `p` over the last `keep` wake-ups (10 s)."""
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000, 2)


class Board:
    """Counters of one process, and (on a master or a local runner) the merged view."""

    def __init__(self, lag_warn_ms: float = 10.0, cpu_warn: float = 85.0) -> None:
        self.pending: dict[str, list[int]] = {}  # transport -> [tokens, bytes, refused] not yet reported
        self.active: dict[str, int] = {}  # open streams in this process
        self.totals: dict[str, list[int]] = {}  # merged [tokens, bytes]
        self.workers: dict[str, dict[str, Any]] = {}  # worker id -> last {active, cpu, lag_ms}
        self.samples: deque[tuple[float, dict]] = deque()
        self.monitor = LagMonitor()
        self.lag_warn_ms = lag_warn_ms
        self.cpu_warn = cpu_warn
        self.warned = False
        self.scenario: dict[str, Any] = {}  # what the shape decided (throughput ramp: the knee)
        # Once a second, per transport: (seconds into the run, {transport: {ttft_p95, itl_p99, tokens_per_s}}).
        self.history: deque[tuple[float, dict[str, dict]]] = deque(maxlen=HISTORY_POINTS)
        self.started = time.monotonic()

    def reset(self) -> None:
        self.pending.clear()
        self.totals.clear()
        self.samples.clear()
        self.scenario.clear()
        self.history.clear()
        self.started = time.monotonic()
        self.warned = False

    # -- where users run (local runner or worker) -----------------------------

    def opened(self, transport: str) -> None:
        self.active[transport] = self.active.get(transport, 0) + 1

    def closed(self, transport: str, tokens: int, nbytes: int) -> None:
        self.active[transport] -= 1
        self.count(transport, tokens, nbytes)

    def count(self, transport: str, tokens: int, nbytes: int, refused: int = 0) -> None:
        row = self.pending.setdefault(transport, [0, 0, 0])
        row[0] += tokens
        row[1] += nbytes
        row[2] += refused

    def refused(self, transport: str) -> None:
        """A stream refused before it started (its user now backs off)."""
        self.count(transport, 0, 0, 1)

    def report(self, cpu: float) -> dict[str, Any]:
        """This process's part since the last report (a worker sends it to the master)."""
        lag = {"lag_ms": self.monitor.percentile_ms(0.9), "lag_ms_p99": self.monitor.percentile_ms(0.99)}
        out = {"counts": self.pending, "active": dict(self.active), "cpu": cpu, **lag}
        self.pending = {}
        if self.saturated(cpu, lag["lag_ms"]) and not self.warned:
            self.warned = True
            log.warning(
                "load generator saturated (CPU %.0f%%, event loop %.1f ms late at p90): its own delay is in "
                "every TTFT and inter-token figure, not the gateway's. With its CPU high, add worker "
                "processes or run fewer users per process; with it low, the machine is busy with other work",
                cpu, lag["lag_ms"])
        return out

    def saturated(self, cpu: float, lag_ms: float) -> bool:
        """Sustained lateness (p90 over 10 s, not one hiccup) or CPU near a full core."""
        return cpu >= self.cpu_warn or lag_ms >= self.lag_warn_ms

    # -- where figures are shown (local runner or master) ---------------------

    def merge(self, worker: str, part: dict[str, Any]) -> None:
        for transport, counts in part["counts"].items():
            row = self.totals.setdefault(transport, [0, 0, 0])
            for i, n in enumerate(counts):
                row[i] += n
        self.workers[worker] = {k: part[k] for k in ("active", "cpu", "lag_ms", "lag_ms_p99")}

    def sample(self, stats) -> None:
        """Keep the histograms and token counts of now, for windowed figures later."""
        now = time.monotonic()
        entries = {key: (dict(e.response_times), e.num_requests) for key, e in stats.entries.items()}
        self.samples.append((now, {"entries": entries, "tokens": {t: r[0] for t, r in self.totals.items()}}))
        while len(self.samples) > 1 and now - self.samples[1][0] >= WINDOW_S:
            self.samples.popleft()

    def rows(self, runner, window: bool = True) -> list[dict[str, Any]]:
        """One row per transport seen (columns as in COLUMNS); `window`: the last WINDOW_S only."""
        stats = runner.stats
        past = self.samples[0] if window and self.samples else None
        elapsed = time.monotonic() - past[0] if past else None
        seen = {method for (_, method) in stats.entries} | set(self.totals)
        rows = []
        for transport in [t for t in ORDER if t in seen] + sorted(seen - set(ORDER)):
            entry = {m: stats.entries.get((m, transport)) for m in METRICS}

            def pct(metric: str, p: float) -> float | None:
                e = entry[metric]
                if e is None or not e.num_requests:
                    return None
                times, n = e.response_times, e.num_requests
                if past is not None:
                    old_times, old_n = past[1]["entries"].get((metric, transport), ({}, 0))
                    times, n = diff_response_time_dicts(times, old_times), n - old_n
                    if n <= 0:
                        return None
                return calculate_response_time_percentile(times, n, p)

            tokens, nbytes, refused = self.totals.get(transport, (0, 0, 0))
            rate = None
            if past is not None and elapsed:
                rate = round((tokens - past[1]["tokens"].get(transport, 0)) / elapsed, 1)
            elif runner.stats.total.start_time:
                rate = round(tokens / max(1e-3, time.time() - runner.stats.total.start_time), 1)
            errors = [e for e in stats.errors.values() if e.method == transport]
            stream = entry["stream"]
            rows.append({
                "transport": transport,
                "active": sum(w["active"].get(transport, 0) for w in self.workers.values()),
                "streams": stream.num_requests if stream else 0,
                "failed": stream.num_failures if stream else 0,
                "tokens": tokens, "tokens_per_s": rate, "bytes": nbytes,
                "ttft_p50": pct("ttft", 0.5), "ttft_p95": pct("ttft", 0.95), "ttft_p99": pct("ttft", 0.99),
                "itl_p50": pct("inter_token", 0.5), "itl_p99": pct("inter_token", 0.99),
                "reconnects": entry["reconnect"].num_requests if entry["reconnect"] else 0,
                "reconnect_p99": pct("reconnect", 0.99),
                "gaps": entry["gap"].num_failures if entry["gap"] else 0,
                "duplicates": entry["duplicate"].num_failures if entry["duplicate"] else 0,
                "cuts": sum(e.occurrences for e in errors if e.name == "stream" and "cut:" in str(e.error)),
                "refused": refused,
                "window": f"last {WINDOW_S:g} s" if past is not None else "whole run",
                "note": "",
            })
        return rows

    def record(self, rows: list[dict[str, Any]]) -> None:
        """One point of the chart over time: the windowed figures of now."""
        point = {r["transport"]: {k: r[k] for k in CHARTED} for r in rows}
        self.history.append((round(time.monotonic() - self.started, 1), point))

    def generator(self) -> dict[str, Any]:
        workers = list(self.workers.values())
        cpu = max((w["cpu"] for w in workers), default=0.0)
        lag = max((w["lag_ms"] for w in workers), default=0.0)
        return {"processes": len(workers), "cpu_percent": round(cpu, 1), "lag_ms_p90": lag,
                "lag_ms_p99": max((w["lag_ms_p99"] for w in workers), default=0.0),
                "saturated": self.saturated(cpu, lag),
                "lag_warn_ms": self.lag_warn_ms, "cpu_warn_percent": self.cpu_warn}
