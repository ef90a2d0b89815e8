"""Anthropic Messages streaming: named SSE events (`event:` equal to the JSON `type`), no sequence numbers.

    log event       Messages events
    meta            message_start (a message with empty content), content_block_start (index 0, text "")
    token           content_block_delta (`text_delta`)
    done            content_block_stop, message_delta (stop_reason, cumulative usage), message_stop
    error           error (`overloaded_error` when retrying may succeed, else `api_error`; the gateway's
                    code in `error.code`); the stream ends there, without message_stop
    heartbeat       ping

The Anthropic SDK skips events without an `event:` line and raises on `event: error`, so both are
written exactly so.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..log import KIND, EventLog

__all__ = ["MessagesEncoder", "message_object", "stop_reason", "error_type", "error_body", "PING_FRAME",
           "MESSAGE_PREFIX"]

MESSAGE_PREFIX = "msg_"
PING_FRAME = b'event: ping\ndata: {"type":"ping"}\n\n'
_META, _TOKEN, _ERROR, _DONE = KIND["meta"], KIND["token"], KIND["error"], KIND["done"]
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "invalid_request_error", 413: "request_too_large",
                 422: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error",
                 529: "overloaded_error"}


def stop_reason(finish_reason: str | None) -> str:
    return _STOP.get(finish_reason or "stop", "end_turn")


def error_type(status: int) -> str:
    """The `error.type` of an Anthropic error response with this HTTP status."""
    return _STATUS_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(kind: str, message: str, **extra: Any) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message, **extra}}


def _usage(input_tokens: int, output_tokens: int) -> dict:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def message_object(stream_id: str, model: str, text: str | None, *, finish_reason: str | None = None,
                   input_tokens: int = 0, output_tokens: int = 0) -> dict:
    """The Message (`text` None: the empty one `message_start` carries)."""
    return {"id": MESSAGE_PREFIX + stream_id, "type": "message", "role": "assistant", "model": model,
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": None if text is None else stop_reason(finish_reason), "stop_sequence": None,
            "usage": _usage(input_tokens, output_tokens)}


def _frame(kind: str, obj: dict) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps({"type": kind, **obj}))


class MessagesEncoder:
    def __init__(self, stream_id: str, model: str, *, input_tokens: int) -> None:
        self.stream_id = stream_id
        self.model = model
        self.input_tokens = input_tokens
        self._delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' \
                      b'"delta":{"type":"text_delta","text":'

    def frames(self, log: EventLog, start: int, end: int) -> bytes:
        """Log events [start, end) as SSE blocks."""
        out = bytearray()
        kinds = log.kinds
        delta = self._delta
        for i in range(start, end):
            kind = kinds[i]
            if kind == _TOKEN:
                json = log.json(i)  # {"type":"token","seq":N,"text":<JSON string>} (events.token_json)
                out += delta + json[json.index(b'"text":') + 7 : -1] + b"}}\n\n"
            elif kind == _META:
                out += _frame("message_start", {"message": message_object(
                    self.stream_id, self.model, None, input_tokens=self.input_tokens)})
                out += _frame("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            elif kind == _DONE:
                done = orjson.loads(log.json(i))
                out += _frame("content_block_stop", {"index": 0})
                out += _frame("message_delta", {
                    "delta": {"stop_reason": stop_reason(done["finish_reason"]), "stop_sequence": None},
                    "usage": {"output_tokens": done["tokens"]}})
                out += _frame("message_stop", {})
            elif kind == _ERROR:
                err = orjson.loads(log.json(i))
                kind_ = "overloaded_error" if err["retryable"] else "api_error"
                out += _frame("error", {"error": {"type": kind_, "message": err["message"], "code": err["code"]}})
        return bytes(out)
