"""Golden values: the simulated model's output is pinned in tests/golden/simulated.json, so a change of the
corpus, the token split or the seeding fails here (and on the wire), not only where the code is compared
with itself."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from gateway.sources.simulated import corpus_tokens, expected_text

from . import wire
from .support import run

GOLDEN = json.loads((Path(__file__).parent / "golden" / "simulated.json").read_text("utf-8"))
SIM = {"ttft_ms": 5, "itl_ms": 1, "jitter": 0}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_corpus_is_the_recorded_one():
    tokens, starts = corpus_tokens()
    corpus = GOLDEN["corpus"]
    assert (len(tokens), list(starts)) == (corpus["tokens"], corpus["sections"])
    assert sha("\0".join(tokens)) == corpus["sha256"]


@pytest.mark.parametrize("case", GOLDEN["texts"], ids=lambda c: f"{c['prompt']}-{c['seed']}-{c['max_tokens']}")
def test_generator_gives_the_recorded_text(case):
    assert expected_text(case["prompt"], case["seed"], case["max_tokens"]) == case["text"]


@pytest.mark.parametrize("case", GOLDEN["hashes"], ids=lambda c: f"{c['prompt']}-{c['seed']}-{c['max_tokens']}")
def test_generator_gives_the_recorded_hash(case):
    text = expected_text(case["prompt"], case["seed"], case["max_tokens"])
    assert (len(text), sha(text)) == (case["chars"], case["sha256"])


def test_seed_and_prompt_each_pick_the_text():
    by = {(c["prompt"], c["seed"]): c["text"] for c in GOLDEN["texts"] if c["max_tokens"] == 30}
    assert len({by["compare", s] for s in (11, 12, 1)}) == 3  # only the seed differs
    assert by["a", 0] != by["b", 0]  # only the prompt differs


@pytest.mark.parametrize("transport", ["sse", "ndjson", "ws"])
def test_the_gateway_serves_the_recorded_tokens(gw, transport):
    pieces = GOLDEN["pieces"]
    body = {"prompt": pieces["prompt"], "seed": pieces["seed"], "max_tokens": pieces["max_tokens"], "sim": SIM}
    r = run(wire.read(gw.url, transport, body=body))
    assert [t["text"] for t in r.tokens] == pieces["tokens"]  # the same split into tokens, not only the text
    assert r.terminal["sha256"] == sha("".join(pieces["tokens"]))


@pytest.mark.parametrize("transport", ["sse", "ndjson", "ws"])
def test_the_gateway_serves_the_recorded_texts(gw, transport):
    async def go():
        return await asyncio.gather(*(
            wire.read(gw.url, transport, body={"prompt": c["prompt"], "seed": c["seed"],
                                               "max_tokens": c["max_tokens"], "sim": SIM})
            for c in GOLDEN["texts"]))

    for case, r in zip(GOLDEN["texts"], run(go())):
        assert r.text == case["text"] and r.terminal["sha256"] == sha(case["text"]), case
