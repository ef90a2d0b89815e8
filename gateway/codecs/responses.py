"""OpenAI Responses streaming: semantic events over SSE (`event:` equal to the JSON `type`), each with a
`sequence_number`, no SSE `id` and no `[DONE]`.

The sequence numbers are a function of the log's seq (docs/wire-contract.md), so any cursor of one
format is a cursor of every other:

    log event       Responses events                                                sequence_number
    meta  (seq 0)   response.created, response.in_progress,                         0, 1, 2, 3
                    response.output_item.added, response.content_part.added
    token (seq k)   response.output_text.delta                                      k + 3
    done  (seq t)   response.output_text.done, response.content_part.done,          t + 3 ... t + 6
                    response.output_item.done, response.completed (or .incomplete
                    when the model stopped at its token limit)
    error (seq t)   response.failed (the partial text in its output; status         t + 3
                    `cancelled` after a cancel)

`Cursor.of(starting_after)` maps a client's `starting_after` back to the log (the event to resume
after, and how many of the next event's Responses events the client already has). `ResponsesEncoder`
writes the server side; `Decoder` reads any Responses stream (an upstream such as vLLM, or this
gateway) into plain events, `ResponsesDecoder` into a sink, and `EventDecoder` this gateway's
Responses stream back into the gateway's events (the inverse mapping, for clients that resume by seq).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..events import HEARTBEAT, Done, Error, Event, Meta, Token
from ..log import KIND, EventLog
from .sse import Comment, Message, Parser
from .upstream import UpstreamDecoder

if TYPE_CHECKING:
    from ..sources.base import Sink

__all__ = ["OFFSET", "Cursor", "ResponsesEncoder", "response_object", "status_of", "Decoder", "ResponseEvent",
           "ResponsesDecoder", "EventDecoder", "RESPONSE_PREFIX", "ITEM_PREFIX", "TERMINAL"]

OFFSET = 3  # a token's sequence_number is its seq + OFFSET
RESPONSE_PREFIX, ITEM_PREFIX = "resp_", "msg_"
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_META, _TOKEN, _ERROR, _DONE = KIND["meta"], KIND["token"], KIND["error"], KIND["done"]
_EXPANDS = {_META: 4, _TOKEN: 1, _DONE: 4, _ERROR: 1}  # Responses events per log event


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a Responses client resumes: after log event `after`, minus the first `skip` Responses
    events of the next one (which the client has already)."""

    after: int
    skip: int = 0

    @staticmethod
    def of(starting_after: int, log: EventLog, running: bool) -> Cursor | None:
        """The cursor for `starting_after` (-1: from the start); None when the client has every event."""
        if starting_after < OFFSET:
            return Cursor(-1, starting_after + 1)
        seq = starting_after - OFFSET
        last = len(log) - 1
        if running or seq < last:
            return Cursor(seq)  # a token (or meta); past the end is the caller's 409
        skip = seq - last + 1  # into the terminal event's Responses events
        if skip >= _EXPANDS[log.kinds[last]]:
            return None
        return Cursor(last - 1, skip)


def status_of(kind: int | None, finish_reason: str | None, error_code: str | None) -> str:
    """A response's `status` from its log's last event kind (None: still generating)."""
    if kind == _DONE:
        return "incomplete" if finish_reason == "length" else "completed"
    if kind == _ERROR:
        return "cancelled" if error_code == "cancelled" else "failed"
    return "in_progress"


def _message(item_id: str, status: str, text: str | None) -> dict:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def response_object(stream_id: str, model: str, created_at: int, status: str, text: str | None, *,
                    tokens: int = 0, input_tokens: int = 0, error: dict | None = None,
                    echo: dict[str, Any] | None = None) -> dict:
    """The `response` object (what `GET /v1/responses/{id}` returns, and what lifecycle events carry).

    `text` None: no output item yet. `echo` holds request fields the response repeats (instructions,
    max_output_tokens, metadata, background), when known.
    """
    item_status = {"completed": "completed", "in_progress": "in_progress"}.get(status, "incomplete")
    ended = status not in ("in_progress", "queued")
    obj = {
        "id": RESPONSE_PREFIX + stream_id, "object": "response", "created_at": created_at, "status": status,
        "background": None, "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None, "max_output_tokens": None, "metadata": {}, "model": model,
        "output": [] if text is None else [_message(ITEM_PREFIX + stream_id, item_status, text)],
        "parallel_tool_calls": False, "previous_response_id": None, "store": True, "temperature": None,
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": None,
        "truncation": "disabled",
        "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": input_tokens + tokens} if ended else None,
    }
    if echo:
        obj.update(echo)
    return obj


def _frame(obj: dict) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (obj["type"].encode(), orjson.dumps(obj))


class ResponsesEncoder:
    """One connection's Responses events; everything but a token's text and number is encoded once.

    `skip` drops the first Responses events of the first event written (a resume inside an expansion).
    """

    def __init__(self, stream_id: str, model: str, created_at: int, *, input_tokens: int = 0,
                 echo: dict[str, Any] | None = None, skip: int = 0) -> None:
        self.stream_id = stream_id
        self.model = model
        self.created_at = created_at
        self.input_tokens = input_tokens
        self.echo = echo
        self.skip = skip
        self.item_id = item_id = ITEM_PREFIX + stream_id
        head = orjson.dumps({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                             "content_index": 0})[:-1]
        self._delta = b"event: response.output_text.delta\ndata: " + head + b',"sequence_number":%d,"delta":%b'
        self._delta_tail = b',"logprobs":[]}\n\n'

    def frames(self, log: EventLog, start: int, end: int) -> bytes:
        """Log events [start, end) as SSE blocks."""
        out = bytearray()
        kinds = log.kinds
        delta, tail = self._delta, self._delta_tail
        skip, self.skip = self.skip, 0
        for i in range(start, end):
            kind = kinds[i]
            if kind == _TOKEN:
                # The log holds `{"type":"token","seq":N,"text":<JSON string>}` (events.token_json).
                json = log.json(i)
                out += delta % (i + OFFSET, json[json.index(b'"text":') + 7 : -1]) + tail
            else:
                for obj in self.expand(log, i)[skip:]:
                    out += _frame(obj)
            skip = 0
        return bytes(out)

    def expand(self, log: EventLog, i: int) -> list[dict]:
        """The Responses events of log event `i` (not a token: those take the fast path)."""
        kind = log.kinds[i]
        n = i + OFFSET
        ids = {"item_id": self.item_id, "output_index": 0}
        if kind == _META:
            created = self.response("in_progress", None)
            return [
                {"type": "response.created", "sequence_number": 0, "response": created},
                {"type": "response.in_progress", "sequence_number": 1, "response": created},
                {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
                 "item": _message(self.item_id, "in_progress", None)},
                {"type": "response.content_part.added", "sequence_number": 3, **ids, "content_index": 0,
                 "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}},
            ]
        text = _text(log, i)
        end = orjson.loads(log.json(i))
        if kind == _DONE:
            status = status_of(kind, end["finish_reason"], None)
            final = self.response(status, text, end["tokens"])
            item = final["output"][0]
            return [
                {"type": "response.output_text.done", "sequence_number": n, **ids, "content_index": 0,
                 "text": text, "logprobs": []},
                {"type": "response.content_part.done", "sequence_number": n + 1, **ids, "content_index": 0,
                 "part": item["content"][0]},
                {"type": "response.output_item.done", "sequence_number": n + 2, "output_index": 0, "item": item},
                {"type": "response." + status, "sequence_number": n + 3, "response": final},
            ]
        error = {"code": end["code"], "message": end["message"], "retryable": end["retryable"]}
        final = self.response(status_of(kind, None, end["code"]), text, i - 1, error)
        return [{"type": "response.failed", "sequence_number": n, "response": final}]

    def response(self, status: str, text: str | None, tokens: int = 0, error: dict | None = None) -> dict:
        return response_object(self.stream_id, self.model, self.created_at, status, text, tokens=tokens,
                               input_tokens=self.input_tokens, error=error, echo=self.echo)


def _text(log: EventLog, end: int) -> str:
    """The text of the tokens before log event `end`."""
    kinds = log.kinds
    return "".join(orjson.loads(log.json(i))["text"] for i in range(1, end) if kinds[i] == _TOKEN)


@dataclass(frozen=True, slots=True)
class ResponseEvent:
    type: str
    sequence_number: int | None
    data: dict


class Decoder:
    """Any Responses stream's bytes in, its events out (comments and data that is not an object dropped).

    Raises `ValueError` on a payload that is not JSON.
    """

    def __init__(self) -> None:
        self.parser = Parser()

    def feed(self, data: bytes) -> list[ResponseEvent]:
        out = []
        for message in self.parser.feed(data):
            if type(message) is not Message:
                continue
            obj = orjson.loads(message.data)
            if isinstance(obj, dict):
                seq = obj.get("sequence_number")
                kind = obj.get("type")
                out.append(ResponseEvent(kind if isinstance(kind, str) else message.event,
                                         seq if type(seq) is int else None, obj))
        return out


class EventDecoder:
    """This gateway's Responses stream as the gateway's events (docs/wire-contract.md, read backwards).

    `response.created` is `meta`, a delta with sequence_number N is the token of seq N - 3, the terminal
    event is `done` (its `sha256` is that of the text `response.output_text.done` carried, so a client
    comparing it with its own deltas sees a lost or doubled delta) or `error`; comments are heartbeats;
    the other lifecycle events carry nothing new and are dropped.
    """

    def __init__(self) -> None:
        self.parser = Parser()
        self.last_token = 0
        self.sha256 = ""

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        for message in self.parser.feed(data):
            if type(message) is Comment:
                out.append(HEARTBEAT)
                continue
            obj = orjson.loads(message.data)
            kind = obj.get("type")
            if kind == "response.output_text.delta":
                self.last_token = obj["sequence_number"] - OFFSET
                out.append(Token(self.last_token, obj["delta"]))
            elif kind == "response.output_text.done":
                self.sha256 = hashlib.sha256(obj["text"].encode()).hexdigest()
            elif kind == "response.created":
                response = obj["response"]
                out.append(Meta(response["id"].removeprefix(RESPONSE_PREFIX), response["model"],
                                response["created_at"]))
            elif kind in ("response.completed", "response.incomplete"):
                response = obj["response"]
                seq = obj["sequence_number"] - OFFSET - 3  # the closing events are t + 3 ... t + 6
                out.append(Done(seq, "length" if kind == "response.incomplete" else "stop",
                                response["usage"]["output_tokens"], self.sha256))
            elif kind == "response.failed":
                error = obj["response"].get("error") or {}
                out.append(Error(obj["sequence_number"] - OFFSET, str(error.get("code") or "failed"),
                                 str(error.get("message") or ""), bool(error.get("retryable"))))
        return out


class ResponsesDecoder(UpstreamDecoder):
    """Reads a Responses stream (an upstream) into a sink: text deltas become tokens; `response.completed`
    finishes, `response.incomplete` finishes with `length`, `response.failed` and `error` fail.

    `response_id` and `last` (the last sequence_number seen) are what a resume asks with.
    """

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.decoder = Decoder()
        self.response_id: str | None = None
        self.last = -1

    def feed(self, data: bytes) -> bool:
        try:
            events = self.decoder.feed(data)
        except orjson.JSONDecodeError:
            self._end("fail", "upstream_bad_data", "the upstream sent a payload that is not JSON")
            return True
        for event in events:
            if self.ended:
                break
            if event.sequence_number is not None:
                if event.sequence_number <= self.last:
                    continue  # already had it (an upstream that resends on resume)
                self.last = event.sequence_number
            self._event(event)
        return self.ended

    def _event(self, event: ResponseEvent) -> None:
        kind, data = event.type, event.data
        if kind == "response.output_text.delta":
            text = data.get("delta")
            if isinstance(text, str) and text:
                self.sink.token(text)
        elif kind == "response.created":
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.response_id = response["id"]
        elif kind == "response.completed":
            self._end("finish", "stop")
        elif kind == "response.incomplete":
            self._end("finish", "length")
        elif kind == "response.failed" or kind == "error":
            error = data.get("error") if kind == "error" else (data.get("response") or {}).get("error")
            if kind == "error" and not isinstance(error, dict):
                error = data  # OpenAI's `error` event has code and message at the top
            error = error if isinstance(error, dict) else {}
            self._end("fail", str(error.get("code") or "upstream_error"),
                      str(error.get("message") or "the upstream response failed"), bool(error.get("retryable")))
