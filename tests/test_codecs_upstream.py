"""The model-server codecs without a socket: bytes in, sink calls out (OpenAI chunks, Ollama lines)."""

from __future__ import annotations

import json

import orjson
import pytest

from gateway.codecs import ndjson
from gateway.codecs.ollama import ChatDecoder
from gateway.codecs.openai import DONE_FRAME, ChunkDecoder, ChunkEncoder
from gateway.stream import Stream


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def token(self, text: str) -> None:
        self.calls.append(("token", text))

    def fail(self, code: str, message: str, retryable: bool = False) -> None:
        self.calls.append(("fail", code, retryable))

    def finish(self, finish_reason: str = "stop") -> None:
        self.calls.append(("finish", finish_reason))


def feed_bytewise(decoder, data: bytes) -> bool:
    ended = False
    for i in range(len(data)):
        ended = decoder.feed(data[i : i + 1]) or ended
    return ended


def chunk(content=None, finish=None, role=None) -> bytes:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    obj = {"id": "x", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"


TEXTS = ["Hel", "lo", " wörld", "\n\n", "data: [DONE]", ""]


def test_openai_chunks_split_anywhere():
    body = chunk("", role="assistant") + b"".join(chunk(t) for t in TEXTS) + chunk(finish="length")
    body += b": keep-alive comment\n\n" + b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n' + DONE_FRAME
    sink = Sink()
    assert feed_bytewise(ChunkDecoder(sink), body)
    assert sink.calls == [("token", t) for t in TEXTS if t] + [("finish", "length")]


@pytest.mark.parametrize("tail, last", [
    (b"", ("fail", "upstream_closed", True)),                # cut: no finish_reason, no [DONE]
    (chunk(finish="stop"), ("finish", "stop")),              # no [DONE], but the model finished
    (b'data: {"error": {"message": "boom", "code": "model_error"}}\n\n', ("fail", "model_error", False)),
    (b"data: {not json\n\n", ("fail", "upstream_bad_data", False)),
])
def test_openai_endings(tail, last):
    sink = Sink()
    decoder = ChunkDecoder(sink)
    decoder.feed(chunk("a") + tail)
    decoder.close()
    assert sink.calls == [("token", "a"), last]


def test_encoder_output_decodes_to_the_same_stream():
    """The chunks the gateway serves read back, through the relay's decoder, as the same tokens."""
    stream = Stream("sid", "sim", one_shot=True, now=0.0, on_event=lambda s, w: None)
    texts = ["a", ' "quoted"', "\\", "\n", "ünï", "data: x"]
    for t in texts:
        stream.token(t)
    stream.finish("length")
    body = ChunkEncoder("chatcmpl-sid", "sim", 1, include_usage=True, prompt_tokens=2).frames(
        stream.log, 0, len(stream.log))
    assert body.endswith(DONE_FRAME)
    sink = Sink()
    assert feed_bytewise(ChunkDecoder(sink), body)
    assert sink.calls == [("token", t) for t in texts] + [("finish", "length")]


def test_encoder_error_is_an_error_payload_without_done():
    stream = Stream("sid", "sim", one_shot=True, now=0.0, on_event=lambda s, w: None)
    stream.token("x")
    stream.fail("model_error", "boom", True)
    body = ChunkEncoder("c", "sim", 1, include_usage=True, prompt_tokens=1).frames(stream.log, 0, len(stream.log))
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert orjson.loads(last[len(b"data: "):])["error"]["code"] == "model_error"
    assert b"[DONE]" not in body and b'"finish_reason":"' not in body


def ollama_line(**obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_ollama_lines_split_anywhere():
    body = b"".join(ollama_line(model="m", message={"role": "assistant", "content": t}, done=False) for t in TEXTS)
    body += ollama_line(model="m", message={"role": "assistant", "content": ""}, done=True, done_reason="stop")
    sink = Sink()
    assert feed_bytewise(ChatDecoder(sink), body)
    assert sink.calls == [("token", t) for t in TEXTS if t] + [("finish", "stop")]


@pytest.mark.parametrize("tail, last", [
    (b"", ("fail", "upstream_closed", True)),
    (ollama_line(error="out of memory"), ("fail", "upstream_error", False)),
    (b'{"message": {"content": "cut mid-li', ("fail", "upstream_closed", True)),
])
def test_ollama_endings(tail, last):
    sink = Sink()
    decoder = ChatDecoder(sink)
    decoder.feed(ollama_line(message={"role": "assistant", "content": "a"}, done=False) + tail)
    decoder.close()
    assert sink.calls == [("token", "a"), last]


def test_ndjson_lines_are_the_one_splitter():
    lines = ndjson.Lines()
    assert lines.feed(b'{"a"') == [] and lines.pending == 4
    assert lines.feed(b':1}\r\n\n{"b":2}\n') == [b'{"a":1}\r', b'{"b":2}']
