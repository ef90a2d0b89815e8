"""One resume machine, sans I/O, for every client that reads a stream across connections.

The Python client (gateway/client.py, asyncio) and the Locust users
(loadtests/streaming.py, blocking under gevent) are thin loops around it:

    machine = Resume(result, transport="sse_post", urls=2)
    while True:
        ... connect with machine.transport, after seq machine.after, at base URL number machine.url ...
        try:
            for event, at in connection:
                action = machine.event(event, at)   # DELIVER / LAST / SKIP / CLOSE
                if action is SKIP: continue
                if action is CLOSE: break
                ... pass the event on ...
                if action is LAST: return
            next = machine.cut(now)                 # Again(after, delay) or STOP
        except PathRefused as exc: next = machine.path_refused(exc)   # or it raises
        except GatewayError as exc: next = machine.refused(exc)       # or it raises
        except <a cut>: next = machine.cut(now, cause)
        if next is STOP: return
        ... wait next.delay, then reconnect (at the next base URL when there are several) ...

Events are deduplicated by seq (a resume may repeat the last one), heartbeats
and reconnect requests are counted, never passed on. An event past a gap (a
seq skipped: a copy of the stream with a hole) is not passed on either: the
connection ends and the stream resumes after the last seq received, so a
finished stream never reports `done` with text missing. An error with seq -1 is
about the connection, not the stream (a refused resume, a draining replica):
it raises `GatewayError` at once (status 503 when another replica or a later
try may serve), so a reader never waits on a connection that will say nothing
more. A 503 (`draining`, `store_unavailable`) is tried again after its
Retry-After, at the next base URL if there are several.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import backoff
from .events import Done, Error, Event, Heartbeat, Meta, Reconnect, Token
from .fallback import Fallback

__all__ = ["Resume", "Again", "StreamResult", "GatewayError", "PathRefused",
           "DELIVER", "LAST", "SKIP", "CLOSE", "STOP", "UNAVAILABLE"]

UNAVAILABLE = ("draining", "store_unavailable", "http_503")  # refusals worth another try, elsewhere or later

DELIVER = "deliver"  # pass the event on
LAST = "last"  # pass the event on: it ends the stream
SKIP = "skip"  # a heartbeat or a duplicate: nothing to pass on
CLOSE = "close"  # the server asked for a reconnect, or skipped a seq: end this connection, then call `cut`
STOP = "stop"  # give up: the stream stays cut (its text partial)


@dataclass(frozen=True, slots=True)
class Again:
    """Reconnect after `delay` seconds, asking for the events after seq `after`."""
    after: int
    delay: float
    elsewhere: bool = False  # at the next base URL


class GatewayError(Exception):
    """A refusal before streaming: the HTTP status (0: none, a WebSocket error) and its problem body."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {problem.get('title', '')} {problem.get('detail', '')}".strip())
        self.status = status
        self.problem = problem
        self.retry_after = retry_after  # seconds, from a Retry-After header


class PathRefused(GatewayError):
    """The path would not carry a transport at all: a WebSocket upgrade answered without 101."""


@dataclass
class StreamResult:
    events: list[Event] = field(default_factory=list)  # meta, tokens and the terminal event, in order
    arrivals: list[float] = field(default_factory=list)  # perf_counter() when each event arrived
    started: float = 0.0
    stream_id: str | None = None
    reconnects: int = 0
    reconnect_requests: int = 0  # the server asked us to go elsewhere (it was draining)
    heartbeats: int = 0
    gaps: int = 0
    duplicates: int = 0
    bytes: int = 0
    last_seq: int = -1  # the last seq received (or the resume point to start from)
    transport: str | None = None  # the transport in use (the last one, after fallbacks)
    fallbacks: list[tuple[str, str, float]] = field(default_factory=list)  # (from, to, perf_counter())
    cuts: list[float] = field(default_factory=list)  # perf_counter() when each cut was noticed

    @property
    def tokens(self) -> list[Token]:
        return [e for e in self.events if type(e) is Token]

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.tokens)

    @property
    def terminal(self) -> Done | Error | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, (Done, Error)) else None

    @property
    def done(self) -> Done | None:
        t = self.terminal
        return t if isinstance(t, Done) else None

    @property
    def error(self) -> Error | None:
        t = self.terminal
        return t if isinstance(t, Error) else None

    @property
    def cut(self) -> bool:
        """Ended without a terminal event: the text is partial."""
        return self.terminal is None

    @property
    def token_arrivals(self) -> list[float]:
        return [t for e, t in zip(self.events, self.arrivals) if type(e) is Token]

    @property
    def ttft(self) -> float | None:
        arr = self.token_arrivals
        return arr[0] - self.started if arr else None

    def take(self, event: Event, at: float) -> bool:
        """Record an arrival; False for a heartbeat or a duplicate (not to be passed on).

        A seq at or below `last_seq` is a duplicate; one beyond `last_seq + 1`
        means events were skipped (a gap).
        """
        if type(event) is Heartbeat:
            self.heartbeats += 1
            return False
        seq, last = event.seq, self.last_seq
        if seq <= last and last >= 0:
            self.duplicates += 1
            return False
        if seq > last + 1:
            self.gaps += 1
        self.last_seq = seq
        if type(event) is Meta:
            self.stream_id = event.stream_id
        self.events.append(event)
        self.arrivals.append(at)
        return True


class Resume:
    def __init__(self, result: StreamResult, *, transport: str | Sequence[str] = "sse_post", resume: bool = True,
                 max_resumes: int = 20, urls: int = 1, eventsource: bool = False,
                 rand: Callable[[], float] = random.random) -> None:
        self.result = result
        self.fallback = Fallback.of(transport)
        self.resume = resume
        self.max_resumes = max_resumes
        self.urls = urls
        self.eventsource = eventsource  # reconnect as an EventSource: after `retry_s`, never past a refusal
        self.retry_s = 3.0  # EventSource's reconnection time (the server's last `retry:`)
        self.rand = rand
        self.attempts = 0
        self.url = 0  # index of the base URL to use
        self._opened = 0.0
        self._progressed = False
        self._named: float | None = None  # a delay the server named (a `reconnect` event)
        result.transport = self.fallback.transport

    @property
    def transport(self) -> str:
        return self.fallback.transport

    @property
    def after(self) -> int:
        return self.result.last_seq

    def opened(self, now: float) -> None:
        """A connection is about to open."""
        self._opened, self._progressed, self._named = now, False, None
        self.result.transport = self.fallback.transport

    def event(self, event: Event, at: float) -> str:
        kind = type(event)
        if kind is Reconnect:
            self.result.reconnect_requests += 1
            self._named = event.retry_ms / 1000
            return CLOSE
        if kind is Error and event.seq < 0:
            status = 503 if event.code in UNAVAILABLE else 0
            raise GatewayError(status, {"title": event.code, "detail": event.message, "code": event.code})
        if kind is not Heartbeat and event.seq > self.result.last_seq + 1:
            self.result.gaps += 1  # never deliver past a hole: read again from the last seq received
            return CLOSE
        if not self.result.take(event, at):
            return SKIP
        self._progressed = self._progressed or kind is not Meta
        return LAST if kind is Done or kind is Error else DELIVER

    def cut(self, now: float, cause: str | None = None) -> Again | str:
        """The connection ended without a terminal event (or the server asked to reconnect)."""
        r = self.result
        r.cuts.append(now)
        switched = self.fallback.ended(self._progressed, now - self._opened)
        if switched:
            r.fallbacks.append((*self.fallback.switches[-1], now))
        # With transports to fall back on, a connection cut before the stream's id arrived starts it again.
        unknown = r.stream_id is None and (r.events or len(self.fallback.order) == 1)
        if not self.resume or unknown or self.attempts >= self.max_resumes:
            return STOP
        if switched:
            delay = 0.0
        elif self._named is not None:
            delay = self._named
        elif self.eventsource:
            delay = self.retry_s
        else:
            delay = backoff.delay(self.attempts + 1, self.rand)
        return self._again(delay)

    def refused(self, exc: GatewayError) -> Again:
        """A refusal before streaming; raises it unless another try may succeed (503)."""
        if exc.status != 503 or self.eventsource or self.attempts >= self.max_resumes:
            raise exc
        delay = exc.retry_after if exc.retry_after is not None else backoff.delay(self.attempts + 1, self.rand)
        return self._again(delay)

    def path_refused(self, exc: PathRefused) -> Again:
        """The path would not carry the transport: the next one in the fallback order, at once."""
        if not self.fallback.refused():
            raise exc
        self.result.fallbacks.append((*self.fallback.switches[-1], self._opened))
        return Again(self.result.last_seq, 0.0)

    def _again(self, delay: float) -> Again:
        self.attempts += 1
        self.result.reconnects += 1
        elsewhere = self.urls > 1
        if elsewhere:
            self.url = (self.url + 1) % self.urls
            delay = min(delay, 0.05 * self.attempts)  # another replica is there now
        return Again(self.result.last_seq, delay, elsewhere)
