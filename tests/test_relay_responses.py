"""Relays and the two LLM formats: an upstream that speaks Responses is relayed with resume, and every
source (simulated, Chat Completions, Ollama, Responses) is served as Responses and as Messages.

`FakeResponses` is a small real HTTP server in this file speaking OpenAI's Responses streaming as
documented (https://platform.openai.com/docs/api-reference/responses-streaming): background responses,
`GET /v1/responses/{id}?stream=true&starting_after=N`, `POST /v1/responses/{id}/cancel`. Its faults: a
prompt with "reset" has the first connection of a response cut mid-body, "always" cuts every connection
(a resumed one before its first delta),
"fail" ends with `response.failed`. Gateway A (a second gateway) is a Responses and chat upstream too.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from urllib.parse import parse_qs, urlparse

import anthropic
import openai
import pytest

from gateway.sources.simulated import expected_text

from .conftest import FAST
from .support import HttpServer, QuietHandler, gateway, ollama_fragments

FAST_SIM = {"ttft_ms": 30, "itl_ms": 5, "jitter": 0.2}
CUT_AT = 7  # deltas a "reset" connection carries before the cut


def fake_words(prompt: str, n: int) -> list[str]:
    words = prompt.split() or ["empty"]
    return [f" {words[i % len(words)]}{i}" for i in range(n)]


class FakeResponses(HttpServer):
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, query)
        self.cancelled: list[str] = []
        self.events: dict[str, list[dict]] = {}
        self.connections: dict[str, int] = {}
        fake = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                url = urlparse(self.path)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                fake.requests.append(("POST", url.path, body))
                if url.path.endswith("/cancel"):
                    rid = url.path.split("/")[-2]
                    fake.cancelled.append(rid)
                    self.send_json(200, {"id": rid, "object": "response", "status": "cancelled", "output": []})
                    return
                assert body["background"] is True and body["stream"] is True and body["store"] is True
                prompt = body["input"][-1]["content"]
                rid = f"resp_fake{len(fake.events)}"
                fake.events[rid] = events = fake.build(rid, prompt, body["max_output_tokens"])
                self._stream(rid, events, prompt)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append(("GET", url.path, query))
                rid = url.path.split("/")[-1]
                if rid not in fake.events or query.get("stream") != "true":
                    self.send_json(404, {"error": {"message": f"no response {rid}", "type": "invalid_request_error"}})
                    return
                after = int(query.get("starting_after", "-1"))
                events = fake.events[rid]
                prompt = events[0]["prompt"]
                self._stream(rid, [e for e in events if e["sequence_number"] > after], prompt)

            def _stream(self, rid: str, events: list[dict], prompt: str) -> None:
                fake.connections[rid] = n = fake.connections.get(rid, 0) + 1
                cut = "always" in prompt or ("reset" in prompt and n == 1)
                cut_at = CUT_AT if n == 1 else 0  # "always": a resumed connection brings nothing
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                deltas = 0
                for event in events:
                    if cut and event["type"] == "response.output_text.delta":
                        if deltas == cut_at:
                            self.wfile.write(b"40\r\nevent: response.output_te")  # half a chunk, then a reset
                            self.wfile.flush()
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            self.close_connection = True
                            return
                        deltas += 1
                    public = {k: v for k, v in event.items() if k != "prompt"}
                    block = f"event: {event['type']}\ndata: {json.dumps(public)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                    self.wfile.flush()
                    time.sleep(0.003)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        super().__init__(Handler)

    @staticmethod
    def build(rid: str, prompt: str, n: int) -> list[dict]:
        """The whole event list of one response, as OpenAI sends it (item ids, output and content indexes)."""
        response = {"id": rid, "object": "response", "status": "in_progress", "output": []}
        words = fake_words(prompt, n)
        failing = "fail" in prompt
        events = [{"type": "response.created", "response": response}, {"type": "response.in_progress",
                                                                         "response": response},
                  {"type": "response.output_item.added", "output_index": 0,
                   "item": {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress",
                            "content": []}},
                  {"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
                   "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}]
        for i, word in enumerate(words):
            if failing and i == 3:
                events.append({"type": "response.failed", "response": {
                    **response, "status": "failed", "error": {"code": "server_error", "message": "the model broke"}}})
                break
            events.append({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                           "content_index": 0, "delta": word})
        else:
            events.append({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
                           "content_index": 0, "text": "".join(words)})
            events.append({"type": "response.completed", "response": {**response, "status": "completed"}})
        for seq, event in enumerate(events):
            event["sequence_number"] = seq
            event["prompt"] = prompt
        return events



@pytest.fixture(scope="module")
def fake():
    server = FakeResponses()
    yield server
    server.close()


@pytest.fixture(scope="module")
def relay(fake, ollama, upstream):
    models = {
        "fake": {"kind": "responses", "base_url": fake.url + "/v1", "upstream_model": "gpt-fake"},
        "a-responses": {"kind": "responses", "base_url": upstream.url + "/v1", "upstream_model": "sim"},
        "a-chat": {"kind": "openai", "base_url": upstream.url + "/v1", "upstream_model": "sim"},
        "ollama": {"kind": "ollama", "base_url": ollama.url, "upstream_model": "llama3.2"},
    }
    with gateway({**FAST, "GATEWAY_MODELS": json.dumps(models), "GATEWAY_TTL_S": "30"}) as b:
        yield b


def responses_text(b, model: str, prompt: str, n: int, **extra) -> tuple[str, list]:
    with openai.OpenAI(base_url=b.url + "/v1", api_key="unused", max_retries=0) as client:
        events = list(client.responses.create(model=model, input=prompt, max_output_tokens=n, stream=True,
                                              background=True, extra_body=extra or None))
    return "".join(e.delta for e in events if e.type == "response.output_text.delta"), events


def messages_text(b, model: str, prompt: str, n: int, **extra) -> str:
    with anthropic.Anthropic(base_url=b.url, api_key="unused", max_retries=0) as client:
        with client.messages.stream(model=model, max_tokens=n, messages=[{"role": "user", "content": prompt}],
                                    extra_body=extra or None) as s:
            return "".join(s.text_stream)


def test_a_cut_upstream_is_resumed_with_no_gap_or_duplicate(relay, fake):
    prompt, n = "reset words", 30
    text, events = responses_text(relay, "fake", prompt, n)
    assert text == "".join(fake_words(prompt, n)) and events[-1].type == "response.completed"
    rid = next(r for r in fake.events if fake.events[r][0]["prompt"] == prompt)
    gets = [q for method, path, q in fake.requests if method == "GET" and path.endswith(rid)]
    # Cut after the lifecycle events and CUT_AT deltas: resumed after the last whole event.
    assert gets == [{"stream": "true", "starting_after": str(4 + CUT_AT - 1)}]
    assert fake.connections[rid] == 2


def test_an_upstream_cut_for_good_is_a_failure_with_the_partial_text(relay, fake):
    prompt, n = "always cut", 30
    text, events = responses_text(relay, "fake", prompt, n)
    final = events[-1]
    assert final.type == "response.failed" and final.response.error.code == "upstream_error"
    assert text == "".join(fake_words(prompt, n)[:CUT_AT])  # the connection after the first brings nothing new
    assert "response.completed" not in {e.type for e in events}
    with pytest.raises(anthropic.APIStatusError) as info:
        messages_text(relay, "fake", prompt, n)
    assert info.value.body["error"]["code"] == "upstream_error"


def test_an_upstream_failure_stays_a_failure(relay):
    prompt = "fail soon"
    text, events = responses_text(relay, "fake", prompt, 20)
    assert events[-1].type == "response.failed" and events[-1].response.error.code == "server_error"
    assert text == "".join(fake_words(prompt, 3))


def test_cancel_reaches_the_upstream(relay, fake):
    with openai.OpenAI(base_url=relay.url + "/v1", api_key="unused", max_retries=0) as client:
        before = len(fake.cancelled)
        stream = client.responses.create(model="fake", input="cancel me", max_output_tokens=5000, stream=True,
                                         background=True)
        for event in stream:
            if event.type == "response.output_text.delta":
                client.responses.cancel(event.item_id.replace("msg_", "resp_"))
                break
        stream.close()
    deadline = time.monotonic() + 10
    while len(fake.cancelled) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fake.cancelled) == before + 1 and fake.cancelled[-1].startswith("resp_fake")


@pytest.mark.parametrize("model", ["sim", "a-responses", "a-chat", "ollama", "fake"])
def test_every_source_as_responses_and_messages(relay, model):
    prompt, n = "every source", 24
    if model == "ollama":
        expected = "".join(ollama_fragments(prompt, n))
    elif model == "fake":
        expected = "".join(fake_words(prompt, n))
    else:
        expected = expected_text(prompt, 3, n)
    extra = {"seed": 3, "sim": FAST_SIM}
    text, events = responses_text(relay, model, prompt, n, **extra)
    # The fake Ollama stops with done_reason "length": the token limit, which Responses calls incomplete.
    ending = "response.incomplete" if model == "ollama" else "response.completed"
    assert text == expected and events[-1].type == ending
    assert messages_text(relay, model, prompt, n, **extra) == expected
