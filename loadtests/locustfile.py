"""Locust users per transport, with streaming metrics timed as events arrive.

Run (from the repository root, gateway on :8000):

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --class-picker
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 20 -r 10 -t 30s \\
           --scenario reconnection --csv out/run --html out/run.html SsePostUser WsUser

Stable interface (the comparison report reads it; change only with it):

User classes (pick on the command line, in the UI with --class-picker, or by tag: --tags ws sse_post):
    SseGetUser  (tag sse_get)   POST /v1/streams, then GET /v1/streams/{id}/sse (EventSource style)
    SsePostUser (tag sse_post)  POST /v1/sse (fetch style)
    NdjsonUser  (tag ndjson)    POST /v1/ndjson
    WsUser      (tag ws)        WS /v1/ws, `start` message
    AutoUser    (tag auto)      WebSocket, falling back to SSE over fetch, then NDJSON, where the path refuses
                                or kills one (gateway/fallback.py); Type `auto`
    ResponsesUser (tag responses) POST /v1/responses (stream, background: OpenAI's Responses API)
    CompleteUser (tag complete) POST /v1/complete, the non-streamed baseline
    Resume after a cut as gateway/client.py does: SSE `Last-Event-ID`, NDJSON `?after=`, WS `resume`;
    Responses: GET /v1/responses/{id}?stream=true&starting_after=<seq + 3>.

Stats rows (CSV `PREFIX_stats.csv`): Type = the transport (sse_get, sse_post, ndjson, ws, responses, complete),
Name = the metric, times in ms:
    ttft         request start (for sse_get: before POST /v1/streams) to the first token's arrival;
                 for `complete`, the whole response (the first token is seen with the last)
    inter_token  EVERY gap between consecutive token arrivals of a stream (one sample per gap, not a
                 per-stream p99), except the gap across a reconnect, which is `reconnect`
    reconnect    resume as a user sees it: from the last token before a cut to the next new token after
                 resuming, the client's own wait included (EventSource: the server's `retry:`; fetch and
                 WebSocket: gateway/backoff.py, as the page and the Python client)
    stream       the whole stream, one per stream; Average Content Size = bytes received. A failure
                 (see failures CSV) with one of these messages: "refused: HTTP <status> <title>",
                 "error: <code>" (in-band error event), "cut: <why>" (ended without a terminal event,
                 not resumable), "gap: ...", "duplicate: ...", "text: ..." (not the expected text or sha256)
    gap          a failure per missing seq range; duplicate: a failure per seq delivered twice
    fallback A->B  (AutoUser) one per switch of transport: the time from the request start to the switch
    stream_slow, stream_stalled   the slow-reader scenario's slow and non-reading users (their own rows,
                 so they do not mix with the normal readers' ttft and inter_token)

Transports tab: GET /transports on the web UI (master) answers JSON
    {"scenario": {...knobs, "ramp": {...} when the throughput shape stopped}, "state": ...,
     "window_s": 10, "transports": [row, ...], "totals": [row, ...], "generator": {...}}
    with rows keyed as board.COLUMNS (transport, active, streams, failed, tokens, tokens_per_s, bytes,
    ttft_p50/p95/p99, itl_p50/p99, reconnects, reconnect_p99, gaps, duplicates, cuts, note);
    `transports` covers the last 10 s, `totals` the whole run. With --csv PREFIX, the totals are also
    written to PREFIX_transports.csv and the whole answer to PREFIX_transports.json at exit, after
    the users stopped (final figures; Locust's own PREFIX_stats.csv is rewritten once a second and can
    miss the last second: PREFIX_final_stats.csv and PREFIX_final_failures.csv hold Locust's stats
    and failures in the same format, written at exit).

Command-line arguments (all shown in the web UI form unless noted):
    --scenario steady|throughput|reconnection|proxy|mixed|slow (default steady)
    --target URL, or a lab path name (nginx-tuned, haproxy, ...: see loadtests/targets.py) on the lab
             whose gateway is --host (default: --host itself)      --prompt-bytes N (64)
    --max-tokens N (128)   --ttft-ms MS (300)   --itl-ms MS (25)   --jitter F (0.3)   --seed N (-1: random)
    --drop-rate F (0; reconnection: 1 when 0 and --client-drop-rate is 0)  share of streams the gateway cuts
    --client-drop-rate F (0)  share of streams whose user closes its own socket mid-stream, then resumes
    --slow-share F (0; slow: 0.3 when 0)
    --slow-read-bps N (2000)   --stall-s S (10)
    --ramp-step N (5)   --ramp-every S (10)   --itl-limit-ms MS (250)   --error-limit F (0.01)
    --lag-warn-ms MS (10, p90 over 10 s)
    --timings-out PATH (not in the UI) every ttft/inter_token/reconnect/stream sample as JSON lines
                       {"t": transport, "m": metric, "ms": value} (from workers: PATH.<pid>)
    --streams-out PATH (not in the UI) one JSON line per stream, exact (vLLM benchmark_serving's terms):
                       {"t", "reader", "ok", "failure", "ttft_ms", "e2e_ms", "tokens", "tpot_ms",
                        "itl_ms": [every gap between tokens], "chunk_ms": [every gap between reads that
                        brought tokens], "resume_ms": [...], "cuts", "client_cuts", "bytes"}

A stream refused before it starts (an HTTP 4xx/5xx, an upgrade denied) makes its user back off
(gateway/backoff.py, doubling to 2 s, with jitter) before the next one; the Transports tab counts them.

Scenarios (one shape class, ScenarioShape, reads --scenario; -u is the user count, or the ramp's ceiling):
    steady        -u users of the chosen classes
    throughput    start at --ramp-step users, add --ramp-step every --ramp-every s up to -u; stop when the
                  step's inter-token p99 passes --itl-limit-ms or its failed-stream ratio --error-limit
    reconnection  the gateway cuts each stream (--drop-rate) after a random token; users resume and must
                  end with the exact expected text: any gap, duplicate or text failure shows
    proxy         steady load against --target (a proxy's URL or a lab path name); run once per path
    mixed         all six classes (or those named or tagged) at once, by their weights (3 sse_post, 3 ws,
                  2 sse_get, 2 ndjson, 2 responses, 1 complete), all started at once
    slow          a share of each transport's users (--slow-share), spread evenly, in turn read at
                  --slow-read-bps or stop reading for --stall-s (then leave)
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import requests
from flask import jsonify, request
from locust import LoadTestShape, User, constant, events, tag, task
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import (PERCENTILES_TO_REPORT, StatsCSV, calculate_response_time_percentile,
                          diff_response_time_dicts)

# Locust puts this file's folder on sys.path, not the repository root; the users import the gateway's
# codecs and simulated model from it.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway import backoff  # noqa: E402
from gateway.events import Done, Error, Token  # noqa: E402
from gateway.names import COLORS, Transport  # noqa: E402
from gateway.sources.simulated import corpus_tokens, expected_text  # noqa: E402
from loadtests import targets  # noqa: E402
from loadtests.board import COLUMNS, Board  # noqa: E402
from loadtests.streaming import GatewayError, Run, StreamClient, post_complete, request_body  # noqa: E402

log = logging.getLogger("loadtests")

SCENARIOS = ("steady", "throughput", "reconnection", "proxy", "mixed", "slow")
board = Board()


class StreamFailure(Exception):
    """A stream that did not deliver what it should; the message is the failure's kind."""


# -- knobs ------------------------------------------------------------------------


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    def arg(name: str, default: Any, help: str, **kw: Any) -> None:
        kw.setdefault("include_in_web_ui", True)
        parser.add_argument(name, type=type(default), default=default, help=help, **kw)

    arg("--scenario", "steady", "steady, throughput, reconnection, proxy, mixed or slow", choices=SCENARIOS)
    arg("--target", "", "base URL (a proxy in front of the gateway) or a lab path name; default --host")
    arg("--prompt-bytes", 64, "prompt size in bytes")
    arg("--max-tokens", 128, "tokens per answer")
    arg("--ttft-ms", 300.0, "simulated time to first token")
    arg("--itl-ms", 25.0, "simulated mean gap between tokens")
    arg("--jitter", 0.3, "relative spread of the simulated gaps")
    arg("--seed", -1, "the same seed (and prompt) for every stream; -1: a random seed per stream")
    arg("--drop-rate", 0.0, "share of streams the gateway cuts at a random token (reconnection: 1 when 0)")
    arg("--client-drop-rate", 0.0, "share of streams whose user closes its own socket at a random token")
    arg("--slow-share", 0.0, "share of slow or non-reading users (slow scenario: 0.3 when 0)")
    arg("--slow-read-bps", 2000, "how fast a slow reader reads, bytes per second")
    arg("--stall-s", 10.0, "how long a non-reading user holds its stream before leaving")
    arg("--ramp-step", 5, "throughput: users added per step (and the first step)")
    arg("--ramp-every", 10.0, "throughput: seconds per step")
    arg("--itl-limit-ms", 250.0, "throughput: stop when a step's inter-token p99 passes this")
    arg("--error-limit", 0.01, "throughput: stop when a step's failed-stream ratio passes this")
    arg("--lag-warn-ms", 10.0, "warn when the load generator's event loop runs this late (p90 over 10 s)")
    arg("--timings-out", "", "write every timing sample to this JSON-lines file", include_in_web_ui=False)
    arg("--streams-out", "", "write one JSON line per stream (exact samples)", include_in_web_ui=False)


def knobs(environment) -> Any:
    """The parsed options (the web UI and the master update them before each run)."""
    return environment.parsed_options


def target_url(environment) -> str:
    return targets.resolve(getattr(knobs(environment), "target", ""), environment.host)


def drop_rate(options) -> float:
    rate = options.drop_rate
    if rate > 0 or options.scenario != "reconnection" or getattr(options, "client_drop_rate", 0) > 0:
        return rate
    return 1.0


def client_cut(options) -> int | None:
    """The token seq after which this stream's user closes its own socket, or None."""
    n = options.max_tokens
    if n > 1 and random.random() < getattr(options, "client_drop_rate", 0.0):
        return random.randrange(1, n)
    return None


def slow_share(options) -> float:
    share = options.slow_share
    return share if share > 0 or options.scenario != "slow" else 0.3


def make_request(options) -> dict[str, Any]:
    """One stream's request body; drops land on a random token."""
    seed = options.seed if options.seed >= 0 else random.randrange(2**31)
    n = options.max_tokens
    sim: dict[str, Any] = {"ttft_ms": options.ttft_ms, "itl_ms": options.itl_ms, "jitter": options.jitter}
    if n > 1 and random.random() < drop_rate(options):
        sim["drop_after"] = random.randrange(1, n)
    return request_body(options.prompt_bytes, n, seed, **sim)


def check_text(body: dict[str, Any], text: str, sha256: str | None) -> str | None:
    """Why the text is wrong, or None: the simulated model's answer is known in advance."""
    if sha256 is not None and hashlib.sha256(text.encode()).hexdigest() != sha256:
        return "text: sha256 of the received text differs from the done event's"
    if text != expected_text(body["prompt"], body["seed"], body["max_tokens"]):
        return "text: not the expected answer"
    return None


# -- users -----------------------------------------------------------------------

_started: dict[str, int] = {}  # users started per transport in this process


def pick_reader(transport: str, share: float) -> str:
    """normal, slow or stalled: `share` of each transport's users, spread evenly, slow and stalled in turn."""
    i = _started[transport] = _started.get(transport, 0) + 1
    special = int(i * share)
    if special > int((i - 1) * share):
        return "slow" if special % 2 else "stalled"
    return "normal"


class GatewayUser(User):
    abstract = True
    transport = ""
    wait_time = constant(0)

    def on_start(self) -> None:
        self.session = requests.Session()
        self.base_url = target_url(self.environment)
        self.reader = pick_reader(self.transport, slow_share(knobs(self.environment)))
        self.refusals = 0  # in a row: each waits longer (a refused upgrade must not become a flood)

    def refused(self, failure: str | None) -> None:
        """Back off after a refused stream (exponential, capped, jittered); reset on success."""
        if failure is None or not failure.startswith(("refused:", "cut: no response")):
            self.refusals = 0
            return
        self.refusals += 1
        board.refused(self.transport)
        gevent.sleep(backoff.delay(self.refusals))

    def on_stop(self) -> None:
        self.session.close()

    def fire(self, name: str, seconds: float, length: int = 0, failure: str | None = None) -> None:
        self.environment.events.request.fire(
            request_type=self.transport, name=name, response_time=seconds * 1000, response_length=length,
            exception=StreamFailure(failure) if failure else None, context={})


class StreamUser(GatewayUser):
    abstract = True

    def on_start(self) -> None:
        super().on_start()
        self.client = StreamClient(self.base_url, self.session)
        if self.reader == "slow":
            self.client.read_bps = float(knobs(self.environment).slow_read_bps)

    def one_stream(self) -> None:
        options = knobs(self.environment)
        body = make_request(options)
        run = Run()
        normal = self.reader == "normal"
        previous = None  # the last token's arrival on this connection
        last_token = None  # the last token's arrival on any connection
        resumed = 0
        failure = None
        itl: list[float] = []
        chunks: list[float] = []
        resumes: list[float] = []
        last_chunk = None
        board.opened(self.transport)
        try:
            for event, at in self.client.events(self.transport, body, run, cut_after=client_cut(options)):
                if type(event) is not Token:
                    continue
                if len(run.cuts) > resumed:  # the first new token after a resume: the stall a user saw
                    resumed = len(run.cuts)
                    stall = at - (last_token if last_token is not None else run.started)
                    resumes.append(stall)
                    self.fire("reconnect", stall)
                    previous = last_chunk = None
                if normal:
                    if last_token is None:
                        self.fire("ttft", at - run.started)
                    elif previous is not None:
                        itl.append(at - previous)
                        self.fire("inter_token", at - previous)
                if at != last_chunk:
                    if last_chunk is not None:
                        chunks.append(at - last_chunk)
                    last_chunk = at
                previous = last_token = at
                if self.reader == "stalled":
                    gevent.sleep(options.stall_s)  # hold the stream without reading, then leave
                    break
        except GatewayError as exc:
            failure = f"refused: HTTP {exc.status} {exc.problem.get('title', '')}".strip()
        except Exception as exc:  # a bug or a malformed stream: count it, keep the user alive
            failure = f"client: {type(exc).__name__}: {exc}"[:200]
        finally:
            board.closed(self.transport, len(run.tokens), run.bytes)
        failure = self.finish(body, run, failure, at_end=time.perf_counter())
        if normal and _streams_out:
            record(self.transport, run, failure, itl, chunks, resumes)
        self.refused(failure)

    def finish(self, body: dict, run: Run, failure: str | None, at_end: float) -> None:
        for old, new, at in run.fallbacks:  # the time from the start to giving up on a transport
            self.fire(f"fallback {old}->{new}", at - run.started)
        for _ in range(run.gaps):
            self.fire("gap", 0, failure="gap: events missing (a seq was skipped)")
        for _ in range(run.duplicates):
            self.fire("duplicate", 0, failure="duplicate: an event was delivered twice")
        name = {"normal": "stream", "slow": "stream_slow", "stalled": "stream_stalled"}[self.reader]
        if failure is None and self.reader != "stalled":
            terminal = run.terminal
            if isinstance(terminal, Error):
                failure = f"error: {terminal.code}"
            elif terminal is None:
                failure = "cut: " + ("no response, " + run.cause if not run.events and run.cause
                                     else f"ended without done or error after {run.reconnects} resumes")
            elif run.gaps:
                failure = "gap: events missing (a seq was skipped)"
            elif run.duplicates:
                failure = "duplicate: an event was delivered twice"
            elif isinstance(terminal, Done):
                failure = check_text(body, run.text, terminal.sha256)
        self.fire(name, at_end - run.started, run.bytes, failure)
        return failure


class SseGetUser(StreamUser):
    transport = Transport.SSE_GET.value
    weight = 2

    @tag("sse_get", "sse")
    @task
    def sse_get(self) -> None:
        self.one_stream()


class SsePostUser(StreamUser):
    transport = Transport.SSE_POST.value
    weight = 3

    @tag("sse_post", "sse")
    @task
    def sse_post(self) -> None:
        self.one_stream()


class NdjsonUser(StreamUser):
    transport = Transport.NDJSON.value
    weight = 2

    @tag("ndjson")
    @task
    def ndjson(self) -> None:
        self.one_stream()


class WsUser(StreamUser):
    transport = Transport.WS.value
    weight = 3

    @tag("ws")
    @task
    def ws(self) -> None:
        self.one_stream()


class AutoUser(StreamUser):
    """WebSocket, falling back to SSE over fetch, then NDJSON where the path refuses or kills one."""
    transport = "auto"
    weight = 1

    @tag("auto")
    @task
    def auto(self) -> None:
        self.one_stream()


class CompleteUser(GatewayUser):
    """The non-streamed baseline: the first token is seen only with the whole answer."""
    transport = Transport.COMPLETE.value
    weight = 1

    @tag("complete")
    @task
    def complete(self) -> None:
        body = make_request(knobs(self.environment))
        body["sim"].pop("drop_after", None)  # nothing to resume without a stream
        started = time.perf_counter()
        failure, nbytes, tokens = None, 0, 0
        board.opened(self.transport)
        try:
            answer, nbytes = post_complete(self.session, self.base_url, body)
            tokens = answer["tokens"]
            failure = check_text(body, answer["text"], answer["sha256"])
        except GatewayError as exc:
            failure = f"refused: HTTP {exc.status} {exc.problem.get('title', '')}".strip()
        except Exception as exc:
            failure = f"client: {type(exc).__name__}: {exc}"[:200]
        finally:
            board.closed(self.transport, tokens, nbytes)
        elapsed = time.perf_counter() - started
        if failure is None:
            self.fire("ttft", elapsed)
        self.fire("stream", elapsed, nbytes, failure)
        self.refused(failure)


class ResponsesUser(StreamUser):
    """OpenAI's Responses API: a streamed background response, resumed with `starting_after` (seq + 3)."""
    transport = Transport.RESPONSES.value
    weight = 2

    @tag("responses")
    @task
    def responses(self) -> None:
        self.one_stream()


STREAMING = [SseGetUser, SsePostUser, NdjsonUser, WsUser, ResponsesUser]
MIXED = [*STREAMING, CompleteUser]


# -- scenarios ---------------------------------------------------------------------


def _tagged(user_class, options) -> bool:
    """Whether --tags / --exclude-tags leave the class a task (Locust filters only after the shape)."""
    tags, exclude = set(options.tags or ()), set(options.exclude_tags or ())
    have = set().union(*(getattr(t, "locust_tag_set", set()) for t in user_class.tasks))
    return bool(user_class.tasks) and (not tags or bool(have & tags)) and not have & exclude


# Users when the command line gave none (headless -u 0); the web UI form shows them and refuses 0.
SHAPE_DEFAULT_USERS = {"throughput": 50, "mixed": 13}
SHAPE_DEFAULT = 10


def shape_default_users(options, environment) -> int:
    """The shape's own default, said once in the log and kept in the Transports tab's scenario."""
    n = SHAPE_DEFAULT_USERS.get(options.scenario, SHAPE_DEFAULT)
    if "users_default" not in board.scenario:
        board.scenario["users_default"] = (f"{n} users: the shape's default for {options.scenario} "
                                           "(no user count was given)")
        log.warning("ScenarioShape: no user count given (0); using the %s scenario's default of %d users",
                    options.scenario, n)
    return n


def shape_form_defaults(environment, args: dict) -> None:
    """The web UI form's users, ramp and run time with ScenarioShape: shown and editable, never a greyed-out 0.

    Locust greys them out at 0 when a shape class is picked and the shape chosen at page load (none once a
    run used "Default") does not say it uses them; ScenarioShape does (`use_common_options`), so the form
    says so whatever was chosen before, and offers the scenario's own default users (ramp: all at once;
    run time: none, until stopped or, for throughput, until the ramp stops)."""
    shapes = environment.available_shape_classes or {}
    if not isinstance(environment.shape_class, ScenarioShape) and "ScenarioShape" not in shapes:
        return
    options = knobs(environment)
    users = (options.num_users if options is not None else None) or SHAPE_DEFAULT_USERS.get(
        getattr(options, "scenario", "steady"), SHAPE_DEFAULT)
    args["shape_use_common_options"] = True
    args["hide_common_options"] = False
    args["num_users"] = users
    args["spawn_rate"] = (options.spawn_rate if options is not None else None) or users


def shape_start_refusal(environment, form) -> str | None:
    """Why a start from the web UI is refused, or None: ScenarioShape given 0 users would run nobody (it
    used to run one user, silently)."""
    chosen = form.get("shape_class")
    shapes = environment.available_shape_classes or {}
    shape = environment.shape_class if chosen is None else shapes.get(chosen)
    if not isinstance(shape, ScenarioShape):
        return None
    value = form.get("user_count")
    if value is None:  # not in the form: the command line's -u, if any
        users = knobs(environment).num_users or 0
    else:
        try:
            users = int(value)
        except ValueError:
            return None  # Locust's own message for a number that is not one
    if users > 0:
        return None
    scenario = form.get("scenario") or knobs(environment).scenario
    default = SHAPE_DEFAULT_USERS.get(scenario, SHAPE_DEFAULT)
    return (f"ScenarioShape needs a number of users above 0 (got {value or 'none'}): the users of the "
            f"{scenario} scenario ({'the ramp’s ceiling' if scenario == 'throughput' else 'streams at once'}); "
            f"its default is {default}. Not started.")


class ScenarioShape(LoadTestShape):
    """Drives every scenario: steady counts, the throughput ramp, the mixed set of classes."""

    use_common_options = True

    def reset_time(self) -> None:
        super().reset_time()
        self.step_started = 0.0
        self.step_users = 0
        self.step_marks: dict = {}

    def tick(self):
        environment = self.runner.environment
        options = knobs(environment)
        if options.run_time and self.get_run_time() >= options.run_time:
            return None  # Locust applies --run-time to a shape only after the shape ends
        users = options.num_users or shape_default_users(options, environment)
        rate = options.spawn_rate or users
        # Classes named on the command line or picked in the UI, and tagged if --tags is given.
        chosen = [c for c in environment.user_classes if _tagged(c, options)] or None
        if options.scenario == "mixed":  # everyone at once
            return users, max(rate, users), chosen
        if options.scenario == "throughput":
            return self.ramp(options, users, chosen)
        return users, rate, chosen

    def ramp(self, options, ceiling: int, chosen):
        now = self.get_run_time()
        if not hasattr(self, "step_users"):
            self.reset_time()
            now = 0.0
        if self.step_users == 0:
            self.step_users, self.step_started = min(ceiling, options.ramp_step), now
            self.step_marks = self._marks()
        elif now - self.step_started >= options.ramp_every:
            itl_p99, fail_ratio, streams = self._step_figures()
            verdict = None
            if itl_p99 is not None and itl_p99 > options.itl_limit_ms:
                verdict = f"inter-token p99 {itl_p99} ms > {options.itl_limit_ms} ms"
            elif streams and fail_ratio > options.error_limit:
                verdict = f"failed streams {fail_ratio:.1%} > {options.error_limit:.1%}"
            elif self.step_users >= ceiling:
                verdict = f"reached the ceiling of {ceiling} users within limits"
            step = {"users": self.step_users, "itl_p99_ms": itl_p99, "fail_ratio": round(fail_ratio, 4),
                    "streams": streams}
            board.scenario.setdefault("steps", []).append(step)
            if verdict:
                board.scenario["ramp"] = {"stopped_at_users": self.step_users, "reason": verdict,
                                          "last_good_users": self._last_good(options)}
                log.info("throughput ramp stopped at %d users: %s", self.step_users, verdict)
                return None
            self.step_users = min(ceiling, self.step_users + options.ramp_step)
            self.step_started = now
            self.step_marks = self._marks()
        return self.step_users, max(options.spawn_rate or 0, self.step_users), chosen

    def _marks(self) -> dict:
        return {key: (dict(e.response_times), e.num_requests, e.num_failures)
                for key, e in self.runner.stats.entries.items()}

    def _step_figures(self) -> tuple[float | None, float, int]:
        """This step's inter-token p99 over all transports, and its failed-stream ratio."""
        merged: dict[int, int] = {}
        n = streams = failures = 0
        for (name, method), e in self.runner.stats.entries.items():
            times, count, failed = self.step_marks.get((name, method), ({}, 0, 0))
            if name == "inter_token":
                for k, v in diff_response_time_dicts(e.response_times, times).items():
                    merged[k] = merged.get(k, 0) + v
                n += e.num_requests - count
            elif name == "stream":
                streams += e.num_requests - count
                failures += e.num_failures - failed
        p99 = calculate_response_time_percentile(merged, n, 0.99) if n > 0 else None
        return p99, (failures / streams if streams else 0.0), streams

    def _last_good(self, options) -> int | None:
        good = [s["users"] for s in board.scenario.get("steps", [])
                if (s["itl_p99_ms"] is None or s["itl_p99_ms"] <= options.itl_limit_ms)
                and s["fail_ratio"] <= options.error_limit]
        return max(good) if good else None


# -- the Transports tab, the generator's health, and the files ---------------------


def answer(environment) -> dict[str, Any]:
    runner = environment.runner
    options = knobs(environment)
    scenario = {k: getattr(options, k.replace("-", "_"), None) for k in (
        "scenario", "target", "prompt_bytes", "max_tokens", "ttft_ms", "itl_ms", "jitter", "seed")}
    scenario["drop_rate"] = drop_rate(options)
    scenario["slow_share"] = slow_share(options)
    scenario["host"] = environment.host
    scenario.update(board.scenario)
    return {"scenario": scenario, "state": runner.state, "window_s": 10,
            "transports": board.rows(runner, window=True), "totals": board.rows(runner, window=False),
            "generator": board.generator()}


def tab_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The tab's table: the load generator's health first (in view), then the transports: the last
    10 s while a run goes on, the whole run once it stopped (the `Percentiles over` column says which)."""
    g = result["generator"]
    health = (f"{g['processes']} process(es), CPU {g['cpu_percent']}%, "
              f"loop late {g['lag_ms_p90']} ms p90 / {g['lag_ms_p99']} ms p99; "
              "per-transport chart over time: /transports/chart")
    if g["saturated"]:
        health = "SATURATED (timings include its delay): " + health
    blank = {key: None for key, _ in COLUMNS}
    running = result["state"] in ("spawning", "running")
    rows = result["transports"] if running else result["totals"]
    return [{**blank, "transport": "load generator", "note": health}] + rows


def _tick(environment) -> None:
    """Once a second where figures are shown: fold in the local part (no workers), sample."""
    runner = environment.runner
    while True:
        if not isinstance(runner, MasterRunner):
            board.merge("local", board.report(runner.current_cpu_usage))
        board.sample(runner.stats)
        if runner.state in ("spawning", "running"):
            board.record(board.rows(runner, window=True))
        gevent.sleep(1.0)


_ENV: list = []  # the environment, for listeners Locust calls without it


@events.init.add_listener
def _init(environment, **_kw) -> None:
    _ENV[:] = [environment]
    runner = environment.runner
    options = knobs(environment)
    if options is not None:
        board.lag_warn_ms = options.lag_warn_ms
    if not isinstance(runner, MasterRunner):
        corpus_tokens()  # load the corpus now: on the first stream it would stall every user's timing
        board.monitor.start()
    if isinstance(runner, WorkerRunner):
        environment.events.report_to_master.add_listener(
            lambda client_id, data: data.__setitem__("transports", board.report(runner.current_cpu_usage)))
    else:
        gevent.spawn(_tick, environment)
    if isinstance(runner, MasterRunner):
        environment.events.worker_report.add_listener(
            lambda client_id, data: "transports" in data and board.merge(client_id, data["transports"]))
    if options is not None and options.timings_out:
        _record_timings(environment, options.timings_out)
    if options is not None and getattr(options, "streams_out", ""):
        _open_streams_out(environment, options.streams_out)
    if environment.web_ui is not None:
        _extend_web_ui(environment)


def _extend_web_ui(environment) -> None:
    app = environment.web_ui.app
    columns = [{"key": key, "title": title} for key, title in COLUMNS]
    environment.web_ui.template_args["extended_tabs"] = [{"title": "Transports", "key": "transports"}]
    environment.web_ui.template_args["extended_tables"] = [{"key": "transports", "structure": columns}]
    environment.web_ui.template_args["extended_csv_files"] = [
        {"href": "/transports/csv", "title": "Download transport statistics CSV"}]
    # Locust recomputes the form's arguments on every page load: the shape's defaults go in after it.
    ui = environment.web_ui
    locust_update = ui.update_template_args

    def update_template_args() -> None:
        locust_update()
        shape_form_defaults(environment, ui.template_args)

    ui.update_template_args = update_template_args
    update_template_args()

    @app.before_request
    def _refuse_a_shape_without_users():
        if request.method == "POST" and request.path == "/swarm":
            why = shape_start_refusal(environment, request.form)
            if why:
                log.warning("web UI start refused: %s", why)
                return jsonify({"success": False, "message": why, "host": environment.host})
        return None

    @app.route("/transports")
    def transports():
        return jsonify(answer(environment))

    @app.route("/transports/history")
    def transports_history():
        return jsonify([{"t": t, "transports": point} for t, point in board.history])

    @app.route("/transports/chart")
    def transports_chart():
        return app.response_class(CHART_PAGE.replace("%COLORS%", json.dumps(COLORS)), mimetype="text/html")

    @app.route("/transports/csv")
    def transports_csv():
        rows = answer(environment)["totals"]
        body = "\n".join([",".join(k for k, _ in COLUMNS)] +
                         [",".join("" if r[k] is None else str(r[k]) for k, _ in COLUMNS) for r in rows])
        return app.response_class(body, mimetype="text/csv",
                                  headers={"Content-Disposition": "attachment;filename=transports.csv"})

    @app.after_request
    def _extend_stats(response):
        # The UI polls /stats/requests and shows `extended_stats` rows under the tab with the same key.
        if request.path == "/stats/requests" and response.is_json:
            data = response.get_json()
            data["extended_stats"] = [{"key": "transports", "data": tab_rows(answer(environment))}]
            response.set_data(json.dumps(data))
        return response


_streams_out: list = []  # the open --streams-out file, if any


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def record(transport: str, run: Run, failure: str | None, itl: list[float], chunks: list[float],
           resumes: list[float]) -> None:
    """One stream's exact samples, as vLLM's benchmark_serving defines them (per request: TTFT, TPOT =
    (E2E - TTFT) / (tokens - 1), E2E; every inter-token gap; here also every inter-chunk gap)."""
    tokens = len(run.tokens)
    ttft = run.ttft
    end = run.arrivals[-1] - run.started if run.arrivals else None
    out = {"t": transport, "ok": failure is None, "failure": failure, "tokens": tokens,
           "ttft_ms": None if ttft is None else _ms(ttft), "e2e_ms": None if end is None else _ms(end),
           "tpot_ms": _ms((end - ttft) / (tokens - 1)) if tokens > 1 and end is not None else None,
           "itl_ms": [_ms(x) for x in itl], "chunk_ms": [_ms(x) for x in chunks],
           "resume_ms": [_ms(x) for x in resumes], "cuts": len(run.cuts), "client_cuts": run.client_cuts,
           "bytes": run.bytes}
    _streams_out[0].write(json.dumps(out, separators=(",", ":")) + "\n")


def _open_streams_out(environment, path: str) -> None:
    if isinstance(environment.runner, WorkerRunner):
        path = f"{path}.{os.getpid()}"
    _streams_out[:] = [open(path, "w", buffering=1 << 16)]
    environment.events.quitting.add_listener(lambda **_kw: _streams_out[0].close())


# The chart over time (TTFT p95, inter-token p99, tokens/s per transport, 10 s windows), drawn as inline
# SVG from /transports/history every 2 s: no script from another origin.
CHART_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Transports over time</title>
<style>body{font:14px sans-serif;margin:16px}svg{border:1px solid #ddd;background:#fff;margin:6px 0}
.k{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}</style></head><body>
<h2>Transports over time <small>(each point: the last 10 s)</small></h2><div id="legend"></div><div id="charts"></div>
<script>
const COLORS = %COLORS%;
const CHARTS = [["ttft_p95", "TTFT p95 (ms)"], ["itl_p99", "inter-token p99 (ms)"], ["tokens_per_s", "tokens/s"]];
async function draw() {
  const points = await (await fetch("history")).json();
  const names = [...new Set(points.flatMap((p) => Object.keys(p.transports)))];
  document.getElementById("legend").innerHTML = names.map((n) =>
    `<span class="k" style="background:${COLORS[n] || "#000"}"></span>${n}`).join("");
  const W = 900, H = 170, t1 = Math.max(10, ...points.map((p) => p.t));
  document.getElementById("charts").innerHTML = CHARTS.map(([key, title]) => {
    const top = Math.max(1, ...points.flatMap((p) => Object.values(p.transports).map((r) => r[key] || 0)));
    const lines = names.map((n) => {
      const xy = points.filter((p) => p.transports[n] && p.transports[n][key] != null)
        .map((p) => `${(40 + (W - 50) * p.t / t1).toFixed(1)},${(H - 20 - (H - 40) * p.transports[n][key] / top).toFixed(1)}`);
      return `<polyline fill="none" stroke-width="2" stroke="${COLORS[n] || "#000"}" points="${xy.join(" ")}"/>`;
    }).join("");
    return `<div>${title}</div><svg width="${W}" height="${H}"><text x="4" y="16" font-size="11">${Math.round(top)}</text>`
      + `<text x="4" y="${H - 22}" font-size="11">0</text><text x="${W - 60}" y="${H - 4}" font-size="11">${Math.round(t1)} s</text>${lines}</svg>`;
  }).join("");
}
draw(); setInterval(draw, 2000);
</script></body></html>"""


def _record_timings(environment, path: str) -> None:
    if isinstance(environment.runner, WorkerRunner):
        path = f"{path}.{os.getpid()}"
    out = open(path, "w", buffering=1 << 16)
    wanted = {"ttft", "inter_token", "reconnect", "stream"}

    def on_request(request_type, name, response_time, exception=None, **_kw):
        if name in wanted and exception is None:
            out.write(f'{{"t":"{request_type}","m":"{name}","ms":{response_time!r}}}\n')

    environment.events.request.add_listener(on_request)
    environment.events.quitting.add_listener(lambda **_kw: out.close())


@events.test_start.add_listener
def _test_start(environment, **_kw) -> None:
    board.reset()
    board.monitor.lags.clear()
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    scenario = environment.parsed_options.scenario
    if scenario in ("throughput", "mixed") and environment.shape_class is None:
        log.warning("the %s scenario needs the shape class ScenarioShape (pick it in the form): "
                    "this run keeps a steady user count", scenario)
    try:
        target_url(environment)
    except ValueError as exc:  # say so once, rather than one traceback per user
        log.error("%s", exc)
        environment.process_exit_code = 2
        runner = environment.runner
        gevent.spawn_later(0.1, runner.quit if environment.parsed_options.headless else runner.stop)


@events.quit.add_listener
def _write_files(**_kw) -> None:
    # After the runner has stopped (Locust's own stats CSV is rewritten once a second, so it can miss
    # the last second; these files and PREFIX_final_*.csv hold the final figures).
    environment = _ENV[0] if _ENV else None
    if environment is None:
        return
    options = knobs(environment)
    prefix = getattr(options, "csv_prefix", None) if options is not None else None
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return
    if not isinstance(environment.runner, MasterRunner):
        board.merge("local", board.report(environment.runner.current_cpu_usage))  # the last streams
    result = answer(environment)
    with open(f"{prefix}_transports.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([k for k, _ in COLUMNS])
        for row in result["totals"]:
            writer.writerow(["" if row[k] is None else row[k] for k, _ in COLUMNS])
    with open(f"{prefix}_transports.json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    # Locust's own stats and failures in its CSV format, but final (its PREFIX_stats.csv is from the last
    # once-a-second write, before the last streams ended).
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    with open(f"{prefix}_final_stats.csv", "w", newline="") as f:
        writer.requests_csv(csv.writer(f))
    with open(f"{prefix}_final_failures.csv", "w", newline="") as f:
        writer.failures_csv(csv.writer(f))
