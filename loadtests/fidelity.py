"""Do the Locust users' timings agree with an independent measurement?

    python -m loadtests.fidelity --host http://127.0.0.1:8000 [--seconds 8] [--tolerance-ms 1]

Runs the real locustfile headless (one user per streaming transport, every
stream the same request: fixed prompt and seed, so the simulated model keeps
the same schedule), recording each sample the users report (`--timings-out`).
At the same time, against the same gateway, the project's asyncio client
(gateway.client: httpx and websockets, its own event loop and timestamps, in
another process) runs the same requests with the same concurrency. Per
transport, the medians of time to first token and of the inter-token gaps must
agree within the tolerance. Exit status 1 if not. The model's own schedule for
these requests is printed alongside: both clients sit just above it.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.client import Client
from gateway.models import StreamRequest
from gateway.sources.simulated import SimGeneration
from loadtests import procs
from loadtests.streaming import USER_CLASSES, request_body

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {t: USER_CLASSES[t] for t in ("sse_get", "sse_post", "ndjson", "ws")}
# ttft above 100 ms would be rounded by Locust's stats; the raw samples are not, but keep it readable.
PARAMS = {"prompt_bytes": 64, "max_tokens": 10, "seed": 7, "ttft_ms": 50.0, "itl_ms": 15.0, "jitter": 0.3}


def start_locust(host: str, transports: list[str], seconds: int, out: Path, log) -> subprocess.Popen:
    p = PARAMS
    n = str(len(transports))
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
           "--host", host, "-u", n, "-r", n, "-t", f"{seconds}s", "--only-summary", "--loglevel", "WARNING",
           "--timings-out", str(out), "--prompt-bytes", str(p["prompt_bytes"]),
           "--max-tokens", str(p["max_tokens"]), "--seed", str(p["seed"]), "--ttft-ms", str(p["ttft_ms"]),
           "--itl-ms", str(p["itl_ms"]), "--jitter", str(p["jitter"]), *[CLASSES[t] for t in transports]]
    # stderr to a file: a pipe nobody reads during the run could fill and block Locust.
    return procs.spawn(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)


def read_samples(out: Path, transports: list[str]) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {t: {"ttft": [], "inter_token": []} for t in transports}
    for line in out.read_text().splitlines():
        s = json.loads(line)
        if s["t"] in samples and s["m"] in samples[s["t"]]:
            samples[s["t"]][s["m"]].append(s["ms"])
    return samples


async def client_samples(host: str, transports: list[str], running) -> dict[str, dict[str, list[float]]]:
    """Stream with gateway.client while `running()` is true, one loop per transport, started apart
    as Locust spawns its users (all at once, they would contend in step)."""
    p = PARAMS
    body = request_body(p["prompt_bytes"], p["max_tokens"], p["seed"],
                        ttft_ms=p["ttft_ms"], itl_ms=p["itl_ms"], jitter=p["jitter"])
    fields = {k: v for k, v in body.items() if k != "prompt"}
    samples: dict[str, dict[str, list[float]]] = {t: {"ttft": [], "inter_token": []} for t in transports}

    async def loop(client: Client, transport: str, delay: float) -> None:
        await asyncio.sleep(delay)
        while running():
            started = time.perf_counter()
            result = await client.stream(transport, body["prompt"], **fields)  # sse_get: create, then attach
            arrivals = result.token_arrivals
            if result.done is None or not arrivals:
                raise RuntimeError(f"{transport}: stream did not complete")
            samples[transport]["ttft"].append((arrivals[0] - started) * 1000)
            samples[transport]["inter_token"] += [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:])]

    async with Client(host) as client:
        await asyncio.gather(*(loop(client, t, i / len(transports)) for i, t in enumerate(transports)))
    return samples


def measure(host: str, transports: list[str], seconds: int) -> tuple[dict, dict]:
    """Both at once, against the same gateway: (locust users' samples, gateway.client's samples)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timings.jsonl"
        log = open(Path(tmp) / "locust.log", "w+")
        proc = start_locust(host, transports, seconds, out, log)
        # Bounded whatever Locust does: the client stops streaming at the deadline, and a Locust that
        # has not exited by then is killed with its process group (an error, never a hang).
        deadline = time.monotonic() + seconds + 30
        try:
            while not out.exists() and proc.poll() is None:  # created as Locust starts its users
                if time.monotonic() > deadline:
                    raise RuntimeError(f"locust did not start streaming within {seconds + 30} s")
                time.sleep(0.05)
            independent = uvloop.run(client_samples(
                host, transports, lambda: proc.poll() is None and time.monotonic() < deadline))
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"locust did not exit within {seconds + 30} s of a {seconds} s run") from None
        finally:
            if proc.poll() is None:
                procs.kill_group(proc)
            log.close()
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"locust failed ({proc.returncode}): {(Path(tmp) / 'locust.log').read_text()[-2000:]}")
        return read_samples(out, transports), independent


class _ScheduleClock:
    """Stands in for the gateway's clock to read the simulated model's schedule without waiting."""

    def __init__(self) -> None:
        self.deadlines: list[float] = []

    def now(self) -> float:
        return 0.0

    def call_at(self, deadline: float, callback) -> None:
        self.deadlines.append(deadline)


class _Drain:
    def token(self, text: str) -> None: ...
    def fail(self, code: str, message: str, retryable: bool = False) -> None: ...
    def finish(self, finish_reason: str = "stop") -> None: ...


def schedule() -> dict[str, float]:
    """The model's own schedule for PARAMS (ms): TTFT, and the median gap between tokens.

    Every stream of the run has this schedule (same prompt, seed and max_tokens); what each
    client adds on top is the path: request, server, socket, wake-up.
    """
    p = PARAMS
    request = StreamRequest(**request_body(p["prompt_bytes"], p["max_tokens"], p["seed"],
                                           ttft_ms=p["ttft_ms"], itl_ms=p["itl_ms"], jitter=p["jitter"]))
    clock = _ScheduleClock()
    generation = SimGeneration(_Drain(), clock, request, (p["ttft_ms"], p["itl_ms"], p["jitter"]))
    while len(clock.deadlines) < p["max_tokens"]:
        generation.step()
    times = clock.deadlines
    return {"ttft": times[0] * 1000,
            "inter_token": statistics.median(b - a for a, b in zip(times, times[1:])) * 1000}


def compare(host: str, transports: list[str], seconds: int, tolerance_ms: float) -> tuple[bool, list[dict]]:
    users, independent = measure(host, transports, seconds)
    planned = schedule()
    rows, ok = [], True
    for t in transports:
        for metric in ("ttft", "inter_token"):
            a, b = users[t][metric], independent[t][metric]
            if not a or not b:
                rows.append({"transport": t, "metric": metric, "locust_n": len(a), "client_n": len(b), "ok": False})
                ok = False
                continue
            ma, mb = statistics.median(a), statistics.median(b)
            good = abs(ma - mb) <= tolerance_ms
            ok &= good
            rows.append({"transport": t, "metric": metric, "schedule_ms": round(planned[metric], 3),
                         "locust_ms": round(ma, 3), "client_ms": round(mb, 3),
                         "diff_ms": round(ma - mb, 3), "locust_n": len(a), "client_n": len(b), "ok": good})
    return ok, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="the gateway's base URL")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--tolerance-ms", type=float, default=1.0)
    parser.add_argument("--transports", default=",".join(CLASSES))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    transports = [t for t in args.transports.split(",") if t]
    ok, rows = compare(args.host, transports, args.seconds, args.tolerance_ms)
    if args.json:
        print(json.dumps({"ok": ok, "tolerance_ms": args.tolerance_ms, "params": PARAMS, "rows": rows}))
    else:
        print(f"{'transport':10} {'metric':12} {'schedule':>9} {'locust p50':>11} {'client p50':>11} {'diff':>8} "
              f"{'n (locust/client)':>18}")
        for r in rows:
            print(f"{r['transport']:10} {r['metric']:12} {r.get('schedule_ms', '-'):>9} "
                  f"{r.get('locust_ms', '-'):>11} {r.get('client_ms', '-'):>11} "
                  f"{r.get('diff_ms', '-'):>8} {str(r['locust_n']) + '/' + str(r['client_n']):>18}"
                  + ("" if r["ok"] else "  <-- over tolerance"))
        print(("agree" if ok else "DISAGREE") + f" within {args.tolerance_ms} ms at the median")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
