"""A blocking streaming client for load users: each event timed when its bytes arrive.

Locust runs users as gevent greenlets, so asyncio clients do not fit; this is
`gateway/client.py` on blocking I/O that gevent makes cooperative, with the
same resume rules and the same codecs:

- SSE and NDJSON with `requests` (`stream=True`), read with `raw.read1()`: it
  returns as soon as the socket holds bytes, so an event is timed when it
  arrives, not when a 1 KiB buffer fills (FastHttpUser's `iter_lines` bunches).
  Like a browser it accepts gzip (a proxy may compress); `bytes` counts the
  decoded body.
- WebSocket with the `websockets` sans-I/O protocol on a plain socket: one
  blocking loop in the user's own greenlet. (The `websockets` sync client reads
  in a background thread, under gevent a greenlet waiting in a selector on a
  socket that another greenlet closes; Locust runs with it were seen to spin the
  CPU after the run ended and never exit.) Every read has a timeout, and the
  socket is closed whichever way the stream ends, a Locust stop included.

`StreamClient.events()` yields (event, arrival) until the terminal event and
resumes by itself after a cut; the `Run` it fills says what happened. It
reconnects as the browser clients do: sse_get as an EventSource (waits the
server's `retry:`, sends Last-Event-ID, stops on a non-200 answer, 204
included), the others after gateway/backoff.py's delay (the page's and the
Python client's). With `cut_after`, the client itself closes its socket once
that token came (a phone losing signal), then resumes.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import requests
import urllib3
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from gateway.client import _check, responses_body
from gateway.codecs import ndjson, sse, ws
from gateway.codecs.responses import OFFSET, RESPONSE_PREFIX, EventDecoder
from gateway.events import Done, Error, Event, Token
from gateway.names import FALLBACK, FORMAT, RESUMABLE, Transport
from gateway.resume import CLOSE, LAST, SKIP, STOP, Again, GatewayError, PathRefused, Resume, StreamResult

__all__ = ["StreamClient", "Run", "GatewayError", "TRANSPORTS", "USER_CLASSES", "post_complete", "request_body", "responses_body"]

# sse_get attaches by id, as EventSource does; the others create and stream in one request. responses:
# OpenAI's Responses API (a background response, resumed with starting_after = seq + 3).
# "auto": WebSocket, falling back to SSE over fetch, then NDJSON (gateway.fallback), as the page does.
TRANSPORTS = (*(t.value for t in RESUMABLE), "auto")
AUTO = tuple(t.value for t in FALLBACK)
# The locustfile's user class for each transport.
USER_CLASSES = {"sse_get": "SseGetUser", "sse_post": "SsePostUser", "ndjson": "NdjsonUser", "ws": "WsUser",
                "responses": "ResponsesUser", "complete": "CompleteUser", "auto": "AutoUser"}
# Chromium's EventSource reconnection time when the server sends no `retry:`.
EVENTSOURCE_DEFAULT_RETRY_MS = 3000
_CUT = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
        WebSocketException, OSError, TimeoutError)


@dataclass
class Run(StreamResult):
    """A StreamResult plus why the last connection failed."""
    cause: str | None = None  # the last I/O error, if a connection failed
    client_cuts: int = 0  # connections the client closed itself (`cut_after`)
    waited: float = 0.0  # seconds spent waiting before reconnects (retry or backoff)


class StreamClient:
    """One user's connection to the gateway (not shared between greenlets)."""

    def __init__(self, base_url: str, session: requests.Session | None = None, *,
                 read_timeout: float = 60.0, max_resumes: int = 20) -> None:
        self.base_url = base_url.rstrip("/")
        self.ws_url = "ws" + self.base_url[4:]
        self.session = session or requests.Session()
        self.read_timeout = read_timeout
        self.max_resumes = max_resumes
        # A slow reader: bytes per second it consumes (0: as fast as they come).
        self.read_bps = 0.0
        # EventSource's reconnection time: the server's last `retry:`, else Chromium's default.
        self.retry_ms = EVENTSOURCE_DEFAULT_RETRY_MS
        self._abrupt = False  # the next close is the client's own cut: no goodbye

    def close(self) -> None:
        self.session.close()

    def create(self, body: dict[str, Any]) -> str:
        """POST /v1/streams: the id of a stream to attach to."""
        r = self.session.post(self.base_url + "/v1/streams", json=body, timeout=(10, self.read_timeout))
        _check(r.status_code, r.content)
        return r.json()["id"]

    def events(self, transport: str, body: dict[str, Any], run: Run,
               cut_after: int | None = None) -> Iterator[tuple[Event, float]]:
        """Yield (event, arrival) until the terminal event, resuming after cuts.

        `run.started` is set before the first request (for sse_get, before the
        stream is created), so time to first token is what a user would see.
        Raises GatewayError if the gateway refuses before streaming (and, for
        sse_get, if a reconnect is answered with anything but 200: EventSource
        gives up then). `cut_after`: close the socket once token seq `cut_after`
        came, then resume.
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; one of {TRANSPORTS}")
        run.started = time.perf_counter()
        if transport == Transport.SSE_GET:
            run.stream_id = self.create(body)
        machine = Resume(run, transport=AUTO if transport == "auto" else transport,
                         max_resumes=self.max_resumes, eventsource=transport == Transport.SSE_GET)
        while True:
            machine.opened(time.perf_counter())
            connection = self._connect(machine.transport, body, run.stream_id, machine.after, run)
            try:
                for event, at in connection:
                    action = machine.event(event, at)
                    if action is SKIP:
                        continue
                    if action is CLOSE:
                        break
                    yield event, at
                    if action is LAST:
                        return
                    if cut_after is not None and type(event) is Token and event.seq >= cut_after:
                        cut_after = None
                        run.client_cuts += 1
                        self._abrupt = True
                        break
                step = self._cut(connection, machine)
            except PathRefused as exc:
                step = machine.path_refused(exc)
            except GatewayError as exc:
                step = machine.refused(exc)  # a draining replica: later (Retry-After), or another one
            except _CUT as exc:
                run.cause = f"{type(exc).__name__}: {exc}"[:200]
                step = self._cut(connection, machine)
            finally:
                connection.close()
                self._abrupt = False
            if step is STOP:
                return
            run.waited += step.delay
            time.sleep(step.delay)  # gevent's, under Locust

    def _cut(self, connection: Iterator, machine: Resume) -> Again | str:
        connection.close()  # first: an EventSource's reconnection time is the `retry:` it read
        machine.retry_s = self.retry_ms / 1000
        return machine.cut(time.perf_counter())

    # -- one connection -------------------------------------------------------

    def _connect(self, transport: str, body: dict, stream_id: str | None, after: int,
                 run: Run) -> Iterator[tuple[Event, float]]:
        if transport == Transport.WS:
            return self._ws(body, stream_id, after, run)
        if transport == Transport.RESPONSES:
            decoder = EventDecoder()
            if stream_id is None:
                return self._http("POST", "/v1/responses", decoder, run, json=responses_body(body))
            return self._http("GET", f"/v1/responses/{RESPONSE_PREFIX}{stream_id}", decoder, run,
                              params={"stream": "true", "starting_after": after + OFFSET})
        fmt = FORMAT[transport]
        decoder = sse.Decoder() if fmt == "sse" else ndjson.Decoder()
        if stream_id is None:
            return self._http("POST", f"/v1/{fmt}", decoder, run, json=body)
        if fmt == "sse":
            headers = {"Last-Event-ID": str(after)} if after >= 0 else {}
            return self._http("GET", f"/v1/streams/{stream_id}/sse", decoder, run, headers=headers,
                              eventsource=transport == Transport.SSE_GET)
        params = {"after": after} if after >= 0 else {}
        return self._http("GET", f"/v1/streams/{stream_id}/ndjson", decoder, run, params=params)

    def _http(self, method: str, path: str, decoder: sse.Decoder | ndjson.Decoder | EventDecoder, run: Run,
              eventsource: bool = False, **kw: Any) -> Iterator[tuple[Event, float]]:
        r = self.session.request(method, self.base_url + path, stream=True,
                                 timeout=(10, self.read_timeout), **kw)
        ended = False
        try:
            if r.status_code >= 400:
                _check(r.status_code, r.content, r.headers.get("retry-after"))
            if eventsource and r.status_code != 200:
                # An EventSource fails for good on any answer but 200 (204 is how a server says stop).
                raise GatewayError(r.status_code, {"title": f"EventSource stops on HTTP {r.status_code}"})
            raw = r.raw
            slow = self.read_bps
            size = 256 if slow else 65536
            while True:
                chunk = raw.read1(size, decode_content=True)
                at = time.perf_counter()
                if not chunk:
                    return
                run.bytes += len(chunk)
                events = decoder.feed(chunk)
                if events and isinstance(events[-1], (Done, Error)):
                    # The end of the body follows the terminal event: read it, so the
                    # connection goes back to the pool for the next stream (as a browser's would).
                    while raw.read1(size, decode_content=True):
                        pass
                    ended = True
                for event in events:
                    yield event, at
                if slow:
                    time.sleep(len(chunk) / slow)
        finally:
            if eventsource and decoder.retry is not None:
                self.retry_ms = decoder.retry
            if ended:
                r.raw.release_conn()
            else:
                r.close()

    def _ws(self, body: dict, stream_id: str | None, after: int, run: Run) -> Iterator[tuple[Event, float]]:
        conn = WsConnection(self.ws_url + "/v1/ws", timeout=self.read_timeout)
        try:
            conn.open()
            conn.send(ws.start(**body) if stream_id is None else ws.resume(stream_id, after))
            slow = self.read_bps
            while True:
                message = conn.recv()
                at = time.perf_counter()
                run.bytes += len(message)
                yield ws.decode(message), at  # an error about the connection (seq -1): the machine raises
                if slow:
                    time.sleep(len(message) / slow)
        finally:
            conn.close(abrupt=self._abrupt)


class WsConnection:
    """A WebSocket client: the `websockets` protocol (sans I/O) on a blocking socket.

    Everything runs in the caller's greenlet: no background reader, so a killed
    greenlet leaves nothing behind, and each socket read times out after `timeout`.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.uri = parse_uri(url)
        self.timeout = timeout
        self.protocol = ClientProtocol(self.uri, max_size=2**24)
        self.sock: socket.socket | None = None
        self.parts: list[bytes] = []  # a fragmented message so far
        self.text = True
        self.messages: list[str | bytes] = []

    def open(self) -> None:
        self.sock = socket.create_connection((self.uri.host, self.uri.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while self.protocol.state is State.CONNECTING and self.protocol.handshake_exc is None:
            self._read()
        exc = self.protocol.handshake_exc
        if isinstance(exc, InvalidStatus):  # the upgrade was refused (or a proxy did not pass it on)
            try:
                _check(exc.response.status_code, exc.response.body or b"")
            except GatewayError as refused:
                raise PathRefused(refused.status, refused.problem) from exc
        if exc is not None:
            raise exc

    def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def recv(self) -> str | bytes:
        """The next message; ConnectionError if the connection ends first, TimeoutError if none comes."""
        while not self.messages:
            self._read()
        return self.messages.pop(0)

    def close(self, abrupt: bool = False) -> None:
        """Close with a close frame, or (`abrupt`) just drop the socket, as a lost network does."""
        if self.sock is None:
            return
        try:
            if self.protocol.state is State.OPEN and not abrupt:
                self.protocol.send_close(1000)
                self._flush()
        except OSError:
            pass
        finally:
            self.sock.close()
            self.sock = None

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if not isinstance(event, Frame) or event.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                continue  # the handshake response (see handshake_exc), pings, close (answered below)
            if event.opcode is not Opcode.CONT:
                self.text = event.opcode is Opcode.TEXT
            self.parts.append(event.data)
            if event.fin:
                message = b"".join(self.parts)
                self.parts = []
                self.messages.append(message.decode() if self.text else message)
        self._flush()  # pongs, the answer to a close
        if not self.messages and (not data or self.protocol.state is State.CLOSED):
            if self.protocol.handshake_exc is None:
                raise ConnectionError(f"WebSocket closed: {self.protocol.close_exc}")

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)


def post_complete(session: requests.Session, base_url: str, body: dict[str, Any],
             timeout: float = 60.0) -> tuple[dict[str, Any], int]:
    """POST /v1/complete, the non-streamed baseline: (answer, bytes)."""
    r = session.post(base_url.rstrip("/") + "/v1/complete", json=body, timeout=(10, timeout))
    _check(r.status_code, r.content)
    return orjson.loads(r.content), len(r.content)


def request_body(prompt_bytes: int, max_tokens: int, seed: int, **sim: Any) -> dict[str, Any]:
    """A stream request with a prompt of `prompt_bytes` bytes; `sim` as in the API (ttft_ms, ...)."""
    prompt = ("Explain streaming transports. " * (prompt_bytes // 30 + 1))[:prompt_bytes]
    return {"prompt": prompt, "max_tokens": max_tokens, "seed": seed, "sim": sim}
