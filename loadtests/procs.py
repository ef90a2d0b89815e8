"""The one process helper: child processes the lab, the comparison, the benchmarks and the tests start.

Ports (`free_port`), stopping (`stop`: SIGTERM then SIGKILL; `kill_group` for a whole process group),
bounded runs (`run`), readiness (`wait_http`, `wait_port`), what a process costs (`proc_stat`, `scrape`),
and the processes themselves: a gateway (`GatewayProcess`) and a throwaway Redis (`RedisServer`).
A Locust run that does not stop (or a worker it started) must never stall a test or a script: every
wait here is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

__all__ = ["ROOT", "free_port", "stop", "spawn", "kill_group", "run", "find_tool", "wait_http", "wait_port",
           "ProcStat", "proc_stat", "proc_wait", "scrape", "GatewayView", "GatewayProcess", "RedisServer"]

ROOT = Path(__file__).resolve().parent.parent  # the checkout: the lab's configurations, the locustfile
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


_GIVEN: set[int] = set()  # ports handed out by this process: never twice (a cluster asks for twelve at once)


def free_port(host: str = "127.0.0.1") -> int:
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def stop(proc: subprocess.Popen, timeout: float = 8.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen:
    """Popen in a new session (its own process group), so kill_group reaches its children too."""
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process's group, SIGKILL what is left after `grace` seconds; reap the process."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)  # whatever is left: the leader, a worker, a grandchild
    proc.wait()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the group is gone
        pass


def run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run with a group kill on timeout (subprocess.TimeoutExpired is raised after it)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    proc = spawn(cmd, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    except BaseException:
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def find_tool(name: str) -> str | None:
    """nginx, haproxy and redis-server live in /usr/sbin on Debian, often off a user's PATH."""
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Until `url` answers below 500; RuntimeError if `proc` exits first, TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0,
              host: str = "127.0.0.1") -> None:
    """Until a TCP connection to host:port succeeds (for servers without a health URL)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout} s")


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


def proc_wait(pid: int) -> float:
    """Seconds the process's main thread spent runnable but waiting for a CPU (other load)."""
    with open(f"/proc/{pid}/schedstat", "rb") as f:
        return int(f.read().split()[1]) / 1e9


def scrape(url: str) -> dict[str, float]:
    """The gateway's Prometheus samples as {'name{label="value",...}': value}, keyed as exposed."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class GatewayView:
    """A running gateway: its /metrics, and /proc when its pid is known."""

    def __init__(self, url: str, pid: int | None) -> None:
        self.url = url
        self.pid = pid

    def metrics(self) -> dict[str, float]:
        return scrape(self.url)

    def stat(self) -> ProcStat | None:
        return proc_stat(self.pid) if self.pid else None


class GatewayProcess(GatewayView):
    """`python -m gateway serve` on a (free) loopback port, from this checkout; ready when /healthz answers.

    `env` is added to the environment, `args` to the command line; `log` is a file (appended to) or a
    stream for its output (default: inherited).
    """

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None, args: tuple[str, ...] = (),
                 log: Path | IO | int | None = None, timeout: float = 60.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self._log = open(log, "ab") if isinstance(log, (str, Path)) else None
        out = self._log if self._log is not None else log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
            # One process unless asked for workers (the Redis store defaults to one per core).
            cwd=ROOT, env={**os.environ, "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_WORKERS": "1", **(env or {})},
            stdout=out, stderr=out,
        )
        self.pid = self.proc.pid
        try:
            wait_http(self.url + "/healthz", self.proc, timeout)
        except BaseException:
            self.stop()
            raise

    def stat(self) -> ProcStat:
        return proc_stat(self.pid)

    def stop(self) -> None:
        stop(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer:
    """A throwaway redis-server on a free loopback port: no persistence, stoppable and restartable."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.binary = binary or find_tool("redis-server")
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed (tests/setup.sh installs it)")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("redis-server did not answer")

    def client(self):
        """A redis-py client, for tests that inspect the server (CLIENT LIST, keys)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
