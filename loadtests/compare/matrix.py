"""What a comparison runs: the matrix of cells, from a preset and the command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gateway.names import RESUMABLE

__all__ = ["Matrix", "Cell", "PRESETS", "PATHS", "TRANSPORTS", "CUT_PATH", "DROP_BY", "from_args"]

# Transports as the Locust users name them (request_type, loadtests/locustfile.py).
TRANSPORTS = tuple(t.value for t in RESUMABLE)  # gateway/names.py; responses: OpenAI's Responses API
# Deployment paths: "direct" to the gateway, the others are the proxy lab's paths (loadtests/lab.py).
PATHS = ("direct", "nginx-defaults", "nginx-accel", "nginx-tuned", "haproxy", "haproxy-tuned")


@dataclass
class Matrix:
    transports: list[str]
    concurrency: list[int]
    paths: list[str] = field(default_factory=lambda: ["direct"])
    token_rate: float = 20.0  # tokens per second per stream
    ttft_ms: float = 300.0
    max_tokens: int = 60
    prompt_bytes: int = 200
    drop_rate: float = 1.0  # share of streams cut mid-way in the reconnection cells
    # Who cuts them, a reconnection cell per transport for each: "client" (the user closes its own socket,
    # as a lost network does), "server" (the gateway's fault injection, sim.drop_after) or "proxy" (a lab
    # relay in front of `cut_front` resets each connection `cut_after_s` after it opened, as a load
    # balancer's connection age limit, a NAT timeout or a proxy reload does; every stream longer than
    # that is cut, `drop_rate` aside).
    drop_by: list[str] = field(default_factory=lambda: ["client", "proxy"])
    cut_front: str = "direct"  # the path the cutting proxy stands in front of
    cut_after_s: float | None = None  # None: half a stream (TTFT + all its tokens), so cuts land mid-stream
    runs: int = 3  # every cell runs this many times, in turn (loadtests/compare/stats.py)
    cell_s: float = 8.0
    reconnect_users: int = 10
    reconnect_s: float = 6.0
    memory_connections: int = 200
    baseline_lengths: list[int] = field(default_factory=lambda: [4, 16, 64, 160])
    wire_streams: int = 3

    @property
    def itl_ms(self) -> float:
        return 1000.0 / self.token_rate

    @property
    def cut_s(self) -> float:
        """Seconds after which the cutting proxy resets a connection."""
        if self.cut_after_s is not None:
            return self.cut_after_s
        return round((self.ttft_ms + self.max_tokens * self.itl_ms) / 2000, 3)

    def cells(self) -> list[Cell]:
        """Load cells (transport x concurrency), then each proxy path at the lowest concurrency (buffering
        shows without load), then one reconnection cell per transport. (One run; `runs` repeats them.)"""
        out = [Cell("load", t, "direct", c, self.cell_s) for t in self.transports for c in self.concurrency]
        out += [Cell("load", t, p, min(self.concurrency), self.cell_s)
                for p in self.paths if p != "direct" for t in self.transports]
        if self.drop_rate > 0:
            out += [Cell("reconnect", t, CUT_PATH if by == "proxy" else "direct", self.reconnect_users,
                         self.reconnect_s, by) for by in self.drop_by for t in self.transports]
        return out

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"itl_ms": self.itl_ms, "cut_s": self.cut_s}


@dataclass(frozen=True)
class Cell:
    kind: str  # "load" or "reconnect"
    transport: str
    path: str
    users: int
    duration_s: float
    cut_by: str = ""  # reconnection cells: "client", "server" or "proxy"

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.path}-{self.transport}-c{self.users}"

    def label(self) -> str:
        where = "" if self.path == "direct" else f" via {self.path}"
        return f"{self.kind} {self.transport}{where} x{self.users}"


# The path of the reconnection cells whose connections a proxy cuts (loadtests/compare/proxies.py).
CUT_PATH = "proxy-cut"
DROP_BY = ("client", "server", "proxy")


PRESETS: dict[str, dict] = {
    # Every transport at two concurrency levels, direct and through stock nginx and stock HAProxy, each
    # cell 3 times; short answers so that every cell has over 200 streams (TTFT samples) in its runs.
    "quick": dict(transports=list(TRANSPORTS), concurrency=[20, 60], paths=["direct", "nginx-defaults", "haproxy"],
                  max_tokens=24, token_rate=40.0, ttft_ms=200.0, cell_s=5.0, reconnect_users=30,
                  reconnect_s=6.0, memory_connections=200, baseline_lengths=[4, 16, 64, 128]),
    # Where each transport starts to slip, through every proxy path the lab has.
    "full": dict(transports=list(TRANSPORTS), concurrency=[20, 50, 100, 200, 400],
                 paths=list(PATHS), cell_s=15.0, reconnect_users=30, reconnect_s=15.0,
                 memory_connections=500, baseline_lengths=[2, 4, 8, 16, 32, 64, 128, 256], wire_streams=5),
    # For the end-to-end tests: the smallest matrix that still has every section (and 200 streams a cell).
    # The proxy is real in the reconnection cells: the cutting relay stands in front of tuned nginx, so one
    # cell has the lab's nginx, the relay's resets and the users' resumes through both.
    "tiny": dict(transports=["sse_post", "ws"], concurrency=[10], paths=["direct"], cell_s=2.0,
                 reconnect_users=10, reconnect_s=2.0, max_tokens=6, token_rate=20.0, ttft_ms=40.0,
                 drop_by=["proxy"], cut_front="nginx-tuned",
                 memory_connections=0, baseline_lengths=[2, 20], wire_streams=1),
    # For the repeatability test: tiny's direct load cells alone, 3 runs; its verdicts that rest on those
    # cells (browser client, bidirectional control, highest throughput) are compared with tiny's.
    "repeat": dict(transports=["sse_post", "ws"], concurrency=[10], paths=["direct"], cell_s=2.0, drop_rate=0.0,
                   max_tokens=6, token_rate=20.0, ttft_ms=40.0, memory_connections=0, baseline_lengths=[],
                   wire_streams=1),
}


def _csv(value: str | None, cast=str, flag: str = "") -> list | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} needs comma-separated numbers, got {value!r}") from None


def from_args(args) -> Matrix:
    """The preset, with any flag the user gave taking its place."""
    base = dict(PRESETS[args.preset])
    overrides = {
        "transports": _csv(args.transports),
        "concurrency": _csv(args.concurrency, int, "--concurrency"),
        "paths": _csv(args.paths),
        "token_rate": args.token_rate,
        "ttft_ms": args.ttft_ms,
        "max_tokens": args.max_tokens,
        "prompt_bytes": args.prompt_bytes,
        "drop_rate": args.drop_rate,
        "cell_s": args.duration,
        "runs": getattr(args, "runs", None),
        "drop_by": _csv(getattr(args, "drop_by", None)),
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    matrix = Matrix(**base)
    bad = [t for t in matrix.transports if t not in TRANSPORTS]
    if bad:
        raise SystemExit(f"unknown transport {', '.join(bad)} (choose from {', '.join(TRANSPORTS)})")
    if "direct" not in matrix.paths:
        matrix.paths.insert(0, "direct")  # the reference every proxy path is compared with
    if not matrix.concurrency or min(matrix.concurrency) < 1:
        raise SystemExit("--concurrency needs positive integers, e.g. 10,50")
    if not 0 <= matrix.drop_rate <= 1:
        raise SystemExit("--drop-rate is a share between 0 and 1")
    if matrix.token_rate <= 0:
        raise SystemExit("--token-rate must be positive")
    if matrix.max_tokens < 2 or matrix.cell_s <= 0 or matrix.ttft_ms < 0 or matrix.prompt_bytes < 0:
        raise SystemExit("--max-tokens needs at least 2, --duration a positive number of seconds, "
                         "--ttft-ms and --prompt-bytes zero or more")
    if not matrix.transports:
        raise SystemExit("--transports needs at least one transport")
    bad = [b for b in matrix.drop_by if b not in DROP_BY]
    if bad or not matrix.drop_by:
        raise SystemExit(f"--drop-by takes {', '.join(DROP_BY)} (comma-separated), got {', '.join(bad) or 'none'}")
    if "client" in matrix.drop_by and "server" in matrix.drop_by:
        raise SystemExit("--drop-by client and server both cut the direct path: pick one of them")
    if matrix.cut_front not in PATHS:
        raise SystemExit(f"the cutting proxy stands in front of a path from {', '.join(PATHS)}")
    if matrix.runs < 1:
        raise SystemExit("--runs needs at least 1 (verdicts need 3: with fewer every verdict is a tie)")
    return matrix
