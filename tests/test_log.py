"""gateway/log.py without sockets: bytes kept once, batches cut by size, other formats framed by the codecs."""

from __future__ import annotations

import orjson

from gateway.codecs import ndjson, sse, ws
from gateway.events import KIND, Done, Meta, Token, from_json, to_json, token_json
from gateway.log import EventLog


def filled(n: int) -> EventLog:
    log = EventLog()
    log.append(KIND["meta"], to_json(Meta("s", "sim", 1.0)))
    for i in range(1, n + 1):
        log.append(KIND["token"], token_json(i, f"t{i:03d}"))
    log.append(KIND["done"], to_json(Done(n + 1, "stop", n, "h")))
    return log


def test_the_log_keeps_each_event_as_one_ndjson_line():
    log = filled(3)
    assert len(log) == 5
    lines = ndjson.frames(log, 0, 5).splitlines()
    assert [from_json(line) for line in lines] == [Meta("s", "sim", 1.0), Token(1, "t001"), Token(2, "t002"),
                                                   Token(3, "t003"), Done(4, "stop", 3, "h")]
    assert log.json(2) == token_json(2, "t002") and log.kind(4) == "done"
    assert log.size == len(log.lines) + 5 * 5


def test_sse_frames_are_the_codecs_frames_of_the_same_bytes():
    log = filled(2)
    assert sse.frames(log, 1, 3) == sse.frame(1, "token", token_json(1, "t001")) + sse.frame(2, "token", token_json(2, "t002"))
    assert sse.frames(log, 3, 4) == sse.encode(Done(3, "stop", 2, "h"))


def test_ws_texts_and_frames_carry_one_event_each():
    log = filled(2)
    assert ws.texts(log, 0, 4) == [log.json(i).decode() for i in range(4)]
    assert ws.frames(log, 1, 3) == ws.text_frame(token_json(1, "t001")) + ws.text_frame(token_json(2, "t002"))


def test_a_batch_stops_at_the_byte_limit_but_holds_one_event_at_least():
    log = filled(100)
    ten = log.ends[10] - log.ends[0]  # the bytes of events 1..10
    assert log.batch_end(1, 101, ten) == 11
    assert log.batch_end(1, 101, ten - 1) == 10
    assert log.batch_end(1, 101, 1) == 2  # a limit below one event still moves on
    assert log.batch_end(1, 101, 10**9) == 101


def test_meta_is_encoded_with_seq_first_as_the_wire_contract_shows():
    assert orjson.loads(to_json(Meta("s", "sim", 1.0))) == {"type": "meta", "seq": 0, "stream_id": "s",
                                                            "model": "sim", "created": 1.0}
    assert to_json(Meta("s", "sim", 1.0)).startswith(b'{"type":"meta","seq":0,')
