"""Break the gateway on purpose, one way at a time, and show which tests catch it.

    .venv/bin/python tests/mutants.py            # every mutant
    .venv/bin/python tests/mutants.py resend-all  # some, by name
    .venv/bin/python tests/mutants.py --list

Each mutant is a small text edit (old -> new, which must occur exactly once) applied to a scratch copy of
this working tree (tracked and new files, under a temporary directory); the tests named beside it run there
with this interpreter. A mutant is "caught" when at least one of them fails, "MISSED" when all pass, and
"stale" when its text no longer occurs (the code moved: update the mutant). Exit status 1 if any is missed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str = ""


MUTANTS = [
    Mutant("resend-all", "gateway/stream.py", "Subscriber(after + 1,", "Subscriber(0,",
           ("tests/test_streams.py::test_resume_on_another_transport",
            "tests/test_streams.py::test_drop_is_a_cut_then_resumes_exactly",
            "tests/test_streams.py::test_drop_fires_once_per_stream",
            "tests/test_replicas.py::test_create_on_a_read_half_on_b_resume_on_a",
            "tests/test_replicas.py::test_sigterm_drains_clients_to_another_replica",
            "tests/test_replicas.py::test_sigterm_on_a_reading_replica_moves_its_clients"),
           "attach ignores Last-Event-ID / ?after / resume.after: the server resends everything"),
    Mutant("skip-one", "gateway/stream.py", "Subscriber(after + 1,", "Subscriber(after + 2 if after >= 0 else 0,",
           ("tests/test_streams.py::test_resume_on_another_transport",),
           "a resume skips the first event after the resume point (a gap)"),
    Mutant("direct-http-late", "gateway/adapter/uvicorn.py",
           "if flow.write_paused or cycle.disconnected or cycle.response_complete:",
           "if flow.write_paused or cycle.disconnected:",
           ("tests/test_adapter.py",), "the HTTP direct writer writes after the response completed"),
    Mutant("direct-http-paused", "gateway/adapter/uvicorn.py",
           "if flow.write_paused or cycle.disconnected or cycle.response_complete:",
           "if cycle.disconnected or cycle.response_complete:",
           ("tests/test_adapter.py",), "the HTTP direct writer ignores backpressure"),
    Mutant("direct-ws-after-close", "gateway/adapter/uvicorn.py", "proto.disconnected or proto.close_sent or",
           "proto.disconnected or", ("tests/test_adapter.py",), "the WebSocket direct writer writes after the close"),
    Mutant("seed-ignored", "gateway/sources/simulated.py", 'f"{seed}\\0{max_tokens}\\0{prompt}"',
           'f"0\\0{max_tokens}\\0{prompt}"',
           ("tests/test_golden.py", "tests/test_streams.py::test_seed_and_prompt_change_the_text"),
           "the simulated model ignores the seed"),
    Mutant("corpus-split", "gateway/sources/simulated.py", "_MAX_PIECE = 6", "_MAX_PIECE = 7",
           ("tests/test_golden.py",), "the simulated model splits words into other tokens"),
    Mutant("relay-no-reuse", "gateway/sources/relay.py", "max_keepalive_connections=32",
           "max_keepalive_connections=0",
           ("tests/test_relay.py::test_finished_upstream_connections_are_reused",),
           "the relay opens a new upstream connection per stream"),
    Mutant("page-no-heartbeats", "gateway/static/app.js", "this.heartbeats++;", "",
           ("tests/test_page.py::test_mid_stream_failure_keeps_partial_text_with_error_mark",),
           "the page stops counting heartbeats"),
    Mutant("ramp-limit-x10", "loadtests/locustfile.py", "itl_p99 > options.itl_limit_ms",
           "itl_p99 > options.itl_limit_ms * 10",
           ("tests/test_loadtests.py::test_throughput_ramp_stops_at_the_limit",
            "tests/test_loadtests.py::test_throughput_ramp_climbs_to_the_ceiling"),
           "the throughput ramp applies its inter-token limit 10x too loose"),
    Mutant("ramp-limit-div10", "loadtests/locustfile.py", "itl_p99 > options.itl_limit_ms",
           "itl_p99 > options.itl_limit_ms / 10",
           ("tests/test_loadtests.py::test_throughput_ramp_stops_at_the_limit",
            "tests/test_loadtests.py::test_throughput_ramp_climbs_to_the_ceiling"),
           "the throughput ramp applies its inter-token limit 10x too strict"),
    Mutant("outage-not-ridden", "gateway/store/redis.py", "if now - self.down_since < self.settings.redis_outage_s:",
           "if False:",
           ("tests/test_replicas.py::test_a_redis_outage_shorter_than_the_limit_is_ridden_out_and_the_backlog_written",),
           "the first Redis failure ends in-flight streams (no outage allowance)"),
    Mutant("backlog-forgotten", "gateway/store/redis.py",
           "for sid, stream in batch.items():\n                    self._dirty.setdefault(sid, stream)\n"
           "                self._trouble(",
           "for sid, stream in batch.items():\n                    if sid in self.owned:\n"
           "                        self.owned[sid].flushed = len(stream.log)\n                self._trouble(",
           ("tests/test_replicas.py::test_a_redis_outage_shorter_than_the_limit_is_ridden_out_and_the_backlog_written",),
           "events made during a Redis outage are never written (the failed batch counts as written)"),
    Mutant("drain-no-1012", "gateway/codecs/ws.py", "CLOSE_RESTART = 1012", "CLOSE_RESTART = 1001",
           ("tests/test_replicas.py::test_sigterm_drains_clients_to_another_replica",),
           "a draining replica closes WebSockets with 1001 instead of 1012"),
    Mutant("client-no-503-retry", "gateway/resume.py", "if exc.status != 503 or self.eventsource",
           "if True or self.eventsource",
           ("tests/test_replicas.py::test_the_client_retries_a_503_at_the_next_base_url",),
           "the client gives up on a 503 instead of trying the next base URL"),
    Mutant("gap-delivered", "gateway/resume.py", "if kind is not Heartbeat and event.seq > self.result.last_seq + 1:",
           "if False:",
           ("tests/test_resume.py",),
           "an event past a skipped seq is delivered: a stream can end in `done` with text missing"),
    Mutant("lag-cut-misnamed", "gateway/registry.py", 'self._cut_slow(sub, "slow_lag")', 'self._cut_slow(sub, "slow_send")',
           ("tests/test_slow_readers.py",), "a reader too far behind is cut with the send timeout's reason"),
    Mutant("no-lag-cut", "gateway/registry.py", "elif size - conn.lag_base > max_lag:", "elif False:",
           ("tests/test_slow_readers.py",), "MAX_LAG_BYTES is never applied"),
    Mutant("deflate-ignored", "gateway/cli.py", "ws_per_message_deflate=settings.ws_per_message_deflate,",
           "ws_per_message_deflate=False,",
           ("tests/test_streams.py::test_per_message_deflate_on_the_real_gateway",),
           "GATEWAY_WS_PER_MESSAGE_DEFLATE does not reach the server"),
    Mutant("direct-ws-with-deflate", "gateway/adapter/uvicorn.py",
           "if not proto.handshake_complete or proto.conn.extensions:", "if not proto.handshake_complete:",
           ("tests/test_adapter.py",), "the direct WebSocket writer is used although a compression was negotiated"),
    Mutant("sse-drain-503", "gateway/app.py",
           "if ctx.draining:\n            # EventSource gives up on a 503", "if False:\n            # EventSource gives up on a 503",
           ("tests/test_drain.py::test_attach_during_a_drain_tells_each_transport_to_go_elsewhere",
            "tests/test_lab.py::test_eventsource_in_chromium_follows_a_drain_to_the_other_replica"),
           "an SSE attach on a draining replica is refused with 503 (EventSource would give up)"),
    Mutant("best-flipped", "loadtests/compare/rules.py", "def _best(cands: dict[str, float], lower: bool = True)",
           "def _best(cands: dict[str, float], lower: bool = False)",
           ("tests/test_compare_rules.py",), "the comparison crowns the worst figure"),
]


def copy_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of this working tree, as they are now."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


def run(mutant: Mutant, timeout: float) -> tuple[str, list[str], float]:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        scratch = Path(tmp)
        copy_tree(scratch)
        target = scratch / mutant.path
        text = target.read_text()
        if text.count(mutant.old) != 1:
            return "stale", [], 0.0
        target.write_text(text.replace(mutant.old, mutant.new))
        t0 = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                                   "--timeout", "240", *mutant.tests], cwd=scratch, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "caught (timeout)", ["(the tests hung past the bound)"], time.monotonic() - t0
        failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        if proc.returncode == 0:
            return "MISSED", [], time.monotonic() - t0
        if not failed:
            return f"error (pytest exit {proc.returncode})", proc.stdout.splitlines()[-5:], time.monotonic() - t0
        return "caught", failed, time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600, help="bound on one mutant's test run, seconds")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if args.list or not chosen:
        for m in MUTANTS:
            print(f"{m.name:24} {m.path}: {m.why}")
        return 0 if chosen else 2
    missed = 0
    for m in chosen:
        verdict, failed, took = run(m, args.timeout)
        missed += verdict == "MISSED"
        print(f"{m.name:24} {verdict:10} {took:5.0f} s  {m.why}", flush=True)
        for name in failed[:4]:
            print(f"{'':26}{name}")
        if len(failed) > 4:
            print(f"{'':26}... and {len(failed) - 4} more")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
