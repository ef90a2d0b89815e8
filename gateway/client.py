"""A Python client for the gateway: any transport, automatic resume, per-event arrival times.

    async with Client("http://127.0.0.1:8000") as client:
        result = await client.stream("sse", prompt="hi", max_tokens=50)
        print(result.text, result.ttft)

`events()` is the incremental form: an async iterator of (event, arrival)
that resumes by itself after a drop. Decoding uses the gateway's own codecs.

Given several base URLs (replicas sharing a Redis store), the client resumes
at the next one after any cut: a drop, a replica that died, or a draining
replica's reconnect signal (NDJSON/SSE `reconnect` event, WebSocket close
1012, an SSE response that ends without a terminal event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson
import websockets
from websockets.asyncio.client import connect as ws_connect

from . import backoff
from .codecs import ndjson, sse, ws
from .codecs.responses import OFFSET, RESPONSE_PREFIX, EventDecoder
from .events import Done, Error, Event, Heartbeat, Meta, Reconnect, Token
from .fallback import Fallback

__all__ = ["Client", "StreamResult", "GatewayError", "PathRefused", "Transport", "Transports", "TRANSPORTS",
           "responses_body"]

Transport = Literal["sse", "ndjson", "ws", "responses"]
TRANSPORTS: tuple[Transport, ...] = ("sse", "ndjson", "ws")  # the gateway's own; "responses" is OpenAI's
# Responses API: a streamed background response, resumed with starting_after = seq + 3.
# "auto": WebSocket, falling back to SSE over fetch, then NDJSON, where a path refuses or kills one.
Transports = Transport | Literal["auto"] | Sequence[Transport]
_UNAVAILABLE = ("draining", "store_unavailable", "http_503")  # WebSocket refusals worth another replica
_CUT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout, httpx.ConnectError,
        websockets.ConnectionClosed, OSError)


class GatewayError(Exception):
    """A refusal before streaming: the HTTP status and its problem body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status}: {problem.get('title', '')} {problem.get('detail', '')}".strip())
        self.status = status
        self.problem = problem


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


class Client:
    def __init__(self, base_url: str | Sequence[str], *, read_timeout: float = 60.0, max_resumes: int = 20,
                 http: httpx.AsyncClient | None = None, api_key: str | None = None) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.base_urls = [url.rstrip("/") for url in urls]
        self._at = 0  # index of the base URL in use
        self.max_resumes = max_resumes
        self.read_timeout = read_timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http or httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(10.0, read=read_timeout), headers=self.headers,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
        )

    @property
    def base_url(self) -> str:
        return self.base_urls[self._at]

    @property
    def ws_url(self) -> str:
        url = self.base_url
        return "ws" + url[4:] if url.startswith("http") else url

    def _next_base(self) -> bool:
        """Move to the next base URL; False if there is only one."""
        self._at = (self._at + 1) % len(self.base_urls)
        return len(self.base_urls) > 1

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- plain requests -------------------------------------------------------

    async def create(self, prompt: str = "", **fields: Any) -> dict[str, Any]:
        """POST /v1/streams: a stream to attach to by id."""
        r = await self.http.post(self.base_url + "/v1/streams", json={"prompt": prompt, **fields})
        _check(r.status_code, r.content)
        return r.json()

    async def cancel(self, stream_id: str) -> int:
        return (await self.http.delete(f"{self.base_url}/v1/streams/{stream_id}")).status_code

    async def complete(self, prompt: str = "", **fields: Any) -> dict[str, Any]:
        r = await self.http.post(self.base_url + "/v1/complete", json={"prompt": prompt, **fields})
        _check(r.status_code, r.content)
        return r.json()

    # -- streaming ------------------------------------------------------------

    async def stream(self, transport: Transports, prompt: str = "", *, resume: bool = True,
                     stream_id: str | None = None, after: int = -1, **fields: Any) -> StreamResult:
        """Read a whole stream; see `events` for the arguments."""
        result = StreamResult()
        async for _ in self.events(transport, prompt, resume=resume, stream_id=stream_id, after=after,
                                   result=result, **fields):
            pass
        return result

    async def events(self, transport: Transports, prompt: str = "", *, resume: bool = True,
                     stream_id: str | None = None, after: int = -1, result: StreamResult | None = None,
                     **fields: Any) -> AsyncIterator[tuple[Event, float]]:
        """Yield (event, arrival time) until the terminal event.

        With `stream_id`, attach to that stream (after seq `after`); otherwise
        start a one-shot stream with `prompt` and `fields` (max_tokens, seed,
        sim, model). After a cut, resume from the last seq seen (at the next
        base URL, if there are several), up to `max_resumes` times, unless
        `resume` is false. Heartbeats and reconnect requests are counted, not
        yielded.

        `transport` "auto" (or a sequence) falls back down the order when the
        path refuses a transport or cuts it before any token, twice in a row
        (`gateway.fallback`), resuming the same stream on the next one;
        `result.fallbacks` records each switch.
        """
        fallback = Fallback.of(transport)
        result = result if result is not None else StreamResult()
        result.started = time.perf_counter()
        result.stream_id = stream_id
        body = {"prompt": prompt, **fields}
        result.last_seq = after
        attempt = 0
        while True:
            delay = None  # gateway/backoff.py's, unless the server names one (a `reconnect` event)
            refused = progressed = False
            result.transport = fallback.transport
            opened = time.perf_counter()
            connection = self._connect(fallback.transport, body, result.stream_id, result.last_seq, result)
            try:
                async for event, at in connection:
                    if type(event) is Reconnect:
                        result.reconnect_requests += 1
                        delay = event.retry_ms / 1000
                        break
                    if not result.take(event, at):
                        continue
                    progressed = progressed or type(event) is not Meta
                    yield event, at
                    if isinstance(event, (Done, Error)):
                        return
            except PathRefused as exc:
                if not fallback.refused():
                    raise exc.__cause__ or exc from None
                result.fallbacks.append((*fallback.switches[-1], time.perf_counter()))
                continue  # at once: nothing was streaming
            except _CUT:
                pass  # a cut, a refused or dead replica: the backoff keeps it from spinning
            except GatewayError as exc:
                # A draining or storeless replica: another one may take us.
                if exc.status != 503 or len(self.base_urls) == 1 or attempt >= self.max_resumes:
                    raise
                refused = True
            finally:
                await connection.aclose()
            if not refused:
                result.cuts.append(time.perf_counter())
            if fallback.ended(progressed, time.perf_counter() - opened):
                result.fallbacks.append((*fallback.switches[-1], time.perf_counter()))
                delay = 0.0  # a new transport: at once
            # Cut: no terminal event. Resume if we can; with transports to fall back on, a connection cut
            # before the stream's id arrived starts it again (nothing was delivered).
            unknown = result.stream_id is None and (result.events or len(fallback.order) == 1)
            if not refused and (not resume or unknown or attempt >= self.max_resumes):
                return
            attempt += 1
            result.reconnects += 1
            if delay is None:
                delay = backoff.delay(attempt)
            if self._next_base():
                delay = min(delay, 0.05 * attempt)  # another replica is there now
            if delay:
                await asyncio.sleep(delay)

    async def _connect(self, transport: Transport, body: dict, stream_id: str | None, after: int,
                       result: StreamResult) -> AsyncIterator[tuple[Event, float]]:
        if transport == "ws":
            async for item in self._ws(body, stream_id, after, result):
                yield item
            return
        if transport == "responses":
            if stream_id is None:
                request = self.http.build_request("POST", f"{self.base_url}/v1/responses", json=responses_body(body))
            else:
                request = self.http.build_request(
                    "GET", f"{self.base_url}/v1/responses/{RESPONSE_PREFIX}{stream_id}",
                    params={"stream": "true", "starting_after": after + OFFSET})
        elif stream_id is None:
            request = self.http.build_request("POST", f"{self.base_url}/v1/{transport}", json=body)
        elif transport == "sse":
            headers = {"Last-Event-ID": str(after)} if after >= 0 else {}
            request = self.http.build_request("GET", f"{self.base_url}/v1/streams/{stream_id}/sse",
                                              headers=headers)
        else:
            params = {"after": after} if after >= 0 else {}
            request = self.http.build_request("GET", f"{self.base_url}/v1/streams/{stream_id}/ndjson",
                                              params=params)
        decoder = {"sse": sse.Decoder, "responses": EventDecoder}.get(transport, ndjson.Decoder)()
        response = await self.http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                _check(response.status_code, await response.aread())
            async for chunk in response.aiter_bytes():
                at = time.perf_counter()
                result.bytes += len(chunk)
                for event in decoder.feed(chunk):
                    yield event, at
        finally:
            await response.aclose()

    async def _ws(self, body: dict, stream_id: str | None, after: int,
                  result: StreamResult) -> AsyncIterator[tuple[Event, float]]:
        try:
            sock = await ws_connect(self.ws_url + "/v1/ws", compression=None, max_size=2**24, open_timeout=10,
                                    ping_interval=None, additional_headers=self.headers)
        except websockets.InvalidStatus as exc:
            # A proxy's 403, or the gateway's 404 for a GET whose Upgrade a proxy stripped. A refusal
            # of the gateway's own (auth, limits) comes back from the next transport as a GatewayError.
            raise PathRefused(exc.response.status_code, {"title": "WebSocket upgrade refused"}) from exc
        except websockets.InvalidHandshake as exc:
            raise PathRefused(0, {"title": "WebSocket handshake failed", "detail": str(exc)}) from exc
        async with sock:
            await sock.send(ws.start(**body) if stream_id is None else ws.resume(stream_id, after))
            while True:
                # The read timeout as on the HTTP transports: a silent (half-open) connection is a cut.
                try:
                    message = await asyncio.wait_for(sock.recv(), self.read_timeout)
                except websockets.ConnectionClosedOK:
                    return
                except TimeoutError:
                    sock.transport.abort()  # dead: no closing handshake (it would wait close_timeout, 10 s)
                    raise
                at = time.perf_counter()
                result.bytes += len(message)
                event = ws.decode(message)
                if type(event) is Error and event.seq < 0:
                    # Refused: before the stream existed, or this replica cannot serve (try another).
                    status = 503 if event.code in _UNAVAILABLE else 0
                    if status or (stream_id is None and not result.events):
                        raise GatewayError(status, {"title": event.code, "detail": event.message})
                yield event, at


def responses_body(body: dict[str, Any]) -> dict[str, Any]:
    """A stream request (prompt, max_tokens, seed, sim, model) as a streamed background Responses request."""
    out = {"input": body.get("prompt", ""), "stream": True, "background": True}
    for ours, theirs in (("max_tokens", "max_output_tokens"), ("seed", "seed"), ("sim", "sim"), ("model", "model")):
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    return out


def _check(status: int, content: bytes) -> None:
    if status >= 400:
        try:
            problem = orjson.loads(content)
        except orjson.JSONDecodeError:
            problem = {"title": content[:200].decode("utf-8", "replace")}
        raise GatewayError(status, problem)
