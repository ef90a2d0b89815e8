"""A Responses stream across replicas sharing Redis: begun on A, resumed on B with `starting_after`,
and read as Responses on B after being begun over NDJSON on A (one seq space, every format, any replica)."""

from __future__ import annotations

import openai
import pytest

from gateway.codecs.responses import OFFSET
from gateway.sources.simulated import expected_text

from .support import RedisServer, run
from .test_replicas import FAST, start

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SIM = {"ttft_ms": 20, "itl_ms": 20, "jitter": 0}
PROMPT = "across replicas"


@pytest.fixture(scope="module")
def pair():
    redis = RedisServer()
    gws = start(redis, 2, GATEWAY_TTL_S="30", GATEWAY_DETACH_GRACE_S="10")
    yield gws
    for gw in gws:
        gw.stop()
    redis.stop()


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
