"""A Responses stream across replicas sharing Redis: begun on A, resumed on B with `starting_after`;
read as Responses on B after being begun over NDJSON on A (one seq space, every format, any replica);
and its generator lost with its replica (`response.failed`)."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from gateway.codecs.responses import OFFSET
from gateway.sources.simulated import expected_text

from .support import run
from .test_replicas import start

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SIM = {"ttft_ms": 20, "itl_ms": 20, "jitter": 0}
PROMPT = "across replicas"


@pytest.fixture(scope="module")
def pair(redis):
    gws = start(redis, 2, GATEWAY_TTL_S="30", GATEWAY_DETACH_GRACE_S="10")
    yield gws
    for gw in gws:
        gw.stop()


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def deltas(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_begun_on_a_resumed_on_b(pair):
    a, b = pair
    n = 60
    with sdk(a) as client:
        seen = []
        with pytest.raises(openai.APIConnectionError):
            for event in client.responses.create(model="sim", input=PROMPT, max_output_tokens=n, stream=True,
                                                 background=True,
                                                 extra_body={"seed": 1, "sim": {**SIM, "drop_after": 15}}):
                seen.append(event)
    with sdk(b) as client:
        rest = list(client.responses.retrieve(seen[0].response.id, stream=True,
                                              starting_after=seen[-1].sequence_number))
        final = client.responses.retrieve(seen[0].response.id)
    assert rest[0].sequence_number == seen[-1].sequence_number + 1
    assert [e.sequence_number for e in rest] == list(range(rest[0].sequence_number, rest[-1].sequence_number + 1))
    assert deltas(seen) + deltas(rest) == expected_text(PROMPT, 1, n) and rest[-1].type == "response.completed"
    assert final.status == "completed" and final.output_text == expected_text(PROMPT, 1, n)


def test_begun_over_ndjson_on_a_read_as_responses_on_b(pair):
    from gateway.client import Client

    a, b = pair
    n = 40

    async def begin():
        async with Client(a.url) as c:
            created = await c.create(PROMPT, max_tokens=n, seed=2, sim=SIM)
            got = []
            async for event, _ in c.events("ndjson", stream_id=created["id"]):
                if event.type == "token":
                    got.append(event)
                    if len(got) == 10:
                        return created["id"], got

    stream_id, got = run(begin())
    with sdk(b) as client:
        rest = list(client.responses.retrieve("resp_" + stream_id, stream=True, starting_after=got[-1].seq + OFFSET))
    assert "".join(t.text for t in got) + deltas(rest) == expected_text(PROMPT, 2, n)
    assert rest[-1].type == "response.completed"


def test_a_lost_generator_is_response_failed_with_the_partial_text(pair, redis):
    """The replica generating a background response dies (kill -9): a reader on B gets `response.failed`
    (`generator_lost`) with the partial text, never `response.completed`."""
    a, b = pair
    victim = start(redis, 1, GATEWAY_TTL_S="30")[0]
    try:
        with sdk(victim) as client:
            created = client.responses.create(model="sim", input="lost", max_output_tokens=2000, background=True,
                                              extra_body={"seed": 6, "sim": SIM})
        box: dict = {}

        def follow() -> None:
            with sdk(b) as client:
                box["events"] = list(client.responses.retrieve(created.id, stream=True, starting_after=-1))

        reader = threading.Thread(target=follow)
        reader.start()
        time.sleep(0.8)
        victim.proc.kill()
        reader.join(60)
    finally:
        victim.stop()
    events = box["events"]
    final = events[-1]
    assert final.type == "response.failed" and final.response.error.code == "generator_lost"
    text = deltas(events)
    assert len(text) > 0 and expected_text("lost", 6, 2000).startswith(text)
    assert final.response.output[0].content[0].text == text
    assert "response.completed" not in {e.type for e in events}
    with sdk(b) as client:
        assert client.responses.retrieve(created.id).status == "failed"
