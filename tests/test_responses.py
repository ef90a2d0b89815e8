"""`/v1/responses` against a real gateway, through the official `openai` SDK (and raw HTTP where the
SDK hides what matters: exact bytes, every resume point)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from gateway.client import Client
from gateway.codecs.responses import OFFSET, Decoder
from gateway.sources.simulated import expected_text

from .conftest import FAST
from .support import gateway, run

FAST_SIM = {"ttft_ms": 30, "itl_ms": 5, "jitter": 0.2}
PROMPT = "responses sdk"
LIFECYCLE = ["response.created", "response.in_progress", "response.output_item.added",
             "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
           "response.completed"]


@pytest.fixture(scope="module")
def gw():
    # Ended streams stay 30 s (not FAST's 1.5 s), so a test can read one many times.
    with gateway({**FAST, "GATEWAY_TTL_S": "30"}) as g:
        yield g


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def create(client: openai.OpenAI, max_tokens: int, seed: int, sim: dict | None = None, **kw):
    return client.responses.create(model="sim", input=PROMPT, max_output_tokens=max_tokens,
                                   extra_body={"seed": seed, "sim": {**FAST_SIM, **(sim or {})}}, **kw)


def deltas(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def raw_events(gw, response_id: str, starting_after: int | None = None) -> tuple[int, list[dict]]:
    """(status, events as JSON objects) of `GET /v1/responses/{id}?stream=true`, read with the codec's decoder."""
    params = {"stream": "true"}
    if starting_after is not None:
        params["starting_after"] = str(starting_after)
    decoder, out = Decoder(), []
    with httpx.stream("GET", f"{gw.url}/v1/responses/{response_id}", params=params, timeout=30) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.json()]
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_bytes():
            out += [e.data for e in decoder.feed(chunk)]
    return 200, out


def test_streamed_events_in_order_with_sequence_numbers(gw):
    with sdk(gw) as client:
        events = list(create(client, 40, 7, stream=True))
    n = 40
    assert [e.type for e in events] == LIFECYCLE + ["response.output_text.delta"] * n + CLOSING
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert deltas(events) == expected_text(PROMPT, 7, n)
    item_id = events[2].item.id
    assert {e.item_id for e in events if hasattr(e, "item_id")} == {item_id}
    final = events[-1].response
    assert final.status == "completed" and final.output_text == expected_text(PROMPT, 7, n)
    assert final.usage.output_tokens == n and final.id == events[0].response.id
    assert events[-4].text == final.output_text  # response.output_text.done


def test_sse_event_name_is_the_type_and_no_ids(gw):
    body = {"model": "sim", "input": PROMPT, "max_output_tokens": 5, "stream": True, "sim": FAST_SIM}
    raw = httpx.post(gw.url + "/v1/responses", json=body, timeout=30).content.decode()
    blocks = [b for b in raw.split("\n\n") if b.strip()]
    assert len(blocks) == 4 + 5 + 4
    for block in blocks:
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        assert f'"type":"{event[7:]}"' in data
    assert "id:" not in raw and "[DONE]" not in raw


def test_not_streamed_returns_the_whole_response(gw):
    with sdk(gw) as client:
        r = create(client, 30, 3)
    assert r.object == "response" and r.status == "completed" and r.model == "sim"
    assert r.output_text == expected_text(PROMPT, 3, 30) and r.usage.output_tokens == 30


def test_instructions_and_input_items_make_the_prompt(gw):
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Why"}, {"type": "input_text", "text": " SSE?"}]}]
    with sdk(gw) as client:
        r = client.responses.create(model="sim", instructions="Be brief.", input=items, max_output_tokens=20,
                                    extra_body={"sim": FAST_SIM})
    assert r.output_text == expected_text("system: Be brief.\n\nuser: Why SSE?", 0, 20)
    assert r.instructions == "Be brief."


def test_background_cut_then_retrieve_resumes_exactly(gw):
    """A server-side cut (drop_after) mid-stream; `retrieve(stream=True, starting_after=N)` gives the rest."""
    n = 60
    with sdk(gw) as client:
        seen = []
        with pytest.raises(openai.APIConnectionError):
            for event in create(client, n, 11, {"drop_after": 20}, stream=True, background=True):
                seen.append(event)
        assert seen[-1].type == "response.output_text.delta"
        last = seen[-1].sequence_number
        assert last == 20 + OFFSET  # meta's four events, then 20 tokens
        rest = list(client.responses.retrieve(seen[0].response.id, stream=True, starting_after=last))
    assert [e.sequence_number for e in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert rest[-1].type == "response.completed"
    assert deltas(seen) + deltas(rest) == expected_text(PROMPT, 11, n)


def test_stream_helper_filters_on_the_client_and_ends_with_the_text(gw):
    n = 50
    with sdk(gw) as client:
        first = []
        for event in create(client, n, 12, stream=True, background=True):
            first.append(event)
            if event.sequence_number == 15:
                break
        response_id = first[0].response.id
        with client.responses.stream(response_id=response_id, starting_after=15) as stream:
            later = list(stream)
            final = stream.get_final_response()
    assert later[0].sequence_number == 16 and later[-1].type == "response.completed"
    assert deltas(first) + deltas(later) == expected_text(PROMPT, 12, n)
    assert final.output_text == expected_text(PROMPT, 12, n)


@pytest.mark.parametrize("fail", [False, True])
def test_every_resume_point_gives_exactly_the_rest(gw, fail):
    """starting_after=N for every N gives the events after N of the full stream, byte for byte equal."""
    sim = {"fail_after": 3} if fail else {}
    with sdk(gw) as client:
        response_id = create(client, 5, 5, sim, stream=False, background=True).id
        deadline = time.monotonic() + 20
        while client.responses.retrieve(response_id).status in ("queued", "in_progress"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    status, full = raw_events(gw, response_id)
    assert status == 200 and [e["sequence_number"] for e in full] == list(range(len(full)))
    assert full[-1]["type"] == ("response.failed" if fail else "response.completed")
    for n in range(-1, len(full) - 1):
        status, rest = raw_events(gw, response_id, n)
        assert status == 200 and rest == full[n + 1:], n
    status, body = raw_events(gw, response_id, len(full) - 1)
    assert status == 409 and body[0]["error"]["code"] == "past_end"


def test_retrieve_gives_the_response_so_far_then_the_whole(gw):
    n = 80
    with sdk(gw) as client:
        r = create(client, n, 13, {"itl_ms": 20, "jitter": 0}, background=True)
        assert r.status in ("queued", "in_progress") and r.background is True
        time.sleep(0.6)
        partial = client.responses.retrieve(r.id)
        assert partial.status == "in_progress" and partial.usage is None
        assert 0 < len(partial.output_text) < len(expected_text(PROMPT, 13, n))
        assert expected_text(PROMPT, 13, n).startswith(partial.output_text)
        deadline = time.monotonic() + 20
        while (whole := client.responses.retrieve(r.id)).status == "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert whole.status == "completed" and whole.output_text == expected_text(PROMPT, 13, n)


def test_background_outlives_its_client_past_the_grace(gw):
    """FAST's detach grace is 1 s: a background response keeps generating with nobody attached."""
    n = 100
    with sdk(gw) as client:
        stream = create(client, n, 14, {"itl_ms": 25, "jitter": 0}, stream=True, background=True)
        first = next(iter(stream))
        stream.close()
        time.sleep(1.5)
        rest = list(client.responses.retrieve(first.response.id, stream=True, starting_after=0))
    assert rest[-1].type == "response.completed"
    assert deltas(rest) == expected_text(PROMPT, 14, n)


def test_without_background_a_cut_resumes_within_the_grace(gw):
    """Not a background response: a lost connection is still not a cancel (the gateway's disconnect policy)."""
    n = 40
    with sdk(gw) as client:
        seen = []
        with pytest.raises(openai.APIConnectionError):
            for event in create(client, n, 15, {"drop_after": 9}, stream=True):
                seen.append(event)
        rest = list(client.responses.retrieve(seen[0].response.id, stream=True,
                                              starting_after=seen[-1].sequence_number))
    assert deltas(seen) + deltas(rest) == expected_text(PROMPT, 15, n) and rest[-1].type == "response.completed"


def test_without_background_nobody_back_within_the_grace_cancels(gw):
    def cancelled() -> float:
        return gw.metrics().get('gateway_streams_cancelled_total{reason="detached"}', 0.0)

    before = cancelled()
    with sdk(gw) as client:
        stream = create(client, 2000, 15, {"itl_ms": 30}, stream=True)
        response_id = next(iter(stream)).response.id
        stream.close()
        deadline = time.monotonic() + 10  # FAST's grace is 1 s
        while cancelled() <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cancelled() == before + 1
        assert client.responses.retrieve(response_id).status == "cancelled"


def test_cancel_ends_the_stream_as_cancelled_with_the_partial_text(gw):
    n = 400
    with sdk(gw) as client:
        stream = create(client, n, 16, {"itl_ms": 20}, stream=True, background=True)
        events = []
        for event in stream:
            events.append(event)
            if event.sequence_number == 10:
                assert client.responses.cancel(events[0].response.id).status == "cancelled"
        final = events[-1]
        assert final.type == "response.failed" and final.response.status == "cancelled"
        assert final.response.error.code == "cancelled"
        assert final.response.output[0].content[0].text == deltas(events)
        assert expected_text(PROMPT, 16, n).startswith(deltas(events)) and len(deltas(events)) > 0
        again = client.responses.cancel(events[0].response.id)  # idempotent
        assert again.status == "cancelled" and again.output_text == deltas(events)
        with pytest.raises(openai.NotFoundError):
            client.responses.cancel("resp_nosuchresponse")


@pytest.mark.parametrize("sim,code", [({"fail_after": 12}, "model_error"),
                                      ({"stall_after": 4, "stall_ms": 60_000}, "upstream_timeout")])
def test_failures_stay_failures_with_the_partial_text(gw, sim, code):
    with sdk(gw) as client:
        events = list(create(client, 50, 17, sim, stream=True))
        with client.responses.stream(model="sim", input=PROMPT, max_output_tokens=50,
                                     extra_body={"seed": 17, "sim": {**FAST_SIM, **sim}}) as helper:
            with pytest.raises(RuntimeError, match="response.completed"):
                helper.get_final_response()
    types = [e.type for e in events]
    assert "response.completed" not in types and "response.output_text.done" not in types
    final = events[-1]
    assert final.type == "response.failed" and final.response.status == "failed"
    assert final.response.error.code == code
    text = deltas(events)
    assert final.response.output[0].status == "incomplete" and final.response.output[0].content[0].text == text
    assert len(text) > 0 and expected_text(PROMPT, 17, 50).startswith(text)


def test_pre_stream_errors_in_openai_shape(gw):
    with sdk(gw) as client:
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.create(model="no-such-model", input=PROMPT)
        assert info.value.body["code"] == "model_not_found"
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model="sim", input=PROMPT, stream=True, extra_body={"sim": {"pre_error": 429}})
        for bad in ({"input": []}, {"max_output_tokens": 0}, {"max_output_tokens": 6000},
                    {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}):
            with pytest.raises(openai.BadRequestError) as info:
                client.responses.create(**{"model": "sim", "input": PROMPT, **bad})
            assert info.value.body["type"] == "invalid_request_error"
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_nosuchresponse")
    for raw in (b"not json", b"[]", b'{"input": 3}'):
        assert httpx.post(gw.url + "/v1/responses", content=raw).status_code == 400
    assert httpx.get(gw.url + "/healthz").status_code == 200


def test_a_responses_stream_resumes_on_the_gateways_transports(gw):
    """sequence_number N is seq N - 3: the rest of a stream begun as Responses comes over SSE, NDJSON, WS."""
    n = 40
    expected = expected_text(PROMPT, 18, n)
    with sdk(gw) as client:
        first = []
        for event in create(client, n, 18, {"itl_ms": 10}, stream=True, background=True):
            first.append(event)
            if event.sequence_number == 12:
                break
    stream_id = first[0].response.id.removeprefix("resp_")

    async def rest(transport: str):
        async with Client(gw.url) as c:
            return await c.stream(transport, stream_id=stream_id, after=12 - OFFSET)

    for transport in ("sse", "ndjson", "ws"):
        result = run(rest(transport))
        assert result.tokens[0].seq == 12 - OFFSET + 1
        assert deltas(first) + result.text == expected and result.done is not None


def test_a_gateway_stream_resumes_as_responses(gw):
    """A stream created with POST /v1/streams and read over NDJSON continues as Responses (seq + 3)."""
    n = 40

    async def begin():
        async with Client(gw.url) as c:
            created = await c.create(PROMPT, max_tokens=n, seed=19, sim={**FAST_SIM, "itl_ms": 10})
            got = []
            async for event, _ in c.events("ndjson", stream_id=created["id"]):
                if event.type == "token":
                    got.append(event)
                    if len(got) == 9:
                        return created["id"], got

    stream_id, got = run(begin())
    with sdk(gw) as client:
        rest = list(client.responses.retrieve("resp_" + stream_id, stream=True,
                                              starting_after=got[-1].seq + OFFSET))
    assert rest[0].sequence_number == got[-1].seq + OFFSET + 1
    assert "".join(t.text for t in got) + deltas(rest) == expected_text(PROMPT, 19, n)
    assert rest[-1].type == "response.completed"


def test_the_python_client_streams_and_resumes_responses(gw):
    """gateway.client's one resume loop over the Responses API: a cut (drop_after) resumed with
    starting_after, the exact text, every seq once."""

    async def main():
        async with Client(gw.url) as c:
            return await c.stream("responses", PROMPT, max_tokens=50, seed=20, sim={**FAST_SIM, "drop_after": 17})

    result = run(main())
    assert result.text == expected_text(PROMPT, 20, 50) and result.done is not None
    assert result.reconnects == 1 and result.gaps == result.duplicates == 0
    assert [t.seq for t in result.tokens] == list(range(1, 51))
