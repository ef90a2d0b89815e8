"""An independent wire reader for tests: raw bytes and frames in, every event out, exactly as sent.

The gateway's client resumes by itself and drops any seq it has already seen, so a server that
resends events looks fine through it. This reader shares nothing with the code under test (it
imports neither `gateway.client` nor `gateway.codecs`): its own SSE and NDJSON frame parsers over
httpx byte streams, WebSocket text messages through the `websockets` library, and a resume loop of
its own (`follow`). Nothing is de-duplicated or dropped, heartbeats included, so concatenating what
it read shows a resent event as a duplicate and a skipped one as a gap (`assert_exact`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import websockets

from gateway.names import FORMAT, parse

TERMINAL = ("done", "error")
READ_TIMEOUT = 30.0  # bound on one whole read: a server that never ends fails the test, it does not hang it


class SSEFrames:
    """WHATWG event-stream framing: lines end in CRLF, LF or CR (split anywhere across feeds); a blank
    line dispatches. Yields one dict per message ({"id", "event", "data", "retry"}) and per comment."""

    def __init__(self) -> None:
        self._buf = b""
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[dict]:
        self._buf += chunk
        out: list[dict] = []
        while True:
            i = min((p for p in (self._buf.find(b"\r"), self._buf.find(b"\n")) if p >= 0), default=-1)
            if i < 0 or (self._buf[i:i + 1] == b"\r" and i + 1 == len(self._buf)):
                return out  # no whole line yet (a final CR may be half of a CRLF)
            line = self._buf[:i].decode("utf-8")
            self._buf = self._buf[i + (2 if self._buf[i:i + 2] == b"\r\n" else 1):]
            if not line:
                if self._data or self._fields:
                    out.append({**self._fields, "data": "\n".join(self._data) if self._data else None})
                self._fields, self._data = {}, []
            elif line.startswith(":"):
                out.append({"comment": line[1:].lstrip(" ")})
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    self._data.append(value)
                else:
                    self._fields[name] = value


class LineFrames:
    """NDJSON framing: one JSON object per LF-terminated line."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[dict]:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def sse_event(frame: dict) -> dict:
    """An SSE message as the event it carries; a comment is a heartbeat. The `id:` and `event:` lines
    must agree with the JSON (id is the seq), or the frame is malformed."""
    if "comment" in frame:
        return {"type": "heartbeat", "comment": frame["comment"]}
    if frame.get("data") is None:
        return {"type": "retry", "retry": int(frame["retry"])}  # the stream's opening `retry:` block
    event = json.loads(frame["data"])
    assert frame.get("event") == event["type"], frame
    if "id" in frame:
        assert frame["id"] == str(event["seq"]), frame
    elif event["type"] not in ("reconnect",):
        raise AssertionError(f"an SSE event without an id line: {frame}")
    return event


@dataclass
class Read:
    """One connection's worth of wire: every event in order, and how it ended."""

    transport: str
    url: str = ""
    status: int | None = None  # HTTP status (101 for an accepted WebSocket)
    problem: dict | None = None  # the problem body of a refusal
    events: list[dict] = field(default_factory=list)  # as sent: heartbeats, reconnects and retries too
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each event's arrival
    close_code: int | None = None  # WebSocket close code the server sent
    close_reason: str = ""
    ended: str = ""  # "terminal", "stopped" (the caller's `until`), "closed" (no terminal event), "refused"
    headers: dict[str, str] = field(default_factory=dict)
    wire_bytes: int = 0
    on_event: Callable[[dict], None] | None = field(default=None, repr=False)

    @property
    def stream(self) -> list[dict]:
        """The events that carry a seq (meta, token, done, error), nothing filtered."""
        return [e for e in self.events if "seq" in e]

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.stream]

    @property
    def tokens(self) -> list[dict]:
        return [e for e in self.events if e["type"] == "token"]

    @property
    def text(self) -> str:
        return "".join(e["text"] for e in self.tokens)

    @property
    def meta(self) -> dict | None:
        return next((e for e in self.events if e["type"] == "meta"), None)

    @property
    def terminal(self) -> dict | None:
        last = self.stream[-1] if self.stream else None
        return last if last is not None and last["type"] in TERMINAL else None

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e["type"] == kind)


def _attach_request(base: str, transport: str, stream_id: str | None, after: int, body: dict | None,
                    ) -> tuple[str, str, dict, dict | None]:
    if stream_id is None:
        return "POST", f"{base}/v1/{transport}", {}, body or {}
    if transport == "sse":
        return "GET", f"{base}/v1/streams/{stream_id}/sse", ({"Last-Event-ID": str(after)} if after >= 0 else {}), None
    return "GET", f"{base}/v1/streams/{stream_id}/ndjson" + (f"?after={after}" if after >= 0 else ""), {}, None


async def read(base: str, transport: str, *, stream_id: str | None = None, after: int = -1,
               body: dict | None = None, until: Callable[[dict], bool] | None = None,
               timeout: float = READ_TIMEOUT, headers: dict | None = None, ws_attach: bool = False,
               compression: str | None = None, on_event: Callable[[dict], None] | None = None) -> Read:
    """Read one connection to the end: a terminal event, a close, or `until(event)` true (then drop it).

    `transport` is a format, "sse", "ndjson" or "ws", or a transport's name (gateway/names.py: sse_post and
    sse_get read as "sse"); with `stream_id` it attaches after `after` (SSE
    `Last-Event-ID`, NDJSON `?after=`, a WebSocket `resume` message, or with `ws_attach` the
    `/v1/streams/{id}/ws?after=` route); without, it starts a one-shot stream with `body`.
    `on_event` sees each event as it arrives.
    """
    transport = FORMAT[parse(transport)]
    out = Read(transport, base, on_event=on_event)
    try:
        async with asyncio.timeout(timeout):
            if transport == "ws":
                await _read_ws(out, base, stream_id, after, body, until, headers or {}, ws_attach, compression)
            else:
                await _read_http(out, base, transport, stream_id, after, body, until, headers or {})
    except TimeoutError:
        raise AssertionError(f"no end within {timeout} s on {transport} at {base}: read {out.events[-5:]}") from None
    return out


def _take(out: Read, event: dict, until) -> bool:
    """Record one event; True when the read should end here."""
    out.events.append(event)
    out.arrivals.append(time.monotonic())
    if out.on_event is not None:
        out.on_event(event)
    if "seq" in event and event["type"] in TERMINAL:
        out.ended = "terminal"
        return True
    if event["type"] == "reconnect":
        out.ended = "reconnect"
        return out.transport != "ws"  # a WebSocket goes on to its close frame (and code)
    if until is not None and until(event):
        out.ended = "stopped"
        return True
    return False


async def _read_http(out, base, transport, stream_id, after, body, until, headers) -> None:
    method, url, extra, json_body = _attach_request(base, transport, stream_id, after, body)
    frames = SSEFrames() if transport == "sse" else LineFrames()
    # verify=False: plain http on loopback, and building a certificate store costs ~60 ms per client.
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), verify=False, trust_env=False) as http:
        try:
            async with http.stream(method, url, headers={**extra, **headers}, json=json_body) as response:
                out.status, out.headers = response.status_code, dict(response.headers)
                if response.status_code >= 400:
                    out.ended, out.problem = "refused", json.loads(await response.aread())
                    return
                async for chunk in response.aiter_raw():
                    out.wire_bytes += len(chunk)
                    for frame in frames.feed(chunk):
                        event = sse_event(frame) if transport == "sse" else frame
                        if _take(out, event, until):
                            return
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError):
            pass  # cut: the connection ended without a terminal event
    out.ended = out.ended or "closed"


async def _read_ws(out, base, stream_id, after, body, until, headers, ws_attach, compression) -> None:
    ws_base = "ws" + base[4:]
    if ws_attach:
        url, first = f"{ws_base}/v1/streams/{stream_id}/ws" + (f"?after={after}" if after >= 0 else ""), None
    else:
        url = ws_base + "/v1/ws"
        first = (json.dumps({"type": "start", **(body or {})}) if stream_id is None
                 else json.dumps({"type": "resume", "stream_id": stream_id, "after": after}))
    try:
        sock = await websockets.connect(url, compression=compression, max_size=2**24, open_timeout=10,
                                        ping_interval=None, additional_headers=headers)
    except websockets.InvalidStatus as exc:
        out.status, out.ended = exc.response.status_code, "refused"
        out.problem = json.loads(exc.response.body) if exc.response.body else None
        return
    except OSError:
        out.ended = "closed"  # nobody listening: a dead replica
        return
    out.status = 101
    out.headers = dict(sock.response.headers)
    async with sock:
        try:
            if first is not None:
                await sock.send(first)
            async for message in sock:
                out.wire_bytes += len(message)
                if _take(out, json.loads(message), until):
                    return
        except websockets.ConnectionClosed:
            pass
    rcvd = sock.protocol.close_rcvd  # the close frame the server sent (None if it sent none)
    if rcvd is not None:
        out.close_code, out.close_reason = rcvd.code, rcvd.reason
    out.ended = out.ended or "closed"


def at_token(n: int) -> Callable[[dict], bool]:
    """An `until` for `read`: true at the nth token of this connection."""
    seen = 0

    def until(event: dict) -> bool:
        nonlocal seen
        seen += event["type"] == "token"
        return seen == n

    return until


def at_seq(seq: int) -> Callable[[dict], bool]:
    """An `until` for `read`: true at the event with this seq."""
    return lambda event: event.get("seq") == seq


def last_seq(reads: Sequence[Read], after: int = -1) -> int:
    for r in reversed(reads):
        if r.seqs:
            return r.seqs[-1]
    return after


async def follow(bases: str | Sequence[str], transport: str, stream_id: str, *, after: int = -1,
                 max_connections: int = 20, timeout: float = 60.0, **kw) -> list[Read]:
    """This reader's own resume loop: attach, and after every cut (a close without a terminal event,
    a `reconnect` event, a refusal with 503 or a dead replica) attach again after the last seq this
    loop saw, at the next base URL. Returns every connection's read; nothing is filtered."""
    bases = [bases] if isinstance(bases, str) else list(bases)
    reads: list[Read] = []
    deadline = time.monotonic() + timeout
    for i in range(max_connections):
        left = deadline - time.monotonic()
        assert left > 0, f"no terminal event within {timeout} s over {len(reads)} connections"
        r = await read(bases[i % len(bases)], transport, stream_id=stream_id,
                       after=last_seq(reads, after), timeout=left, **kw)
        reads.append(r)
        if r.ended == "terminal":
            return reads
        if r.ended == "refused" and r.status != 503:
            raise AssertionError(f"refused with {r.status}: {r.problem}")
        if r.ended == "stopped":
            return reads
        await asyncio.sleep(0.05 * min(i, 10) if len(bases) == 1 else 0.02)
    raise AssertionError(f"no terminal event in {max_connections} connections")


def joined(reads: Sequence[Read]) -> list[dict]:
    """Every event of every connection, in order."""
    return [e for r in reads for e in r.events]


def assert_exact(events: Sequence[dict], first: int, last: int | None = None) -> None:
    """The seq-carrying events are exactly first, first + 1, ..., last: no duplicate, no gap."""
    seqs = [e["seq"] for e in events if "seq" in e]
    dups = len(seqs) - len(set(seqs))
    gaps = sum(1 for a, b in itertools.pairwise(seqs) if b > a + 1) + (1 if seqs and seqs[0] > first else 0)
    want = list(range(first, (last if last is not None else (seqs[-1] if seqs else first - 1)) + 1))
    assert seqs == want, f"{dups} duplicate(s), {gaps} gap(s): seqs {_summary(seqs)}, want {_summary(want)}"


def text_of(events: Sequence[dict]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "token")


def _summary(seqs: Sequence[int]) -> str:
    if len(seqs) <= 12:
        return str(list(seqs))
    return f"[{', '.join(map(str, seqs[:6]))}, ... {', '.join(map(str, seqs[-6:]))}] ({len(seqs)})"
