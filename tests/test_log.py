"""gateway/log.py without sockets: bytes kept once, batches cut by size, other formats framed by the codecs."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.codecs import ndjson, sse, ws
from gateway.events import KIND, Done, Meta, Token, from_json, to_json, token_json
from gateway.log import BLOCK, BLOCK_OVERHEAD, EventLog
from gateway.stream import SEAL_AT, TAIL, Stream


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


# -- sealed blocks: older events kept compressed, read back byte for byte ------------------------------

def sealed(n: int, upto: int, block: int = BLOCK) -> EventLog:
    log = filled(n)
    log.seal(upto, block)
    return log


@pytest.mark.parametrize("block", sorted({BLOCK, 32, 64}))
def test_every_read_from_inside_a_sealed_block_gives_the_unsealed_logs_exact_bytes(block):
    plain, log = filled(200), sealed(200, 150, block)  # blocks up to 128 (of 64: [0, 64), [64, 128)); the tail from 128
    assert log.first == 128 and list(log.bounds) == list(range(block, 129, block)) and len(log) == len(plain) == 202
    for start in (0, 1, 5, 63, 64, 65, 100, 127, 128, 150, 201):
        for end in sorted({start + 1, min(start + 3, 202), 64, 128, 129, 202} - set(range(start + 1))):
            assert log.ndjson(start, end) == plain.ndjson(start, end), (start, end)
            assert sse.frames(log, start, end) == sse.frames(plain, start, end), (start, end)
            assert ws.frames(log, start, end) == ws.frames(plain, start, end), (start, end)
            assert log.text_bytes(start, end) == plain.text_bytes(start, end)
        assert log.json(start) == plain.json(start) and log.kind(start) == plain.kind(start)
    assert log.nbytes == plain.nbytes == len(plain.lines)


def test_a_batch_from_a_sealed_block_stops_at_its_end_and_at_the_byte_limit():
    plain, log = filled(200), sealed(200, 150, 64)
    assert log.batch_end(10, 202, 10**9) == 64 and log.batch_end(64, 202, 10**9) == 128
    assert log.batch_end(128, 202, 10**9) == 202
    ten = plain.ends[20] - plain.ends[10]  # events 11..20
    assert log.batch_end(11, 202, ten) == plain.batch_end(11, 202, ten) == 21
    assert log.batch_end(11, 202, 1) == 12


def test_size_counts_what_the_log_holds_and_sealing_shrinks_it():
    plain, log = filled(200), sealed(200, 202, 0)  # all in one block, as when a stream ends
    assert log.first == 202 and not log.lines and not log.ends
    assert log.size == len(log.kinds) + sum(len(b) + BLOCK_OVERHEAD for b in log.blocks)
    assert plain.size == len(plain.lines) + 4 * len(plain.ends) + len(plain.kinds)
    assert log.size * 3 < plain.size  # token lines compress well (and nothing else is kept beside)
    assert log.ndjson(0, 202) == plain.ndjson(0, 202)
    log.append(KIND["token"], token_json(202, "more"))  # (a log goes on after a seal)
    assert log.json(202) == token_json(202, "more") and log.ndjson(200, 203) == plain.ndjson(200, 202) + log.json(202) + b"\n"


def test_a_stream_seals_only_what_every_reader_has_passed_and_all_once_it_ended_unread():
    asyncio.run(_seals_what_every_reader_passed())


async def _seals_what_every_reader_passed():
    stream = Stream("s", "sim", one_shot=False, now=0.0, on_event=lambda *a, **k: None)
    slow = stream.attach(-1, "ndjson", 0.0)
    fast = stream.attach(-1, "sse_get", 0.0)
    for i in range(SEAL_AT * 2):
        stream.token(f"t{i}")
        fast.cursor = len(stream.log)
    assert stream.log.first == 0  # `slow` has read nothing: nothing sealed
    slow.cursor = 70
    for _ in range(TAIL):  # (a stream held back by a reader tries again every TAIL tokens)
        stream.token("x")
    assert stream.log.first == 64 and len(stream.log) - 64 >= TAIL  # one block, below both cursors
    stream.detach(slow, 1.0, True)
    for _ in range(TAIL):
        stream.token("y")
        fast.cursor = len(stream.log)
    assert len(stream.log.ends) >= TAIL and len(stream.log.ends) < SEAL_AT
    stream.finish()
    assert stream.log.first < len(stream.log)  # `fast` still reads the end from the tail
    plain = [stream.log.json(i) for i in range(len(stream.log))]
    stream.detach(fast, 2.0, False)
    log = stream.log
    assert log.first == len(log) and not log.lines  # ended, unread: all sealed
    # A resume from inside a sealed block reads the exact events, to the terminal one.
    assert [log.json(i) for i in range(len(log))] == plain
    again = stream.attach(30, "ws", 3.0)
    got = []
    while again.cursor < len(log):
        end = log.batch_end(again.cursor, len(log), 1 << 20)
        got += log.ndjson(again.cursor, end).splitlines()
        again.cursor = end
    assert got == plain[31:] and from_json(got[-1]).type == "done"
