"""The tests' own wire reader (tests/wire.py): frames split anywhere, every event kept, gaps and duplicates shown."""

from __future__ import annotations

import pytest

from . import wire

SSE = (b"retry: 1000\n\n: hb\n\nid: 0\nevent: meta\ndata: {\"type\":\"meta\",\"seq\":0,\"stream_id\":\"s\"}\n\n"
       b"id: 1\r\nevent: token\r\ndata: {\"type\":\"token\",\"seq\":1,\"text\":\"a\"}\r\n\r\n"
       b"id: 1\revent: token\rdata: {\"type\":\"token\",\"seq\":1,\"text\":\"a\"}\r\r\n")


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(SSE)])
def test_sse_frames_split_anywhere_keep_every_event(size):
    frames = wire.SSEFrames()
    events = [wire.sse_event(f) for i in range(0, len(SSE), size) for f in frames.feed(SSE[i:i + size])]
    assert [e["type"] for e in events] == ["retry", "heartbeat", "meta", "token", "token"]  # the resent one too
    assert [e["seq"] for e in events if "seq" in e] == [0, 1, 1]


def test_sse_id_must_match_the_seq():
    frames = wire.SSEFrames()
    (frame,) = frames.feed(b'id: 2\nevent: token\ndata: {"type":"token","seq":3,"text":""}\n\n')
    with pytest.raises(AssertionError):
        wire.sse_event(frame)


def test_ndjson_lines_split_anywhere():
    data = b'{"type":"meta","seq":0}\n{"type":"heartbeat"}\n{"type":"token","seq":1,"text":"x"}\n'
    lines = wire.LineFrames()
    events = [e for i in range(len(data)) for e in lines.feed(data[i:i + 1])]
    assert [e["type"] for e in events] == ["meta", "heartbeat", "token"]


def test_assert_exact_shows_duplicates_and_gaps():
    ev = [{"type": "token", "seq": s} for s in (1, 2, 3)]
    wire.assert_exact(ev, 1, 3)
    with pytest.raises(AssertionError, match="1 duplicate"):
        wire.assert_exact(ev + [{"type": "token", "seq": 3}], 1, 3)
    with pytest.raises(AssertionError, match="1 gap"):
        wire.assert_exact([ev[0], ev[2]], 1, 3)
    with pytest.raises(AssertionError):
        wire.assert_exact(ev, 1, 4)  # the end is missing
