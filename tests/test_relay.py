"""Relay sources against real upstreams: a second gateway as the OpenAI-compatible upstream, and an
Ollama-format server.

Gateway B relays gateway A's `/v1/chat/completions` (model `relay`), so every transport on B must give
A's simulated text exactly, and A's metrics show what B did to the upstream request.

Ollama itself cannot run here (no model weights, no accelerator, no network beyond loopback), so
`FakeOllama` (tests/support.py) is a small real HTTP server that speaks Ollama's documented `/api/chat`
streaming format (https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion):
chunked `application/x-ndjson`, one `{"model", "created_at", "message": {"role", "content"}, "done": false}`
line per fragment, a last line with `"done": true` and `done_reason`, `{"error": ...}` for a failure.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
import time

import httpx
import openai
import psutil
import pytest

from gateway.client import Client
from gateway.sources.simulated import expected_text

from . import wire
from .conftest import FAST
from .support import Gateway, free_port, gateway, ollama_fragments, run

FAST_SIM = {"ttft_ms": 30, "itl_ms": 5, "jitter": 0.2}
OLLAMA_KEY = "ollama-secret"




@pytest.fixture(scope="module")
def relay(upstream, ollama):
    """Gateway B, relaying A, the fake Ollama, an upstream that a test starts and kills, and nothing."""
    doomed_port = free_port()
    models = {
        "relay": {"kind": "openai", "base_url": upstream.url + "/v1", "upstream_model": "sim", "api_key": "k"},
        # The same upstream asked with `max_completion_tokens`, which A's endpoint reads too.
        "relay-mct": {"kind": "openai", "base_url": upstream.url + "/v1", "upstream_model": "sim",
                      "max_tokens_field": "max_completion_tokens"},
        "ollama": {"kind": "ollama", "base_url": ollama.url, "upstream_model": "llama3.2", "api_key": OLLAMA_KEY},
        "ollama-missing": {"kind": "ollama", "base_url": ollama.url, "upstream_model": "missing"},
        "ollama-json": {"kind": "ollama", "base_url": ollama.url, "upstream_model": "json-only"},
        "doomed": {"kind": "openai", "base_url": f"http://127.0.0.1:{doomed_port}/v1", "upstream_model": "sim"},
        "nowhere": {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
    }
    with gateway({**FAST, "GATEWAY_MODELS": json.dumps(models)}) as b:
        b.doomed_port = doomed_port
        yield b


def cancelled(gw, reason: str = "client_gone") -> float:
    return gw.metrics().get(f'gateway_streams_cancelled_total{{reason="{reason}"}}', 0.0)


def wait_for(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


async def read(b, transport: str, model: str, prompt: str, max_tokens: int, seed: int = 0,
               sim: dict | None = None) -> tuple[str, str]:
    """(text, finish_reason or error code) of one generation on B, over `transport`."""
    fields = {"model": model, "max_tokens": max_tokens, "seed": seed}
    if sim:
        fields["sim"] = sim
    if transport in ("sse", "ndjson", "ws"):
        async with Client(b.url) as client:
            r = await client.stream(transport, prompt, **fields)
        return r.text, r.done.finish_reason if r.done else r.error.code
    if transport == "complete":
        async with Client(b.url) as client:
            r = await client.complete(prompt, **fields)
        return r["text"], r["finish_reason"]
    messages = [{"role": "user", "content": prompt}]
    extra = {"sim": sim} if sim else None
    async with openai.AsyncOpenAI(base_url=b.url + "/v1", api_key="unused", max_retries=0) as client:
        if transport == "chat":
            r = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                     seed=seed, extra_body=extra)
            return r.choices[0].message.content, r.choices[0].finish_reason
        stream = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                      seed=seed, stream=True, extra_body=extra)
        text, finish = [], None
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        return "".join(text), finish


TRANSPORTS = ("sse", "ndjson", "ws", "complete", "chat", "chat-stream")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openai_relay_gives_the_upstreams_exact_text(relay, transport):
    model = "relay-mct" if transport == "ndjson" else "relay"
    text, finish = run(read(relay, transport, model, "relay me", 60, seed=21, sim=FAST_SIM))
    assert text == expected_text("relay me", 21, 60)
    assert finish == "stop"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ollama_relay_gives_the_upstreams_exact_text(relay, ollama, transport):
    prompt = f"ollama over {transport}"
    text, finish = run(read(relay, transport, "ollama", prompt, 25, seed=5))
    assert text == "".join(ollama_fragments(prompt, 25))
    assert finish == "length"
    headers, body = ollama.requests[-1]
    assert body["model"] == "llama3.2" and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": prompt}]
    assert body["options"] == {"num_predict": 25, "seed": 5}
    assert headers["authorization"] == f"Bearer {OLLAMA_KEY}"


@pytest.mark.parametrize("transport", ["sse", "ndjson", "ws"])
def test_drop_and_resume_over_a_relay(relay, transport):
    # drop_after cuts B's connection to its client (it is not forwarded); the client resumes from B's log.
    body = {"prompt": "drop", "model": "relay", "max_tokens": 40, "seed": 6, "sim": {**FAST_SIM, "drop_after": 11}}

    async def main():
        cut = await wire.read(relay.url, transport, body=body)
        rest = await wire.read(relay.url, transport, stream_id=cut.meta["stream_id"], after=cut.seqs[-1])
        return cut, rest

    cut, rest = run(main())
    assert cut.ended == "closed" and len(cut.tokens) == 11 and rest.ended == "terminal"
    wire.assert_exact(cut.events + rest.events, 0, 41)
    assert wire.text_of(cut.events + rest.events) == expected_text("drop", 6, 40)


def test_relayed_tokens_arrive_incrementally(relay):
    async def main():
        async with Client(relay.url) as client:
            return await client.stream("sse", "pace", model="relay", max_tokens=40, seed=1,
                                       sim={"ttft_ms": 50, "itl_ms": 20, "jitter": 0})

    r = run(main())
    arrivals = r.token_arrivals
    assert r.text == expected_text("pace", 1, 40)
    spread = arrivals[-1] - arrivals[0]  # ~39 * 20 ms if B forwards each token as A sends it
    assert spread > 0.4
    assert arrivals[0] - r.started < spread / 2
    assert len({round(t, 3) for t in arrivals}) > 25


def test_finished_upstream_connections_are_reused(relay, upstream):
    """B keeps finished upstream connections, so the next stream skips the connect (and TLS) step."""
    def to_a() -> set[int]:
        return {c.laddr.port for c in psutil.Process(relay.proc.pid).net_connections("tcp")
                if c.raddr and c.raddr.port == upstream.port and c.status == "ESTABLISHED"}

    async def main():
        async with Client(relay.url) as client:
            for i in range(4):
                r = await client.stream("ndjson", "reuse", model="relay", max_tokens=5, seed=i, sim=FAST_SIM)
                assert r.done is not None
                ports.append(to_a())
                # B forwards `done` before it reads the end of A's body (due at once) and pools the
                # connection: a next stream that came within that instant would open another one.
                await asyncio.sleep(0.3)

    before = to_a()  # connections other sources (or earlier tests) keep in their pools; they may expire
    ports: list[set[int]] = []
    run(main())
    assert all(ports), ports  # each stream left a pooled connection to A behind (an empty sample proves nothing)
    assert len(set.union(*ports) - before) <= 1, ports  # without reuse: a new connection per stream
    assert set.intersection(*ports), ports  # one connection outlived every stream


def test_conversation_reaches_the_upstream_whole(relay):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why SSE?"}]

    async def main():
        async with Client(relay.url) as client:
            return await client.stream("ndjson", model="relay", messages=messages, max_tokens=30, seed=2,
                                       sim=FAST_SIM)

    r = run(main())
    # A reads the same conversation B got, so the same prompt rule gives the same text.
    assert r.text == expected_text("system: Be brief.\n\nuser: Why SSE?", 2, 30)


@pytest.mark.parametrize("how", ["disconnect", "delete"])
def test_cancel_on_b_cancels_on_a(relay, upstream, how):
    before = cancelled(upstream)

    async def main():
        async with Client(relay.url) as client:
            sim = {"ttft_ms": 10, "itl_ms": 30}
            if how == "delete":
                info = await client.create("cancel me", model="relay", max_tokens=2000, sim=sim)
                tokens = 0
                async with aclosing(client.events("sse", stream_id=info["id"])) as events:
                    async for event, _ in events:
                        tokens += event.type == "token"
                        if tokens == 3:
                            break
                assert await client.cancel(info["id"]) == 204
            else:
                tokens = 0
                events = client.events("ndjson", "cancel me", model="relay", max_tokens=2000, sim=sim)
                async with aclosing(events):
                    async for event, _ in events:
                        tokens += event.type == "token"
                        if tokens == 3:
                            break  # closing the generator closes the response: B sees its client go

    run(main())
    # B closed its upstream request, so A saw its client go and stopped generating.
    assert wait_for(lambda: cancelled(upstream) == before + 1)
    assert wait_for(lambda: upstream.metrics()["gateway_active_streams"] == 0)


def test_cancel_on_b_closes_the_ollama_request(relay, ollama):
    before = ollama.disconnects

    async def main():
        async with Client(relay.url) as client:
            tokens = 0
            async with aclosing(client.events("sse", "slow words here", model="ollama", max_tokens=500)) as events:
                async for event, _ in events:
                    tokens += event.type == "token"
                    if tokens == 3:
                        break

    run(main())
    assert wait_for(lambda: ollama.disconnects == before + 1)


def test_upstream_errors_stay_in_band(relay):
    text, code = run(read(relay, "ws", "relay", "fail", 50, seed=3, sim={**FAST_SIM, "fail_after": 8}))
    assert code == "model_error" and text == expected_text("fail", 3, 50)[: len(text)] and len(text) > 0
    text, code = run(read(relay, "sse", "ollama", "please fail now", 20))
    assert code == "upstream_error" and text == "".join(ollama_fragments("please fail now", 3))
    with pytest.raises(openai.APIError) as info:
        run(read(relay, "chat-stream", "relay", "fail", 50, sim={**FAST_SIM, "fail_after": 8}))
    assert info.value.body["code"] == "model_error"


def test_upstream_refusals_map_to_statuses(relay):
    def post(model: str, **fields) -> httpx.Response:
        return httpx.post(relay.url + "/v1/sse", json={"model": model, "prompt": "x", **fields}, timeout=30)

    r = post("relay", sim={"pre_error": 429})
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["code"] == "upstream_429"
    assert post("relay", sim={"pre_error": 503}).status_code == 503
    r = post("ollama-missing")
    assert r.status_code == 502 and "not found" in r.json()["detail"]
    r = post("ollama-json")
    assert r.status_code == 502 and r.json()["code"] == "upstream_not_streaming"
    r = post("nowhere")
    assert r.status_code == 502 and r.json()["code"] == "upstream_unreachable"
    with pytest.raises(openai.RateLimitError):
        run(read(relay, "chat-stream", "relay", "x", 5, sim={"pre_error": 429}))


def test_upstream_stall_ends_with_upstream_timeout(relay, upstream):
    before = cancelled(upstream)
    # B's idle timeout is 2 s, A's 30 s: B gives up on the silent upstream and closes it.
    text, code = run(read(relay, "sse", "relay", "stall", 30, seed=4,
                                  sim={**FAST_SIM, "stall_after": 5, "stall_ms": 20_000}))
    assert code == "upstream_timeout" and text == expected_text("stall", 4, 30)[:len(text)] and len(text) > 0
    assert wait_for(lambda: cancelled(upstream) == before + 1)


def test_killed_upstream_is_an_in_band_error(relay):
    a = Gateway({**FAST}, port=relay.doomed_port)
    try:
        async def main():
            async with Client(relay.url) as client:
                events = []
                async for event, _ in client.events("sse", "doomed", model="doomed", max_tokens=2000,
                                                    sim={"ttft_ms": 10, "itl_ms": 20}):
                    events.append(event)
                    if len(events) == 6:
                        a.proc.kill()  # SIGKILL: no goodbye, the connection just ends
                return events

        events = run(main())
    finally:
        a.stop()
    error = events[-1]
    assert error.type == "error" and error.code == "upstream_error" and error.retryable
    tokens = [e.text for e in events if e.type == "token"]
    assert 5 <= len(tokens) < 2000
    assert "".join(tokens) == expected_text("doomed", 0, 2000)[: len("".join(tokens))]
    # With A gone, B refuses new requests up front.
    r = httpx.post(relay.url + "/v1/ndjson", json={"model": "doomed", "prompt": "x"}, timeout=30)
    assert r.status_code == 502 and r.json()["code"] == "upstream_unreachable"
