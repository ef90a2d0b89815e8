"""Codecs without sockets: bytes in, events out, for any text and any split."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import ndjson, sse, ws
from gateway.events import HEARTBEAT, DecodeError, Done, Error, Meta, Reconnect, Token, from_json, to_json

texts = st.text()  # any unicode: newlines, CR, U+2028, NUL, astral, empty
events = st.one_of(
    st.builds(Meta, stream_id=st.text(min_size=1), model=st.text(), created=st.floats(0, 2e9)),
    st.builds(Token, seq=st.integers(0, 2**31), text=texts),
    st.builds(Error, seq=st.integers(0, 2**31), code=st.text(), message=texts, retryable=st.booleans()),
    st.builds(Done, seq=st.integers(0, 2**31), finish_reason=st.text(), tokens=st.integers(0, 10**6),
              sha256=st.text()),
    st.just(HEARTBEAT),
    st.builds(Reconnect, retry_ms=st.integers(0, 10**6)),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@settings(max_examples=300)
@given(st.lists(events, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
def test_sse_roundtrip_any_split(evs, cuts):
    data = sse.retry(1000) + b"".join(sse.encode(e) for e in evs)
    decoder = sse.Decoder()
    out = [e for chunk in split(data, cuts) for e in decoder.feed(chunk)]
    assert out == evs
    reconnects = [e.retry_ms for e in evs if type(e) is Reconnect]
    assert decoder.retry == (reconnects[-1] if reconnects else 1000)


@settings(max_examples=300)
@given(st.lists(events, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
def test_ndjson_roundtrip_any_split(evs, cuts):
    data = b"".join(ndjson.encode(e) for e in evs)
    decoder = ndjson.Decoder()
    out = [e for chunk in split(data, cuts) for e in decoder.feed(chunk)]
    assert out == evs
    decoder.close()


@given(events)
def test_ws_roundtrip(event):
    assert ws.decode(ws.encode(event)) == event


@given(events)
def test_json_roundtrip(event):
    if event is not HEARTBEAT:
        assert from_json(to_json(event)) == event


def test_reconnect_is_a_control_event_on_every_codec():
    event = Reconnect(1500)
    assert ndjson.encode(event) == b'{"type":"reconnect","retry_ms":1500}\n'
    assert ws.decode(ws.encode(event)) == event
    frame = sse.encode(event)
    assert frame.startswith(b"retry: 1500\nevent: reconnect\ndata: ") and b"id:" not in frame
    decoder = sse.Decoder()
    decoder.feed(sse.encode(Token(4, "x")))
    assert decoder.feed(frame) == [event]
    assert decoder.last_event_id == "4" and decoder.retry == 1500  # the resume point stays put


def test_sse_ids_follow_seq():
    frame = sse.encode(Token(7, "a\nb"))
    assert frame.startswith(b"id: 7\nevent: token\ndata: {")
    assert frame.count(b"\n") == 4  # the newline in the text is escaped inside JSON


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_sse_parser_line_endings_and_fields(eol):
    raw = eol.join([b"\xef\xbb\xbf: hello", b"retry: 250", b"id: 4", b"event: x", b"data: a", b"data:b",
                    b"", b"data: c", b"id", b"", b"retry: nope", b"data", b"", b""])
    parser = sse.Parser()
    items = [i for b in raw for i in parser.feed(bytes([b]))]  # one byte at a time
    items += parser.feed(b"\n")  # a CR at the end waits to see whether an LF follows
    assert items == [sse.Comment("hello"), sse.Message("a\nb", "x", "4"), sse.Message("c", "message", ""),
                     sse.Message("", "message", "")]
    assert parser.retry == 250


def test_sse_ignores_id_with_nul_and_blocks_without_data():
    parser = sse.Parser()
    assert parser.feed(b"id: 1\n\nid: a\0b\nevent: e\n\n") == []
    assert parser.last_event_id == "1"


def test_sse_holds_back_a_partial_block():
    parser = sse.Parser()
    assert parser.feed(b"data: x\n") == []
    assert parser.pending > 0
    assert parser.feed(b"\n") == [sse.Message("x")]


def test_decoders_reject_malformed():
    with pytest.raises(DecodeError):
        ndjson.Decoder().feed(b"{not json}\n")
    with pytest.raises(DecodeError):
        sse.Decoder().feed(b'data: {"type":"token","seq":true,"text":"x"}\n\n')
    with pytest.raises(DecodeError):
        from_json(b'{"type":"nope"}')
    with pytest.raises(DecodeError):
        from_json(b"[1]")
    decoder = ndjson.Decoder()
    decoder.feed(b'{"type":"heartbeat"}\n{"type"')
    with pytest.raises(DecodeError):
        decoder.close()


@settings(max_examples=300)
@given(st.one_of(st.text(), st.binary()))
def test_ws_control_parser_never_crashes(message):
    try:
        control = ws.parse_control(message)
    except ws.ControlError as exc:
        assert exc.close_code in (ws.CLOSE_UNSUPPORTED, ws.CLOSE_POLICY)
    else:
        assert isinstance(control, (ws.Start, ws.Cancel, ws.Resume))


def test_ws_control_messages():
    assert ws.parse_control(ws.start(prompt="p", max_tokens=3)) == ws.Start({"prompt": "p", "max_tokens": 3})
    assert ws.parse_control(ws.cancel()) == ws.Cancel()
    assert ws.parse_control(ws.resume("abc", 4)) == ws.Resume("abc", 4)
    for bad, code in [("nope", 1003), (b"{}", 1003), ("[]", 1008), ('{"type":"x"}', 1008),
                      ('{"type":"resume"}', 1008), ('{"type":"resume","stream_id":"a","after":-2}', 1008),
                      ('{"type":"cancel","x":1}', 1008)]:
        with pytest.raises(ws.ControlError) as info:
            ws.parse_control(bad)
        assert info.value.close_code == code


# -- fuzz: whatever arrives, a decoder yields events or raises DecodeError, nothing else ----------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Objects that look like events: a known type and fields of any JSON type.
event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["meta", "token", "heartbeat", "error", "done", "other"])},
    optional={k: json_values for k in ("seq", "text", "stream_id", "model", "created", "code", "message",
                                        "retryable", "finish_reason", "tokens", "sha256")},
)
# Byte soup with SSE/NDJSON structure in it, so the fuzz reaches past the first line.
wire_bytes = st.lists(st.sampled_from([b"data: ", b"id: ", b"event: ", b"retry: ", b":", b"\n", b"\r", b"\r\n",
                                       b'{"type":"token","seq":1,"text":"x"}', b"\xff", b"\x00", b"{"]) | st.binary(),
                      max_size=30).map(b"".join)


@settings(max_examples=300)
@given(wire_bytes, st.lists(st.integers(0, 10**4), max_size=8))
def test_sse_decoder_fuzz(data, cuts):
    parser, decoder = sse.Parser(), sse.Decoder()
    items = [i for chunk in split(data, cuts) for i in parser.feed(chunk)]
    assert all(isinstance(i, (sse.Message, sse.Comment)) for i in items)
    try:
        for chunk in split(data, cuts):
            decoder.feed(chunk)
    except DecodeError:
        pass


@settings(max_examples=300)
@given(wire_bytes, st.lists(st.integers(0, 10**4), max_size=8))
def test_ndjson_decoder_fuzz(data, cuts):
    decoder = ndjson.Decoder()
    try:
        for chunk in split(data, cuts):
            for event in decoder.feed(chunk):
                assert event is HEARTBEAT or isinstance(event, (Meta, Token, Error, Done))
        decoder.close()
    except DecodeError:
        pass


@settings(max_examples=500)
@given(st.one_of(event_like, json_values))
def test_event_json_fuzz(obj):
    raw = json.dumps(obj)
    for decode in (from_json, ws.decode):
        try:
            event = decode(raw)
        except DecodeError:
            continue
        # What decodes re-encodes to an equal event: nothing half-valid slips through.
        assert event is HEARTBEAT or from_json(to_json(event)) == event


@settings(max_examples=500)
@given(st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["start", "cancel", "resume", "nope"])},
                          optional={k: json_values for k in ("stream_id", "after", "prompt", "max_tokens", "sim")}),
    json_values,
))
def test_ws_control_fuzz(obj):
    try:
        control = ws.parse_control(json.dumps(obj))
    except ws.ControlError as exc:
        assert exc.close_code in (ws.CLOSE_UNSUPPORTED, ws.CLOSE_POLICY)
        return
    if isinstance(control, ws.Resume):
        assert isinstance(control.stream_id, str) and control.stream_id and control.after >= -1
    elif isinstance(control, ws.Start):
        assert isinstance(control.request, dict) and "type" not in control.request
    else:
        assert control == ws.Cancel()


@given(st.binary(max_size=70_000))
@settings(max_examples=60, deadline=None)
def test_ws_text_frame_is_what_the_websocket_library_writes(payload):
    from websockets.frames import Frame, Opcode

    assert ws.text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


@given(st.lists(st.text(max_size=300), min_size=1, max_size=20))
def test_log_ws_frames_are_one_frame_per_event(texts):
    from websockets.frames import Frame, Opcode

    from gateway.events import token_json
    from gateway.log import KIND, EventLog

    log = EventLog()
    for i, text in enumerate(texts):
        log.append(KIND["token"], token_json(i, text))
    expected = b"".join(Frame(Opcode.TEXT, token_json(i, t)).serialize(mask=False, extensions=[])
                        for i, t in enumerate(texts))
    assert ws.frames(log, 0, len(texts)) == expected
