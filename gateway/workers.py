"""`serve --workers N`: N gateway processes on one port, supervised by this one.

Each worker is an ordinary `gateway serve` process (uvicorn, its own event loop, its own drain) that
serves two listening sockets (uvicorn's public `Server.run(sockets=...)`):

- its own SO_REUSEPORT socket on the public port, bound by the worker once its app is built: the
  kernel spreads new connections over the workers' sockets (a hash of the 4-tuple), never to a
  worker still starting, and a draining worker closes its socket so new connections, reconnecting
  clients included, go to the others;
- a private loopback socket (an ephemeral port, kept by this supervisor across restarts): siblings
  read each other's /metrics through it, so one scrape of the public port shows every worker.

The workers share streams through the Redis store, exactly as replicas on several machines do: a
stream created on one worker is attached, resumed and cancelled through any other, and a worker that
dies loses no stream another can serve. `workers > 1` without the Redis store is refused at start.

SIGTERM/SIGINT here drains every worker (each ends as `gateway/drain.py` says) and waits for them; a
worker that dies on its own after it was ready is restarted (at most once a second); one that dies
before it was ever ready stops the supervisor with its exit status.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

__all__ = ["run", "check", "listen", "WORKER_ENV", "PEERS_ENV"]

WORKER_ENV = "GATEWAY_WORKER"  # this worker's index (set by the supervisor)
PEERS_ENV = "GATEWAY_WORKER_PORTS"  # every worker's private loopback port, by index


def check(workers: int, store: str, server: str = "uvicorn") -> str | None:
    """Why `workers` cannot run with this store and server, or None."""
    if workers < 1:
        return "--workers must be at least 1"
    if workers > 1 and server != "uvicorn":
        return f"--workers {workers} runs uvicorn workers; {server} has its own workers option"
    if workers > 1 and store == "memory":
        return (f"--workers {workers} needs the Redis store (GATEWAY_STREAM_STORE=redis, GATEWAY_REDIS_URL): "
                "each worker is its own process, and a stream created on one must be attachable and "
                "resumable through the others. Use --workers 1 with the memory store.")
    return None


def _reuseport(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A worker's listening socket on (host, port), in the port's SO_REUSEPORT group."""
    sock = _reuseport(host)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


@dataclass
class _Worker:
    index: int
    private: socket.socket
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ready: bool = False  # answered /healthz on its private port since it last started
    restarts: int = field(default=0)


def _answers(port: int) -> bool:
    """Whether a worker answers GET /healthz on its private port (any status: it is up)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.1 ")
    except OSError:
        return False


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def run(workers: int, host: str, port: int, server: str = "uvicorn") -> int:
    """Start `workers` processes on host:port and supervise them until SIGTERM/SIGINT."""
    from .settings import get_settings

    problem = check(workers, get_settings().stream_store, server)
    if problem:
        print(f"gateway: {problem}", file=sys.stderr)
        return 2
    # A bound socket that never listens fixes the port (port 0: an ephemeral one) for as long as this
    # supervisor lives; each worker binds and listens on its own once its app is built, so the
    # kernel never routes a connection to a worker still starting.
    reserve = _reuseport(host)
    reserve.bind((host, port))
    port = reserve.getsockname()[1]
    pool = []
    for i in range(workers):
        private = socket.socket()
        private.bind(("127.0.0.1", 0))
        private.listen(128)
        private.set_inheritable(True)
        pool.append(_Worker(i, private))
    peers = json.dumps([w.private.getsockname()[1] for w in pool])
    stopping = False

    def start(w: _Worker) -> None:
        env = {**os.environ, WORKER_ENV: str(w.index), PEERS_ENV: peers}
        fd = w.private.fileno()
        # Its own process group: a terminal's Ctrl-C reaches this supervisor only, which forwards one
        # signal (two would skip the drain); and it gets SIGTERM if this supervisor dies.
        w.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--host", host, "--port", str(port),
                                   "--fds", str(fd)],
                                  env=env, pass_fds=(fd,), process_group=0, preexec_fn=_die_with_parent)
        w.started = time.monotonic()
        w.ready = False

    def on_signal(sig: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for w in pool:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"gateway: {workers} workers on http://{host}:{port} (private ports {peers})", file=sys.stderr, flush=True)
    try:
        for w in pool:
            start(w)
        while not stopping:
            time.sleep(0.2)
            for w in pool:
                if stopping or w.proc is None:
                    continue
                if w.proc.poll() is None:
                    w.ready = w.ready or _answers(w.private.getsockname()[1])
                    continue
                code = w.proc.returncode
                if not w.ready:
                    # It never came up (a setting that cannot work, Redis refused...): restarting would
                    # only repeat that. Stop the others and exit with its status.
                    print(f"gateway: worker {w.index} exited with {code} before it was ready; stopping",
                          file=sys.stderr, flush=True)
                    on_signal(signal.SIGTERM, None)
                    for other in pool:
                        if other.proc is not None:
                            other.proc.wait()
                    return code or 1
                wait = 1.0 - (time.monotonic() - w.started)
                print(f"gateway: worker {w.index} (pid {w.proc.pid}) exited with {code}; restarting",
                      file=sys.stderr, flush=True)
                if wait > 0:
                    time.sleep(wait)
                w.restarts += 1
                start(w)
        for w in pool:
            if w.proc is not None:
                w.proc.wait()
    finally:
        for w in pool:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            w.private.close()
        reserve.close()
    return 0


# -- in each worker: one scrape of the public port shows every worker -------------------------------

async def fleet_metrics(registry: object, me: int, ports: list[int]) -> bytes:
    """This worker's metrics and its siblings' (read through their private ports), each sample
    labelled `worker`, merged family by family; `gateway_worker_up` says which siblings answered.

    Why not prometheus_client's multiprocess mode: the counters here are plain integers read at
    scrape time (nothing per event), which that mode cannot collect; a sibling's live figures are
    one loopback request away.
    """
    import asyncio

    import httpx
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.parser import text_string_to_metric_families

    async def sibling(client: httpx.AsyncClient, port: int) -> str | None:
        try:
            response = await client.get(f"http://127.0.0.1:{port}/metrics", params={"worker": "self"})
            return response.text if response.status_code == 200 else None
        except httpx.HTTPError:
            return None

    async with httpx.AsyncClient(timeout=1.0) as client:
        others = await asyncio.gather(*(sibling(client, p) for i, p in enumerate(ports) if i != me))
    texts: dict[int, str | None] = dict(zip((i for i in range(len(ports)) if i != me), others))
    texts[me] = generate_latest(registry).decode()  # type: ignore[arg-type]
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily("gateway_worker_up", "1 if the worker answered this scrape.", labels=["worker"])
    for index in sorted(texts):
        text = texts[index]
        up.add_metric([str(index)], 0 if text is None else 1)
        for family in text_string_to_metric_families(text or ""):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                merged.add_sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp, s.exemplar)

    class _Merged:
        def collect(self):
            yield up
            yield from families.values()

    out = CollectorRegistry(auto_describe=False)
    out.register(_Merged())
    return generate_latest(out)
