"""A Python client for the gateway: any transport, automatic resume, per-event arrival times.

    async with Client("http://127.0.0.1:8000") as client:
        result = await client.stream("sse_post", prompt="hi", max_tokens=50)
        print(result.text, result.ttft)

Transports are named in `gateway.names` (sse_get, sse_post, ndjson, ws,
responses); "sse", the earlier name of sse_post, is still accepted.
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
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import connect as ws_connect

from .codecs import ndjson, sse, ws
from .codecs.responses import OFFSET, RESPONSE_PREFIX, EventDecoder
from .events import Event
from .names import FORMAT, OWN, Transport, parse
from .resume import CLOSE, LAST, SKIP, STOP, GatewayError, PathRefused, Resume, StreamResult

__all__ = ["Client", "StreamResult", "GatewayError", "PathRefused", "Transport", "Transports", "TRANSPORTS",
           "responses_body"]

# The gateway's own transports that start a stream in one request (sse_get creates it first, as EventSource
# does); "responses" is OpenAI's
TRANSPORTS: tuple[str, ...] = tuple(t.value for t in OWN if t is not Transport.SSE_GET)
# Responses API: a streamed background response, resumed with starting_after = seq + 3.
# "auto": WebSocket, falling back to SSE over fetch, then NDJSON, where a path refuses or kills one.
Transports = Transport | str | Sequence[Transport | str]
_CUT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout, httpx.ConnectError,
        websockets.ConnectionClosed, OSError)


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
        result = result if result is not None else StreamResult()
        result.started = time.perf_counter()
        result.stream_id = stream_id
        result.last_seq = after
        body = {"prompt": prompt, **fields}
        # Plain strings from here on (they key results and reports as they are printed).
        transport = transport if transport == "auto" else parse(transport).value if isinstance(transport, str) \
            else tuple(parse(t).value for t in transport)
        machine = Resume(result, transport=transport, resume=resume, max_resumes=self.max_resumes,
                         urls=len(self.base_urls))
        while True:
            machine.opened(time.perf_counter())
            self._at = machine.url
            connection = self._connect(machine.transport, body, result.stream_id, machine.after, result)
            try:
                async for event, at in connection:
                    action = machine.event(event, at)
                    if action is SKIP:
                        continue
                    if action is CLOSE:
                        break
                    yield event, at
                    if action is LAST:
                        return
                step = machine.cut(time.perf_counter())
            except PathRefused as exc:
                try:
                    step = machine.path_refused(exc)
                except PathRefused:
                    raise exc.__cause__ or exc from None  # the library's own error, as without fallback
            except GatewayError as exc:
                step = machine.refused(exc)  # a draining or storeless replica: later, or another one
            except _CUT:
                step = machine.cut(time.perf_counter())  # a drop, a dead replica: the backoff keeps it from spinning
            finally:
                await connection.aclose()
            if step is STOP:
                return
            if step.delay:
                await asyncio.sleep(step.delay)

    async def _connect(self, transport: Transport, body: dict, stream_id: str | None, after: int,
                       result: StreamResult) -> AsyncIterator[tuple[Event, float]]:
        if transport == Transport.WS:
            async for item in self._ws(body, stream_id, after, result):
                yield item
            return
        if stream_id is None and transport == Transport.SSE_GET:  # as EventSource: create, then attach
            result.stream_id = stream_id = (await self.create(**body))["id"]
        fmt = FORMAT[transport]
        if transport == Transport.RESPONSES:
            if stream_id is None:
                request = self.http.build_request("POST", f"{self.base_url}/v1/responses", json=responses_body(body))
            else:
                request = self.http.build_request(
                    "GET", f"{self.base_url}/v1/responses/{RESPONSE_PREFIX}{stream_id}",
                    params={"stream": "true", "starting_after": after + OFFSET})
        elif stream_id is None:
            request = self.http.build_request("POST", f"{self.base_url}/v1/{fmt}", json=body)
        elif fmt == "sse":
            headers = {"Last-Event-ID": str(after)} if after >= 0 else {}
            request = self.http.build_request("GET", f"{self.base_url}/v1/streams/{stream_id}/sse",
                                              headers=headers)
        else:
            params = {"after": after} if after >= 0 else {}
            request = self.http.build_request("GET", f"{self.base_url}/v1/streams/{stream_id}/ndjson",
                                              params=params)
        decoder = {"sse": sse.Decoder, "responses": EventDecoder}.get(fmt, ndjson.Decoder)()
        response = await self.http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                _check(response.status_code, await response.aread(), response.headers.get("retry-after"))
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
                yield ws.decode(message), at  # an error about the connection (seq -1): the machine raises


def responses_body(body: dict[str, Any]) -> dict[str, Any]:
    """A stream request (prompt, max_tokens, seed, sim, model) as a streamed background Responses request."""
    out = {"input": body.get("prompt", ""), "stream": True, "background": True}
    for ours, theirs in (("max_tokens", "max_output_tokens"), ("seed", "seed"), ("sim", "sim"), ("model", "model")):
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    return out


def _check(status: int, content: bytes, retry_after: str | None = None) -> None:
    if status >= 400:
        try:
            problem = orjson.loads(content)
        except orjson.JSONDecodeError:
            problem = {"title": content[:200].decode("utf-8", "replace")}
        try:
            seconds = float(retry_after) if retry_after is not None else None
        except ValueError:  # an HTTP date: not worth parsing for a retry
            seconds = None
        raise GatewayError(status, problem, seconds)
