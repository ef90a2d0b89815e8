"""Processes the comparison starts, and what it reads from them: /proc and the gateway's /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..procs import free_port, stop

__all__ = ["ROOT", "free_port", "GatewayView", "GatewayProcess", "ProcStat", "proc_stat", "scrape", "stop"]

ROOT = Path(__file__).resolve().parents[2]
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    cpu_s: float  # user + system CPU seconds so far
    rss: int  # resident bytes now
    at: float  # time.monotonic() of the reading


def proc_stat(pid: int) -> ProcStat:
    """CPU time from /proc/<pid>/stat (utime + stime), RSS from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = raw[raw.rindex(b")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK
    with open(f"/proc/{pid}/statm", "rb") as f:
        rss = int(f.read().split()[1]) * _PAGE
    return ProcStat(cpu, rss, time.monotonic())


def scrape(url: str) -> dict[str, float]:
    """The gateway's Prometheus samples as {'name{label=value}': value}."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class GatewayView:
    """A running gateway the comparison reads: its /metrics, and /proc when its pid is known."""

    def __init__(self, url: str, pid: int | None) -> None:
        self.url = url
        self.pid = pid

    def metrics(self) -> dict[str, float]:
        return scrape(self.url)

    def stat(self) -> ProcStat | None:
        return proc_stat(self.pid) if self.pid else None


class GatewayProcess(GatewayView):
    """`python -m gateway serve` on a free loopback port, from this checkout."""

    def __init__(self, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env={**os.environ, "GATEWAY_LOG_LEVEL": "warning", **(env or {})},
            stdout=self._log, stderr=self._log,
        )
        self.pid = self.proc.pid
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode} before it answered")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the gateway did not answer within {timeout} s")

    def stat(self) -> ProcStat:
        return proc_stat(self.pid)

    def stop(self) -> None:
        stop(self.proc)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
