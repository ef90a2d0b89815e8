"""The OpenAI-compatible endpoints against a real gateway, through the official `openai` SDK."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from gateway.sources.simulated import expected_text

from .support import run

FAST_SIM = {"ttft_ms": 30, "itl_ms": 5, "jitter": 0.2}
PROMPT = "openai sdk"
MESSAGES = [{"role": "user", "content": PROMPT}]


def sdk(gw) -> openai.OpenAI:
    # max_retries=0: a refusal must show as the first response, not after the SDK's retries.
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def async_sdk(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def content(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_sync_not_streamed(gw):
    with sdk(gw) as client:
        r = client.chat.completions.create(model="sim", messages=MESSAGES, max_tokens=60, seed=7,
                                           extra_body={"sim": FAST_SIM})
    assert r.object == "chat.completion" and r.model == "sim"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected_text(PROMPT, 7, 60)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 60
    assert r.usage.total_tokens == r.usage.prompt_tokens + 60


def test_sync_streamed_with_usage(gw):
    with sdk(gw) as client:
        chunks = list(client.chat.completions.create(
            model="sim", messages=MESSAGES, max_completion_tokens=50, seed=8, stream=True,
            stream_options={"include_usage": True}, extra_body={"sim": FAST_SIM}))
    assert content(chunks) == expected_text(PROMPT, 8, 50)
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    # The finish chunk, then the usage chunk with no choices (stream_options.include_usage).
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"] and chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 50
    assert all(c.usage is None for c in chunks[:-1])


def test_without_include_usage_no_usage_chunk(gw):
    with sdk(gw) as client:
        chunks = list(client.chat.completions.create(model="sim", messages=MESSAGES, max_tokens=20, seed=1,
                                                     stream=True, extra_body={"sim": FAST_SIM}))
    assert content(chunks) == expected_text(PROMPT, 1, 20)
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is None


def test_async_streamed_and_not(gw):
    async def main():
        async with async_sdk(gw) as client:
            full = await client.chat.completions.create(model="sim", messages=MESSAGES, max_tokens=40, seed=3,
                                                        extra_body={"sim": FAST_SIM})
            stream = await client.chat.completions.create(model="sim", messages=MESSAGES, max_tokens=40, seed=3,
                                                          stream=True, extra_body={"sim": FAST_SIM})
            chunks = [c async for c in stream]
        return full, chunks

    full, chunks = run(main())
    assert full.choices[0].message.content == expected_text(PROMPT, 3, 40)
    assert content(chunks) == expected_text(PROMPT, 3, 40)


def test_conversation_prompt_rule(gw):
    """Several messages are `role: text` blocks joined by a blank line (README, models.prompt_of)."""
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Why"}, {"type": "text", "text": " SSE?"}]}]
    with sdk(gw) as client:
        r = client.chat.completions.create(model="sim", messages=messages, max_tokens=30, seed=2,
                                           extra_body={"sim": FAST_SIM})
    assert r.choices[0].message.content == expected_text("system: Be brief.\n\nuser: Why SSE?", 2, 30)


def test_chunks_arrive_incrementally(gw):
    arrivals = []
    with sdk(gw) as client:
        start = time.perf_counter()
        for chunk in client.chat.completions.create(
                model="sim", messages=MESSAGES, max_tokens=40, seed=4, stream=True,
                extra_body={"sim": {"ttft_ms": 50, "itl_ms": 20, "jitter": 0}}):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter())
    assert len(arrivals) == 40
    spread = arrivals[-1] - arrivals[0]  # ~39 * 20 ms when each token is sent as it is made
    assert spread > 0.4
    assert arrivals[0] - start < spread / 2
    assert len({round(t, 3) for t in arrivals}) > 25


def test_heartbeats_do_not_disturb_the_sdk(gw):
    # A 1 s pause (heartbeats every 0.3 s, SSE comments) stays under the 2 s idle timeout.
    sim = {**FAST_SIM, "stall_after": 5, "stall_ms": 1000}
    with sdk(gw) as client:
        chunks = list(client.chat.completions.create(model="sim", messages=MESSAGES, max_tokens=15, seed=6,
                                                     stream=True, extra_body={"sim": sim}))
    assert content(chunks) == expected_text(PROMPT, 6, 15)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_mid_stream_failure_raises_in_the_sdk(gw, mode):
    got, finishes = [], []
    kwargs = dict(model="sim", messages=MESSAGES, max_tokens=50, seed=9, stream=True,
                  extra_body={"sim": {**FAST_SIM, "fail_after": 12}})

    def take(chunk):
        if chunk.choices:
            got.append(chunk.choices[0].delta.content or "")
            finishes.append(chunk.choices[0].finish_reason)

    async def run_async():
        async with async_sdk(gw) as client:
            async for chunk in await client.chat.completions.create(**kwargs):
                take(chunk)

    with pytest.raises(openai.APIError) as info:
        if mode == "sync":
            with sdk(gw) as client:
                for chunk in client.chat.completions.create(**kwargs):
                    take(chunk)
        else:
            run(run_async())
    assert info.value.body["code"] == "model_error"
    assert "".join(got) == expected_text(PROMPT, 9, 50)[: len("".join(got))]
    assert len([g for g in got if g]) == 12
    assert set(finishes) == {None}  # never a fake finish_reason


def test_failure_not_streamed_is_a_502(gw):
    with sdk(gw) as client, pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="sim", messages=MESSAGES, max_tokens=30,
                                       extra_body={"sim": {**FAST_SIM, "fail_after": 5}})
    assert info.value.status_code == 502 and info.value.body["code"] == "model_error"


def test_stall_ends_with_upstream_timeout(gw):
    # idle_timeout_s is 2 s in the test settings; the stall is far longer.
    sim = {**FAST_SIM, "stall_after": 3, "stall_ms": 60_000}
    with sdk(gw) as client, pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(model="sim", messages=MESSAGES, max_tokens=30, stream=True,
                                                extra_body={"sim": sim}):
            pass
    assert info.value.body["code"] == "upstream_timeout"


def test_pre_stream_errors_in_openai_shape(gw):
    with sdk(gw) as client:
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="sim", messages=MESSAGES, stream=True,
                                           extra_body={"sim": {"pre_error": 429}})
        assert info.value.response.headers["retry-after"] == "1"
        assert info.value.body["type"] == "rate_limit_error"
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="sim", messages=MESSAGES, extra_body={"sim": {"pre_error": 503}})
        assert info.value.status_code == 503
        for bad in ({"messages": []}, {"n": 2}, {"seed": -1}, {"max_tokens": 0}, {"max_tokens": 6000}):
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(**{"model": "sim", "messages": MESSAGES, **bad})
            assert info.value.body["type"] == "invalid_request_error"
    for raw in (b"not json", b"[]", b'{"messages": "hi"}', b'{"messages": [{"content": "no role"}]}'):
        r = httpx.post(gw.url + "/v1/chat/completions", content=raw)
        assert r.status_code == 400 and r.json()["error"]["message"]
    assert httpx.get(gw.url + "/healthz").status_code == 200


def test_client_leaving_cancels_the_generation(gw):
    def cancelled() -> float:
        return gw.metrics().get('gateway_streams_cancelled_total{reason="client_gone"}', 0.0)

    before = cancelled()
    with sdk(gw) as client:
        stream = client.chat.completions.create(model="sim", messages=MESSAGES, max_tokens=2000, stream=True,
                                                extra_body={"sim": {"ttft_ms": 10, "itl_ms": 30}})
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
    deadline = time.monotonic() + 10
    while cancelled() <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1
    assert gw.metrics()['gateway_connections{transport="chat"}'] == 0


def test_models(gw):
    with sdk(gw) as client:
        assert "sim" in [m.id for m in client.models.list()]
        assert client.models.retrieve("sim").id == "sim"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")
