"""Many EventSources to one origin in real Chromium: over HTTP/1.1 the 7th waits while 6 stream; over
HTTP/2 (nginx terminating TLS) all of them stream on one connection."""

from __future__ import annotations

import pytest

from loadtests.lab import Lab

from .support import require

pytestmark = pytest.mark.timeout(180)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--ignore-certificate-errors"]
SOURCES = 8

# Creates N long streams, opens an EventSource on each, and after `wait_ms` reports which have had a token.
OPEN_MANY = """async ([n, waitMs]) => {
  const sim = {ttft_ms: 50, itl_ms: 100, jitter: 0};
  const ids = [];
  for (let i = 0; i < n; i++) {
    const r = await fetch('/v1/streams', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                           body: JSON.stringify({prompt: 'tab ' + i, max_tokens: 150, sim})});
    ids.push((await r.json()).id);
  }
  const first = new Array(n).fill(null);
  const t0 = performance.now();
  const sources = ids.map((id, i) => {
    const es = new EventSource('/v1/streams/' + id + '/sse');
    es.addEventListener('token', () => { if (first[i] === null) first[i] = performance.now() - t0; });
    return es;
  });
  await new Promise((resolve) => setTimeout(resolve, waitMs));
  sources.forEach((es) => es.close());
  return first;
}"""


def first_tokens(url: str) -> list[float | None]:
    """For each of SOURCES EventSources opened at once from a page of `url`: ms to its first token, or None."""
    chromium = require("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(url + "/healthz")
            return page.evaluate(OPEN_MANY, [SOURCES, 3000])
        finally:
            browser.close()


@pytest.fixture(scope="module")
def lab():
    require("nginx")
    require("openssl")
    with Lab(port=0, proxies=("nginx-h2", "nginx-tls")) as lab:
        yield lab


@pytest.mark.parametrize("path", ["gateway", "nginx-tls"])
def test_over_http11_the_seventh_eventsource_waits(lab, path):
    first = first_tokens(lab.urls[path])
    streaming = [t for t in first if t is not None]
    assert len(streaming) == 6, first  # Chromium's 6 connections per origin; the others wait for one to free


def test_over_http2_every_eventsource_streams(lab):
    first = first_tokens(lab.urls["nginx-h2"])
    assert all(t is not None for t in first), first
