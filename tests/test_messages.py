"""`POST /v1/messages` against a real gateway, through the official `anthropic` SDK."""

from __future__ import annotations

import time

import anthropic
import httpx
import pytest

from gateway.sources.simulated import expected_text

from .support import run

FAST_SIM = {"ttft_ms": 30, "itl_ms": 5, "jitter": 0.2}
PROMPT = "anthropic sdk"
MESSAGES = [{"role": "user", "content": PROMPT}]


def sdk(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)


def stream(client: anthropic.Anthropic, max_tokens: int, seed: int, sim: dict | None = None, **kw):
    return client.messages.stream(model="sim", max_tokens=max_tokens, messages=MESSAGES,
                                  extra_body={"seed": seed, "sim": {**FAST_SIM, **(sim or {})}}, **kw)


def test_messages_stream_gives_the_exact_text(gw):
    with sdk(gw) as client, stream(client, 50, 7) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(pieces) == expected_text(PROMPT, 7, 50) and len(pieces) == 50
    assert final.content[0].text == expected_text(PROMPT, 7, 50)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 50 and final.role == "assistant"


def test_raw_event_sequence(gw):
    with sdk(gw) as client:
        events = list(client.messages.create(model="sim", max_tokens=5, messages=MESSAGES, stream=True,
                                             extra_body={"sim": FAST_SIM}))
    assert [e.type for e in events] == (["message_start", "content_block_start"] + ["content_block_delta"] * 5
                                        + ["content_block_stop", "message_delta", "message_stop"])
    assert events[0].message.content == [] and events[0].message.usage.output_tokens == 0
    assert {e.delta.type for e in events if e.type == "content_block_delta"} == {"text_delta"}
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == 5


def test_system_prompt_and_blocks_make_the_prompt(gw):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Why"}, {"type": "text", "text": " SSE?"}]}]
    with sdk(gw) as client:
        r = client.messages.create(model="sim", max_tokens=20, system="Be brief.", messages=messages,
                                   extra_body={"sim": FAST_SIM})
    assert r.content[0].text == expected_text("system: Be brief.\n\nuser: Why SSE?", 0, 20)


def test_not_streamed(gw):
    with sdk(gw) as client:
        r = client.messages.create(model="sim", max_tokens=30, messages=MESSAGES,
                                   extra_body={"seed": 3, "sim": FAST_SIM})
    assert r.type == "message" and r.content[0].text == expected_text(PROMPT, 3, 30)
    assert r.stop_reason == "end_turn" and r.usage.output_tokens == 30


def test_pings_during_a_pause(gw):
    """FAST heartbeats every 0.3 s: a 1 s pause shows as `ping` events, which the SDK skips."""
    sim = {**FAST_SIM, "stall_after": 3, "stall_ms": 1000}
    body = {"model": "sim", "max_tokens": 8, "messages": MESSAGES, "stream": True, "seed": 4, "sim": sim}
    raw = httpx.post(gw.url + "/v1/messages", json=body, timeout=30).text
    assert raw.count('event: ping\ndata: {"type":"ping"}\n\n') >= 2 and ": hb" not in raw
    with sdk(gw) as client, stream(client, 8, 4, sim) as s:
        assert "".join(s.text_stream) == expected_text(PROMPT, 4, 8)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_mid_stream_failure_is_an_error_event_the_sdk_raises(gw, mode):
    got = []

    async def run_async():
        async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0) as client:
            async with client.messages.stream(model="sim", max_tokens=50, messages=MESSAGES,
                                              extra_body={"seed": 9, "sim": {**FAST_SIM, "fail_after": 12}}) as s:
                async for text in s.text_stream:
                    got.append(text)

    with pytest.raises(anthropic.APIStatusError) as info:
        if mode == "sync":
            with sdk(gw) as client, stream(client, 50, 9, {"fail_after": 12}) as s:
                for text in s.text_stream:
                    got.append(text)
        else:
            run(run_async())
    assert info.value.status_code == 200  # after the 200: in band
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "overloaded_error"  # retryable
    assert info.value.body["error"]["code"] == "model_error"
    assert len(got) == 12 and expected_text(PROMPT, 9, 50).startswith("".join(got))


def test_failure_never_looks_finished(gw):
    body = {"model": "sim", "max_tokens": 50, "messages": MESSAGES, "stream": True,
            "sim": {**FAST_SIM, "stall_after": 3, "stall_ms": 60_000}}
    raw = httpx.post(gw.url + "/v1/messages", json=body, timeout=30).text
    assert raw.rstrip().endswith("}") and "event: error" in raw
    assert "message_stop" not in raw and "message_delta" not in raw and '"upstream_timeout"' in raw


def test_failure_not_streamed_is_an_error_response(gw):
    with sdk(gw) as client, pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="sim", max_tokens=30, messages=MESSAGES,
                               extra_body={"sim": {**FAST_SIM, "fail_after": 5}})
    assert info.value.status_code == 502 and info.value.body["error"]["type"] == "overloaded_error"
    assert info.value.body["error"]["code"] == "model_error"


def test_pre_stream_errors_in_anthropic_shape(gw):
    with sdk(gw) as client:
        with pytest.raises(anthropic.NotFoundError) as info:
            client.messages.create(model="no-such-model", max_tokens=5, messages=MESSAGES)
        assert info.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(model="sim", max_tokens=5, messages=MESSAGES, stream=True,
                                   extra_body={"sim": {"pre_error": 429}})
        assert info.value.response.headers["retry-after"] == "1"
        for bad in ({"messages": []}, {"max_tokens": 0}, {"max_tokens": 6000}):
            with pytest.raises(anthropic.BadRequestError) as info:
                client.messages.create(**{"model": "sim", "max_tokens": 5, "messages": MESSAGES, **bad})
            assert info.value.body["error"]["type"] == "invalid_request_error"
    r = httpx.post(gw.url + "/v1/messages", json={"messages": MESSAGES})  # no max_tokens
    assert r.status_code == 400 and r.json()["type"] == "error"


def test_client_leaving_cancels_the_generation(gw):
    def cancelled() -> float:
        return gw.metrics().get('gateway_streams_cancelled_total{reason="client_gone"}', 0.0)

    before = cancelled()
    with sdk(gw) as client, stream(client, 2000, 5, {"itl_ms": 30}) as s:
        for i, _ in enumerate(s.text_stream):
            if i == 3:
                break
    deadline = time.monotonic() + 10
    while cancelled() <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1
    assert gw.metrics()['gateway_connections{transport="messages"}'] == 0


def test_the_sdks_api_key_header_authenticates():
    """Anthropic's SDK sends `x-api-key`, not `Authorization: Bearer`: with API keys on, it works."""
    from .conftest import FAST
    from .support import gateway

    with gateway({**FAST, "GATEWAY_API_KEYS": "team=sk-ant-test-0123456789"}) as g:
        with anthropic.Anthropic(base_url=g.url, api_key="sk-ant-test-0123456789", max_retries=0) as client:
            r = client.messages.create(model="sim", max_tokens=5, messages=MESSAGES, extra_body={"sim": FAST_SIM})
            assert r.content[0].text == expected_text(PROMPT, 0, 5)
        with anthropic.Anthropic(base_url=g.url, api_key="wrong-key", max_retries=0) as client:
            with pytest.raises(anthropic.AuthenticationError):
                client.messages.create(model="sim", max_tokens=5, messages=MESSAGES)
