"""The Locust EventSource user resumes as real Chromium does: same wait, within 20%.

A stream is cut by the gateway after token K (`sim.drop_after`); the stall a user sees is the time
from token K's arrival to token K+1's, the reconnect wait included. Chromium's EventSource waits the
server's `retry:` (here 700 ms) and sends Last-Event-ID; loadtests/streaming.py's sse_get client
must do the same, or the load test's resume figures describe a client nobody has.
"""

from __future__ import annotations

import statistics

import pytest
import requests

from loadtests.streaming import Run, StreamClient

from .support import CHROMIUM_ARGS, gateway, require

RETRY_MS = 700
BODY = {"prompt": "stall", "max_tokens": 12, "seed": 1, "sim": {"ttft_ms": 20, "itl_ms": 30, "jitter": 0,
                                                                 "drop_after": 5}}

# In the page: POST /v1/streams, EventSource by id, token arrival times; resolves at `done`.
BROWSER_STALL = """async (body) => {
  const r = await fetch('/v1/streams', {method: 'POST', headers: {'content-type': 'application/json'},
                                        body: JSON.stringify(body)});
  const id = (await r.json()).id;
  return await new Promise((resolve, reject) => {
    const es = new EventSource(`/v1/streams/${id}/sse`);
    const at = {};
    es.addEventListener('token', (e) => { at[JSON.parse(e.data).seq] = performance.now(); });
    es.addEventListener('done', () => { es.close(); resolve(at[body.sim.drop_after + 1] - at[body.sim.drop_after]); });
    setTimeout(() => { es.close(); reject(new Error('no done in 10 s')); }, 10000);
  });
}"""


@pytest.fixture(scope="module")
def gw():
    with gateway({"GATEWAY_SSE_RETRY_MS": str(RETRY_MS), "GATEWAY_DETACH_GRACE_S": "30"}) as g:
        yield g


def load_user_stall(url: str) -> float:
    """The same stream through the Locust users' client (sse_get), stall in ms."""
    client = StreamClient(url, requests.Session())
    run = Run()
    at = {}
    for event, when in client.events("sse_get", BODY, run):
        if event.type == "token":
            at[event.seq] = when
    client.close()
    assert run.reconnects == 1 and run.gaps == run.duplicates == 0
    k = BODY["sim"]["drop_after"]
    return (at[k + 1] - at[k]) * 1000  # token k is seq k (meta is seq 0): the last before the cut


def test_the_eventsource_user_stalls_as_long_as_chromium(gw):
    chromium = require("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(gw.url + "/healthz")
            real = [page.evaluate(BROWSER_STALL, BODY) for _ in range(3)]
        finally:
            browser.close()
    user = [load_user_stall(gw.url) for _ in range(3)]
    real_ms, user_ms = statistics.median(real), statistics.median(user)
    print(f"stall on a cut, median of 3: Chromium {real_ms:.0f} ms, Locust sse_get user {user_ms:.0f} ms")
    assert real_ms >= RETRY_MS * 0.9  # Chromium waited the server's retry
    assert abs(user_ms - real_ms) <= 0.2 * real_ms, (real, user)
