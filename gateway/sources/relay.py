"""Relays: sources that stream a real model server's output through httpx.

`start` sends the request and waits for the upstream's response headers, so
a refusal (an HTTP error, or no connection) becomes a `PreStreamError` with a
mapped status. After that one task per stream reads the body as it arrives
(no chunk size, so nothing waits to fill a buffer) and feeds a sans-I/O
decoder that pushes into the stream. `cancel` closes the upstream response:
the upstream sees the client go, and stops generating.

Stalls need no timer here: the registry's sweep ends a silent stream with
`upstream_timeout` and cancels this generation, which closes the request.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import orjson

from ..settings import ModelSpec
from .base import PreStreamError, Sink

if TYPE_CHECKING:
    from ..models import StreamRequest

__all__ = ["Relay", "RelayGeneration", "upstream_status"]

log = logging.getLogger("gateway.relay")


class Decoder(Protocol):
    def feed(self, data: bytes) -> bool: ...
    def close(self) -> None: ...


def upstream_status(status: int) -> int:
    """The status the gateway's client gets for an upstream's refusal.

    The client's own mistakes (400, 413, 422) and load shedding (429, 503,
    504) pass through; the upstream rejecting the gateway itself (401, 403,
    404: a wrong key or model name in the settings) is a 502, as is any other
    upstream failure.
    """
    if status in (400, 413, 422, 429, 503, 504):
        return status
    return 502


class RelayGeneration:
    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task

    def cancel(self) -> None:
        # Cancelling the reader runs its `finally`, which closes the upstream connection.
        self.task.cancel()


class Relay:
    """One upstream model; subclasses say how to ask it (`body`) and how to read it (`decoder`)."""

    path = ""

    def __init__(self, name: str, spec: ModelSpec, read_timeout_s: float) -> None:
        self.name = name
        self.spec = spec
        self.upstream_model = spec.upstream_model or name
        headers = {"accept-encoding": "identity"}  # a compressed body would be buffered to decode
        if spec.api_key:
            headers["authorization"] = f"Bearer {spec.api_key}"
        self.http = httpx.AsyncClient(
            base_url=spec.base_url.rstrip("/"),
            headers=headers,
            # The read timeout covers the wait for the response headers; once
            # streaming, the registry's idle timeout fires first.
            timeout=httpx.Timeout(spec.connect_timeout_s, read=read_timeout_s + 5),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )

    def body(self, request: StreamRequest) -> dict[str, Any]:
        raise NotImplementedError

    def decoder(self, sink: Sink) -> Decoder:
        raise NotImplementedError

    def messages(self, request: StreamRequest) -> list[dict[str, Any]]:
        if request.messages is None:
            return [{"role": "user", "content": request.prompt}]
        return [m.model_dump(exclude_none=True) for m in request.messages]

    async def start(self, request: StreamRequest, sink: Sink) -> RelayGeneration:
        content = orjson.dumps(self.body(request))
        req = self.http.build_request("POST", self.path, content=content,
                                      headers={"content-type": "application/json"})
        try:
            response = await self.http.send(req, stream=True)
        except httpx.TimeoutException as exc:
            raise PreStreamError(504, f"upstream {self.name} did not answer: {type(exc).__name__}",
                                 code="upstream_timeout") from None
        except httpx.HTTPError as exc:
            raise PreStreamError(502, f"upstream {self.name} unreachable: {type(exc).__name__}: {exc}",
                                 code="upstream_unreachable") from None
        if response.status_code >= 400 or response.headers.get("content-type", "").startswith("application/json"):
            # A JSON body is no stream, whatever its status: an error, or a server that ignored `stream`.
            raise await self._refusal(response)
        decoder = self.decoder(sink)
        task = asyncio.get_running_loop().create_task(self._read(response, decoder, sink))
        return self.generation(task, decoder)

    def generation(self, task: asyncio.Task, decoder: Decoder) -> RelayGeneration:
        return RelayGeneration(task)

    async def _refusal(self, response: httpx.Response) -> PreStreamError:
        raw = b""
        try:
            async for chunk in response.aiter_bytes():
                raw += chunk
                if len(raw) > 65_536:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        detail = _error_message(raw) or response.reason_phrase
        retry = response.headers.get("retry-after")
        status = response.status_code
        if status < 400:
            return PreStreamError(502, f"upstream {self.name} answered with JSON, not a stream: {detail}",
                                  code="upstream_not_streaming")
        return PreStreamError(
            upstream_status(status), f"upstream {self.name} refused ({status}): {detail}",
            retry_after=retry_after_s(retry), code=f"upstream_{status}",
        )

    async def _read(self, response: httpx.Response, decoder: Decoder, sink: Sink) -> None:
        try:
            while True:
                failure: httpx.HTTPError | None = None
                try:
                    async for chunk in response.aiter_bytes():
                        # After the end, keep reading to the end of the body (it is due at once) so
                        # the connection goes back to the pool: a new TLS handshake would cost TTFT.
                        decoder.feed(chunk)
                        if decoder.pending > MAX_LINE_BYTES:  # no line end in sight: do not buffer it all
                            sink.fail("upstream_bad_data",
                                      f"upstream {self.name} sent a line over {MAX_LINE_BYTES} bytes")
                            return
                except httpx.HTTPError as exc:
                    failure = exc
                finally:
                    await response.aclose()
                if decoder.ended:
                    return
                if failure is not None:
                    log.info("upstream %s failed mid-stream: %r", self.name, failure)
                try:
                    resumed = await self.resume(decoder)
                except httpx.HTTPError as exc:
                    log.info("upstream %s: resuming failed: %r", self.name, exc)
                    resumed, failure = None, failure or exc
                if resumed is None:
                    if failure is None:
                        decoder.close()  # the body ended: finished, or cut (the decoder knows)
                    else:
                        sink.fail("upstream_error",
                                  f"upstream {self.name} failed mid-stream: {type(failure).__name__}", True)
                    return
                response = resumed
        except Exception:
            log.exception("relay %s: reading the upstream failed", self.name)
            sink.fail("relay_error", f"reading upstream {self.name} failed", True)

    async def resume(self, decoder: Decoder) -> httpx.Response | None:
        """The upstream's stream again, after what `decoder` has, once it was cut; None: it cannot resume."""
        return None

    async def aclose(self) -> None:
        await self.http.aclose()


MAX_LINE_BYTES = 1_048_576  # an upstream line (SSE block, NDJSON line) held back at most this long
MAX_RETRY_AFTER_S = 3600.0  # an upstream's Retry-After passed on to clients is bounded by this


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """An upstream's Retry-After (RFC 9110 10.2.3) in seconds, bounded: delay-seconds (ASCII digits)
    or an HTTP-date; anything else is ignored (None)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value[:12]) if len(value) <= 12 else MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:  # HTTP-dates are GMT; a date without a zone is not one
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, delay), MAX_RETRY_AFTER_S)


def _error_message(raw: bytes) -> str:
    """The message in an upstream's error body (OpenAI's `error.message`, Ollama's `error`)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace").strip()
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    if error:
        return str(error)[:500]
    if isinstance(obj, dict) and obj.get("detail"):
        return str(obj["detail"])[:500]
    return raw[:200].decode("utf-8", "replace")
