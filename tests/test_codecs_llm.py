"""The Responses and Messages codecs without a socket: a log in, bytes out, and back through the decoder."""

from __future__ import annotations

import orjson
import pytest

from gateway.codecs.anthropic import MessagesEncoder
from gateway.codecs.responses import OFFSET, Cursor, Decoder, ResponsesDecoder, ResponsesEncoder
from gateway.codecs.sse import Message, Parser
from gateway.events import token_json
from gateway.log import KIND, EventLog

from .test_codecs_upstream import Sink

TEXTS = ["Hello", ",", " wor", "ld", " \u00e9\"\n"]


def log_of(texts: list[str], end: str | None) -> EventLog:
    log = EventLog()
    log.append(KIND["meta"], orjson.dumps({"type": "meta", "seq": 0, "stream_id": "s1", "model": "m", "created": 1.0}))
    for text in texts:
        log.append(KIND["token"], token_json(len(log), text))
    if end == "done":
        log.append(KIND["done"], orjson.dumps({"type": "done", "seq": len(log), "finish_reason": "stop",
                                               "tokens": len(texts), "sha256": "x"}))
    elif end == "error":
        log.append(KIND["error"], orjson.dumps({"type": "error", "seq": len(log), "code": "model_error",
                                                "message": "broke", "retryable": True}))
    return log


@pytest.mark.parametrize("end", ["done", "error"])
def test_responses_round_trip_split_anywhere(end):
    log = log_of(TEXTS, end)
    data = ResponsesEncoder("s1", "m", 1).frames(log, 0, len(log))
    events = Decoder().feed(data)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [e.sequence_number - OFFSET for e in deltas] == list(range(1, len(TEXTS) + 1))
    for size in (1, 3, 7):
        sink = Sink()
        decoder = ResponsesDecoder(sink)
        for i in range(0, len(data), size):
            decoder.feed(data[i:i + size])
        decoder.close()
        ending = ("finish", "stop") if end == "done" else ("fail", "model_error", True)
        assert sink.calls == [("token", t) for t in TEXTS] + [ending]
    assert decoder.response_id == "resp_s1" and decoder.last == events[-1].sequence_number


def test_responses_token_frames_equal_the_slow_path():
    """The pre-encoded delta is the same JSON as the event object (no re-encoding of the text)."""
    log = log_of(TEXTS, None)
    for message in Parser().feed(ResponsesEncoder("s1", "m", 1).frames(log, 1, len(log))):
        assert type(message) is Message and message.event == "response.output_text.delta"
        obj = orjson.loads(message.data)
        assert obj["delta"] == TEXTS[obj["sequence_number"] - OFFSET - 1]
        assert set(obj) == {"type", "item_id", "output_index", "content_index", "sequence_number", "delta",
                            "logprobs"}


@pytest.mark.parametrize("end", ["done", "error"])
def test_every_cursor_resumes_exactly(end):
    log = log_of(TEXTS, end)
    full = Decoder().feed(ResponsesEncoder("s1", "m", 1).frames(log, 0, len(log)))
    for n in range(-1, len(full)):
        cursor = Cursor.of(n, log, running=False)
        if n == len(full) - 1:
            assert cursor is None
            continue
        rest = Decoder().feed(ResponsesEncoder("s1", "m", 1, skip=cursor.skip).frames(log, cursor.after + 1, len(log)))
        assert [e.data for e in rest] == [e.data for e in full[n + 1:]], n


def test_running_cursor_is_the_log_seq():
    log = log_of(TEXTS, None)
    assert Cursor.of(-1, log, True) == Cursor(-1, 0)
    assert Cursor.of(1, log, True) == Cursor(-1, 2)
    assert Cursor.of(3, log, True) == Cursor(0, 0)
    assert Cursor.of(5 + OFFSET, log, True) == Cursor(5, 0)


def test_messages_frames():
    log = log_of(TEXTS, "done")
    blocks = Parser().feed(MessagesEncoder("s1", "m", input_tokens=2).frames(log, 0, len(log)))
    kinds = [b.event for b in blocks]
    assert kinds == (["message_start", "content_block_start"] + ["content_block_delta"] * len(TEXTS)
                     + ["content_block_stop", "message_delta", "message_stop"])
    objs = [orjson.loads(b.data) for b in blocks]
    assert all(o["type"] == k for o, k in zip(objs, kinds))
    assert "".join(o["delta"]["text"] for o in objs if o["type"] == "content_block_delta") == "".join(TEXTS)
    assert objs[-2]["delta"]["stop_reason"] == "end_turn" and objs[-2]["usage"]["output_tokens"] == len(TEXTS)
    failed = Parser().feed(MessagesEncoder("s1", "m", input_tokens=2).frames(log_of(TEXTS, "error"), 6, 7))
    assert [b.event for b in failed] == ["error"]
    assert orjson.loads(failed[0].data)["error"] == {"type": "overloaded_error", "message": "broke",
                                                      "code": "model_error"}


@pytest.mark.parametrize("end", ["done", "error"])
def test_event_decoder_inverts_the_encoder(end):
    """Responses bytes back to the gateway's events: the same seqs, text and ending as the log."""
    import hashlib

    from gateway.codecs.responses import EventDecoder
    from gateway.events import Done, Error, Meta, Token

    log = log_of(TEXTS, end)
    data = ResponsesEncoder("s1", "m", 1).frames(log, 0, len(log)) + b": hb\n\n"
    decoder = EventDecoder()
    events = [e for i in range(len(data)) for e in decoder.feed(data[i:i + 1])]
    assert events[0] == Meta("s1", "m", 1)
    assert events[1:1 + len(TEXTS)] == [Token(i + 1, t) for i, t in enumerate(TEXTS)]
    final = events[1 + len(TEXTS)]
    if end == "done":
        assert final == Done(len(TEXTS) + 1, "stop", len(TEXTS), hashlib.sha256("".join(TEXTS).encode()).hexdigest())
    else:
        assert final == Error(len(TEXTS) + 1, "model_error", "broke", True)
    assert events[-1].type == "heartbeat"
