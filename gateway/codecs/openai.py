"""OpenAI chat completions streaming: `chat.completion.chunk` objects over SSE, then `data: [DONE]`.

`ChunkEncoder` is the server side: it maps a stream's log to chunks.
`ChunkDecoder` is the relay side: it reads any OpenAI-compatible upstream
(parsed by `sse.Parser`) into a sink. A mid-stream failure is a chunk with an
`error` object and no `[DONE]`: the openai SDK raises on it, and a cut stream
never looks finished.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..log import KIND, EventLog
from .sse import Message, Parser
from .upstream import UpstreamDecoder

if TYPE_CHECKING:
    from ..sources.base import Sink

__all__ = ["DONE_FRAME", "ChunkEncoder", "ChunkDecoder", "error_object", "usage"]

DONE_FRAME = b"data: [DONE]\n\n"
_META, _TOKEN, _ERROR, _DONE = KIND["meta"], KIND["token"], KIND["error"], KIND["done"]
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error"}


def error_object(status: int, message: str, code: str | None, param: str | None = None, **extra: Any) -> dict:
    """The `error` object of OpenAI's error responses and of an in-band stream error."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"message": message, "type": kind, "param": param, "code": code, **extra}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ChunkEncoder:
    """One response's chunks; everything but the token text is encoded once, up front."""

    def __init__(self, completion_id: str, model: str, created: int, *, include_usage: bool,
                 prompt_tokens: int) -> None:
        head = orjson.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                             "model": model, "system_fingerprint": None})[:-1]
        self._head = b"data: " + head + b',"choices":[{"index":0,"delta":'
        self._tail = b',"logprobs":null,"finish_reason":null}]}\n\n'
        self._token = self._head + b'{"content":'
        self._usage_head = b"data: " + head + b',"choices":[],"usage":'
        self.include_usage = include_usage
        self.prompt_tokens = prompt_tokens

    def frames(self, log: EventLog, start: int, end: int) -> bytes:
        """Log events [start, end) as SSE chunks; the terminal event ends the response."""
        out = bytearray()
        kinds = log.kinds
        for i in range(start, end):
            kind = kinds[i]
            if kind == _TOKEN:
                # The log holds `{"type":"token","seq":N,"text":<JSON string>}` (events.token_json):
                # the text is already JSON, so slice it out rather than decode and encode again.
                json = log.json(i)
                out += self._token + json[json.index(b'"text":') + 7 : -1] + b"}" + self._tail
            elif kind == _META:
                out += self._head + b'{"role":"assistant","content":""}' + self._tail
            elif kind == _DONE:
                done = orjson.loads(log.json(i))
                out += self._head + b"{}" + self._tail.replace(
                    b'"finish_reason":null', b'"finish_reason":' + orjson.dumps(done["finish_reason"]))
                if self.include_usage:
                    out += self._usage_head + orjson.dumps(usage(self.prompt_tokens, done["tokens"])) + b"}\n\n"
                out += DONE_FRAME
            elif kind == _ERROR:
                err = orjson.loads(log.json(i))
                status = 504 if err["code"] == "upstream_timeout" else 502
                obj = error_object(status, err["message"], err["code"], retryable=err["retryable"])
                out += b"data: " + orjson.dumps({"error": obj}) + b"\n\n"
        return bytes(out)


class ChunkDecoder(UpstreamDecoder):
    """Reads an OpenAI-compatible stream into a sink; `feed` returns True once the stream has ended.

    Only the first choice's `delta.content` becomes tokens (tool calls and
    reasoning deltas are not relayed). `[DONE]` finishes with the last
    `finish_reason` seen; so does the end of the body after a `finish_reason`
    (some servers omit `[DONE]`). An `error` payload fails the stream.
    """

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.parser = Parser()
        self.finish_reason: str | None = None

    def feed(self, data: bytes) -> bool:
        for message in self.parser.feed(data):
            if type(message) is Message and not self.ended:
                self._message(message.data)
        return self.ended

    def close(self) -> None:
        if not self.ended and self.finish_reason is not None:
            self._end("finish", self.finish_reason)
        super().close()

    def _message(self, data: str) -> None:
        if data == "[DONE]":
            self._end("finish", self.finish_reason or "stop")
            return
        obj = self._object(data)
        if obj is None:
            return
        error = obj.get("error")
        if error:
            if not isinstance(error, dict):
                error = {"message": str(error)}
            code = error.get("code") or error.get("type") or "upstream_error"
            message = error.get("message") or "the upstream reported an error"
            self._end("fail", str(code), str(message), bool(error.get("retryable", False)))
            return
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                self.sink.token(text)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
